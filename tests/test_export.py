"""`python -m hf_finetune export OUTPUT_DIR --format onnx`: the exported logits match PyTorch's within 1e-4 (checked
by the command itself), the batch axis is dynamic, truncated models export too, and the card says how to use it."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import copy_run
from helpers import assert_mentions

from hf_finetune.backbones.loading import load_model_and_processor
from hf_finetune.backbones.truncation import truncate_model
from hf_finetune.cli.main import main
from hf_finetune.sharing.export import export_onnx
from hf_finetune.sharing.predict import load_classifier

onnxruntime = pytest.importorskip("onnxruntime")


def test_export_matches_pytorch_and_updates_the_card(finished_run_dir, tmp_path, capsys):
    run = copy_run(finished_run_dir, tmp_path / "run")
    assert main(["export", str(run), "--format", "onnx"]) == 0
    assert_mentions(capsys.readouterr().out, "model.onnx", "match", "example image(s)")
    report = json.loads((run / "onnx" / "export_report.json").read_text())
    assert report["passed"] and report["max_abs_diff"] <= 1e-4 and report["images"] > 0
    assert (run / "onnx" / "config.json").is_file() and (run / "onnx" / "preprocessor_config.json").is_file()
    # Dynamic batch: a batch size the export never saw.
    model, _ = load_classifier(str(run), "cpu")
    pixels = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits.numpy()
    session = onnxruntime.InferenceSession(str(run / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"pixel_values": pixels.numpy()})[0]
    assert got.shape == (5, 3) and np.abs(got - expected).max() <= 1e-4
    card = (run / "README.md").read_text()
    assert_mentions(card, "onnx/model.onnx", "onnxruntime.InferenceSession")


def test_truncated_model_exports(tiny_checkpoint, tmp_path):
    model, processor = load_model_and_processor(tiny_checkpoint("mobilenet_v2"), {0: "a", 1: "b"})
    truncate_model(model, "blocks.2")
    model.save_pretrained(tmp_path / "cut")
    processor.save_pretrained(tmp_path / "cut")
    result = export_onnx(str(tmp_path / "cut"))
    assert result.passed and result.images == 0 and result.max_abs_diff <= 1e-4  # no examples/: random pixels


def test_missing_onnxruntime_names_the_extra(finished_run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["export", str(tmp_path)]) == 2
    assert_mentions(capsys.readouterr().err, "--format onnx", "onnxruntime", 'pip install "hf_finetune[export]"')

"""End to end through `python -m hf_finetune`'s entry point: outputs, reload, refusal of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from helpers import assert_mentions, parse_time_error
from hf_finetune.cli.main import main

FAST = ["--strategy", "head_then_unfreeze", "--num-train-epochs", "3", "--per-device-train-batch-size", "8", "--learning-rate", "5e-3", "--disable-tqdm", "true"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_checkpoint):
    from conftest import write_image_folder

    root = tmp_path_factory.mktemp("e2e")
    folder = write_image_folder(root / "images", per_class=10)
    out = root / "out"
    argv = ["--model", tiny_checkpoint("vit"), "--dataset", str(folder), "--output-dir", str(out), *FAST]
    assert main(argv) == 0
    return out, folder, argv


def test_outputs_exist_with_the_stated_keys(finished_run):
    out, _, _ = finished_run
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "run_config.json", "schedule.json", "test_report.json", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "test_report.json").read_text())
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix", "labels"} <= set(report)
    assert report["labels"] == ["cat", "dog", "fish"]
    assert set(report["per_class"]) == {"cat", "dog", "fish"}
    assert set(report["per_class"]["cat"]) == {"precision", "recall", "f1", "support"}
    matrix = report["confusion_matrix"]
    assert len(matrix) == 3 and sum(map(sum, matrix)) == report["num_samples"]
    assert sum(v["support"] for v in report["per_class"].values()) == report["num_samples"]

    config = json.loads((out / "run_config.json").read_text())
    assert {"model", "data", "finetune", "training", "seeds", "versions", "labels", "splits", "freeze_events"} <= set(config)
    assert config["seeds"]["seed"] == 42 and "torch" in config["versions"]
    assert config["training"]["num_train_epochs"] == 3.0
    schedule = json.loads((out / "schedule.json").read_text())
    assert 1 <= len(schedule["epochs"]) <= 3
    assert schedule["lr_history"]["step"]


def test_saved_model_reloads_with_auto_class_and_pipeline(finished_run):
    from transformers import AutoModelForImageClassification, pipeline

    out, folder, _ = finished_run
    model = AutoModelForImageClassification.from_pretrained(out)
    assert model.config.id2label == {0: "cat", 1: "dog", 2: "fish"}
    classify = pipeline("image-classification", model=str(out))
    image = Image.open(next((folder / "dog").iterdir()))
    predictions = classify(image, top_k=3)
    assert {p["label"] for p in predictions} == {"cat", "dog", "fish"}
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-4)


def test_output_dir_holding_another_run_is_refused(finished_run, tiny_checkpoint, tmp_path, capsys):
    out, folder, _ = finished_run
    argv = ["--model", tiny_checkpoint("resnet"), "--dataset", str(folder), "--output-dir", str(out), *FAST]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds a different run" in err and "--overwrite-output-dir" in err


@pytest.mark.parametrize(
    "flags,fragments",
    [
        # The flag, the bad value, and what is valid (the fix).
        (["--layer-decay", "0"], ("`--layer-decay`", "got 0.0", "(0, 1]")),
        (["--strategy", "freeze_all"], ("`--strategy`", "'freeze_all'", "'head_then_unfreeze'")),
        (["--augmentation", "wild"], ("`--augmentation`", "'wild'", "'strong'")),
        (["--top-k", "0"], ("`--top-k`", "got 0", ">= 1")),
        (["--num-train-epochs", "-1"], ("`--num-train-epochs`", "-1.0", "> 0", "`--max-steps`")),
        (["--learning-rate", "0"], ("`--learning-rate`", "got 0.0", "positive")),
        (["--per-device-train-batch-size", "0"], ("`--per-device-train-batch-size`", "got 0", ">= 1")),
        (["--metric-for-best-model", "f1"], ("`--metric-for-best-model`", "'f1'", "'macro_f1', 'accuracy', 'loss'")),
        (["--label-smoothing-factor", "1"], ("`--label-smoothing-factor`", "1.0", "[0, 1)")),
        (["--head-epochs", "-1"], ("`--head-epochs`", "-1", ">= 0")),
        (["--dataloader-num-workers", "-2"], ("`--dataloader-num-workers`", "-2", ">= 0")),
        (["--validation-fraction", "0.7"], ("`--validation-fraction`", "0.7", "(0, 0.5)")),
        (["--strategy", "top_k", "--unfreeze-on-plateau", "true"], ("`--unfreeze-on-plateau`", "'top_k'", "`--strategy head_then_unfreeze`")),
        (
            ["--eval-strategy", "no", "--save-strategy", "no", "--load-best-model-at-end", "false"],
            ("`--early-stopping-patience`", "`--eval-strategy` is 'no'", "`--eval-strategy epoch`"),
        ),
    ],
)
def test_invalid_flags_are_rejected_at_parse_time(flags, fragments, capsys, tmp_path):
    assert_mentions(parse_time_error(flags, tmp_path, capsys), *fragments)


def test_data_loading_workers_default_to_the_machine(monkeypatch):
    import torch

    from hf_finetune.config.training import FinetuneTrainingArguments

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert FinetuneTrainingArguments(output_dir="o").dataloader_num_workers == 0  # CPU: workers steal model cores
    assert FinetuneTrainingArguments(output_dir="o", dataloader_num_workers=3).dataloader_num_workers == 3
    assert FinetuneTrainingArguments(output_dir="o").dataloader_pin_memory is False  # no GPU: pinning only warns
    assert FinetuneTrainingArguments(output_dir="o", dataloader_pin_memory=True).dataloader_pin_memory is True
    from hf_finetune.config.training import default_num_workers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_num_workers() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 4 GPU processes share the 16 cores
    assert default_num_workers() == 2
    assert default_num_workers(use_cpu=True) == 0
    assert FinetuneTrainingArguments(output_dir="o", use_cpu=True).dataloader_pin_memory is False


def test_help_explains_every_flag():
    result = subprocess.run([sys.executable, "-m", "hf_finetune", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for flag in ("--model", "--dataset", "--strategy", "--layer-decay", "--head-learning-rate", "--train-bn", "--output-dir", "--learning-rate"):
        assert flag in result.stdout


def test_yaml_config_file(tmp_path, tiny_checkpoint, image_folder):
    from hf_finetune.cli.main import parse_args

    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_checkpoint('vit')}\ndataset: {image_folder}\nstrategy: top_k\ntop_k: 1\nnum_train_epochs: 2\n")
    model_args, data_args, finetune_args, training_args, _ = parse_args([str(config)])
    assert finetune_args.strategy == "top_k" and finetune_args.top_k == 1
    assert training_args.num_train_epochs == 2 and data_args.dataset == str(image_folder)


def test_the_cli_shows_the_library_info_lines():
    import logging

    from hf_finetune.cli.main import _configure_logging

    _configure_logging()
    for module in ("hf_finetune.probing.linear_probe", "hf_finetune.recipe.prepare", "hf_finetune.pipeline.run"):
        assert logging.getLogger(module).getEffectiveLevel() == logging.INFO

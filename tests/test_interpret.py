"""Interpretation after the test evaluation: most confused pairs, the top-losses JSON (misclassified images sorted
by loss) and gallery; `--interpret-split validation` and `--tta` in a run."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from conftest import FAST_RUN_FLAGS, write_image_folder

from hf_finetune.cli.main import main
from hf_finetune.evaluation.interpretation import most_confused, top_losses
from hf_finetune.pipeline.after_training import SplitLogits, interpret


def test_most_confused_pairs_sorted_by_count():
    matrix = [[5, 2, 0], [4, 3, 1], [0, 0, 6]]
    pairs = most_confused(matrix, ["a", "b", "c"])
    assert pairs == [
        {"true": "b", "predicted": "a", "count": 4},
        {"true": "a", "predicted": "b", "count": 2},
        {"true": "b", "predicted": "c", "count": 1},
    ]


def test_top_losses_are_the_misclassified_sorted_by_loss():
    logits = np.array([[3.0, 0.0], [0.0, 1.0], [0.0, 4.0], [2.0, 0.0], [0.5, 0.0]])
    labels = np.array([0, 0, 0, 1, 1])  # rows 1, 2, 3, 4 are wrong; row 2 most confidently
    entries = top_losses(logits, labels, ["x", "y"], k=3)
    assert [e["index"] for e in entries] == [2, 3, 1]
    assert [e["loss"] for e in entries] == sorted((e["loss"] for e in entries), reverse=True)
    assert all(e["true"] != e["predicted"] for e in entries)
    assert entries[0]["probability"] == pytest.approx(1 / (1 + np.exp(-4.0)))


def test_interpret_writes_json_and_gallery(tmp_path):
    folder = write_image_folder(tmp_path / "images", classes=("a", "b"), per_class=3)
    files = sorted(str(p) for p in folder.rglob("*.png"))
    dataset = datasets.Dataset.from_dict({"image": files}).cast_column("image", datasets.Image(decode=False))
    labels = np.array([0, 0, 0, 1, 1, 1])
    logits = np.array([[2, 0], [0, 3], [1, 0], [0, 1], [5, 0], [1, 0]], dtype=np.float32)
    out = tmp_path / "out"
    out.mkdir()
    confusion = [[2, 1], [2, 1]]
    summary = interpret(SplitLogits(logits, labels), dataset, ["a", "b"], confusion, "test", str(out))
    assert summary["num_misclassified"] == 3 and summary["most_confused"][0] == {"true": "b", "predicted": "a", "count": 2}
    payload = json.loads((out / "top_losses.json").read_text())
    assert [e["index"] for e in payload["top_losses"]] == [4, 1, 5]
    assert [e["source"] for e in payload["top_losses"]] == [files[4], files[1], files[5]]
    assert (out / "top_losses.png").stat().st_size > 0


def test_finished_run_has_interpretation(finished_run_dir):
    report = json.loads((finished_run_dir / "test_report.json").read_text())
    payload = json.loads((finished_run_dir / "top_losses.json").read_text())
    assert report["interpretation"]["split"] == payload["split"] == "test"
    losses = [e["loss"] for e in payload["top_losses"]]
    assert losses == sorted(losses, reverse=True) and all(e["true"] != e["predicted"] for e in payload["top_losses"])
    assert len(payload["top_losses"]) == report["interpretation"]["num_misclassified"] or len(losses) == 16
    assert (finished_run_dir / "top_losses.png").is_file()
    assert "### Mistakes (test split)" in (finished_run_dir / "README.md").read_text()


def test_validation_split_tta_and_calibration_in_a_run(tiny_checkpoint, tmp_path, monkeypatch):
    from hf_finetune.evaluation import calibration

    # A tiny model gets its tiny validation split all right (no temperature to fit): a fixed T tests the wiring.
    monkeypatch.setattr(calibration, "fit_temperature", lambda logits, labels: 2.0)
    folder = write_image_folder(tmp_path / "images", per_class=10)
    out = tmp_path / "out"
    flags = ["--interpret-split", "validation", "--tta", "true", "--calibrate", "true"]
    assert main(["--model", tiny_checkpoint("vit"), "--dataset", str(folder), "--output-dir", str(out), *FAST_RUN_FLAGS, *flags]) == 0
    report = json.loads((out / "test_report.json").read_text())
    assert json.loads((out / "top_losses.json").read_text())["split"] == "validation"
    assert report["interpretation"]["split"] == "validation"
    assert report["tta"]["views"][0] == "identity" and 0.0 <= report["tta"]["macro_f1"] <= 1.0
    calibration = report["calibration"]
    assert calibration["temperature"] == 2.0 and calibration["applied"] and calibration["folded_into"]
    assert calibration["validation"]["after"]["nll"] != calibration["validation"]["before"]["nll"]
    card = (out / "README.md").read_text()
    assert "### Test-time augmentation" in card and "after temperature scaling** (T = 2.000" in card


def test_bad_interpret_split(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--model", "x", "--dataset", "y", "--output-dir", str(tmp_path / "o"), "--interpret-split", "train"])
    assert "--interpret-split" in capsys.readouterr().err

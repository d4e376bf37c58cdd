"""`python -m hf_finetune compare RUN_DIR...`: one row per run, best macro-F1 first, CSV and plot written; the
bootstrap interval of macro-F1; a folder that is no run is refused."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from helpers import assert_mentions
from sklearn.metrics import f1_score

from hf_finetune.cli.main import main
from hf_finetune.evaluation.intervals import bootstrap_macro_f1, macro_f1_from_confusion


def _light_copy(run_dir, destination, macro_f1=None):
    """A run folder with just the records `compare` reads (optionally another test macro-F1)."""
    destination.mkdir()
    for name in ("run_config.json", "test_report.json"):
        shutil.copy(run_dir / name, destination / name)
    if macro_f1 is not None:
        report = json.loads((destination / "test_report.json").read_text())
        report["macro_f1"] = macro_f1
        (destination / "test_report.json").write_text(json.dumps(report))
    return destination


def test_compare_three_runs(finished_run_dir, tmp_path, capsys):
    runs = [_light_copy(finished_run_dir, tmp_path / name, f1) for name, f1 in (("a", 0.5), ("b", None), ("c", 0.7))]
    out = tmp_path / "comparison"
    assert main(["compare", *map(str, runs), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("| ") and "run" not in line.split("|")[1]]
    assert len(table) == 3
    with open(out / "compare_runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["run"].rsplit("/", 1)[-1] for row in rows] == ["b", "c", "a"]  # best test macro-F1 first
    config = json.loads((finished_run_dir / "run_config.json").read_text())
    assert rows[0]["strategy"] == config["finetune"]["strategy"]
    assert float(rows[0]["wall_seconds"]) == pytest.approx(config["timing"]["seconds"])
    assert all(float(r["macro_f1_low"]) <= float(r["macro_f1_high"]) for r in rows)
    assert (out / "compare_runs.png").stat().st_size > 0


def test_compare_refuses_a_folder_without_a_run(finished_run_dir, tmp_path, capsys):
    assert main(["compare", str(finished_run_dir), str(tmp_path)]) == 2
    assert_mentions(capsys.readouterr().err, str(tmp_path), "run_config.json", "test_report.json", "finished runs")


def test_bootstrap_interval_of_macro_f1():
    matrix = np.array([[40, 10], [5, 45]])
    y_true = np.repeat([0, 0, 1, 1], [40, 10, 5, 45])
    y_pred = np.repeat([0, 1, 0, 1], [40, 10, 5, 45])
    assert macro_f1_from_confusion(matrix) == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    interval = bootstrap_macro_f1(matrix)
    assert interval["low"] < interval["value"] < interval["high"] and interval["high"] - interval["low"] < 0.3
    assert bootstrap_macro_f1(matrix) == interval  # seeded
    assert bootstrap_macro_f1([[3, 0], [0, 4]])["low"] == 1.0

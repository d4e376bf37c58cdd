"""benchmarks/merge_results.py: a grid measured over several sessions merges into one table whose rows say where
their runs came from; a later file's run replaces an earlier one, and a dataset cut differently is left out."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "merge_results.py"


def _run(method: str, dataset: str, seed: int, macro_f1: float, train_images: int = 100) -> dict:
    return {"method": method, "model_name": "m", "dataset_name": dataset, "seed": seed, "test_accuracy": macro_f1,
            "test_macro_f1": macro_f1, "wall_seconds": 10.0, "peak_rss_mib": 100.0, "train_images": train_images,
            "phases": {}, "test_curve": [{"wall_seconds": 1.0, "macro_f1": macro_f1}]}


def _write(path: Path, day: str, runs: list[dict], datasets: dict) -> str:
    path.write_text(json.dumps({"date": day, "machine": "cpu", "seeds": [0, 1], "argv": [], "datasets": datasets,
                                "runs": runs}))
    return str(path)


def test_later_runs_replace_earlier_ones_and_a_differently_cut_dataset_is_left_out(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("merge_results", SCRIPT)
    merge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merge)
    old = _write(tmp_path / "old.json", "2026-01-01",
                 [_run("plain", "a", 0, 0.5), _run("plain", "a", 1, 0.6), _run("auto", "a", 0, 0.1),
                  _run("probe", "b", 0, 0.7, train_images=50)],
                 {"a": {"train_images": 100}, "b": {"train_images": 50, "subset_of": 80}})
    new = _write(tmp_path / "new.json", "2026-02-01",
                 [_run("auto", "a", 0, 0.9), _run("auto", "a", 1, 0.8), _run("auto", "b", 0, 0.95, train_images=80)],
                 {"b": {"train_images": 80}})
    assert merge.main([str(tmp_path / "merged"), old, new]) == 0
    payload = json.loads((tmp_path / "merged.json").read_text())
    rows = {(r["dataset"], r["method"]): r for r in payload["summary"]["table"]}
    assert abs(rows["a", "auto"]["test_macro_f1"]["mean"] - 0.85) < 1e-12  # 0.9 replaced the old seed-0 run's 0.1
    assert rows["a", "auto"]["sources"] == ["new (2026-02-01)"] and rows["a", "plain"]["sources"] == ["old (2026-01-01)"]
    assert ("b", "probe") not in rows  # trained on a 50-image cut of b; the newer runs used 80 images
    assert "left out: probe / m / b / 0 from old (2026-01-01)" in capsys.readouterr().err
    assert payload["datasets"] == {"a": {"train_images": 100}, "b": {"train_images": 80}}
    # Times from different files do not compare: no time-to-quality pair across them.
    assert payload["summary"]["time_to_quality"] == []
    table = (tmp_path / "merged.md").read_text()
    assert "| from |" in table and "| new (2026-02-01) |" in table

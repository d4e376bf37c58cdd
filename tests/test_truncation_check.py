"""benchmarks/truncation_check.py end to end on a tiny model and a tiny image folder (the real comparison runs on the
shared assets, on a GPU machine)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from conftest import write_image_folder

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "truncation_check.py"


def test_truncation_check_runs_both_variants(tiny_checkpoint, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("truncation_check", SCRIPT)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    data = write_image_folder(tmp_path / "data" / "tiny", per_class=10, splits=("train", "val", "test"))
    model = Path(tiny_checkpoint("resnet"))
    output = tmp_path / "results" / "truncation_check"
    argv = ["--shared", str(tmp_path), "--dataset", "tiny", "--models", str(model), "--seeds", "0", "--max-per-class", "6",
            "--probe-dir", str(tmp_path / "probes"), "--output", str(output), "--num-train-epochs", "1", "--baseline", "false"]
    assert check.main(argv) == 0
    payload = json.loads(output.with_suffix(".json").read_text())
    probe = json.loads((tmp_path / "probes" / model.name / "stage_probe.json").read_text())
    assert payload["cuts"][model.name] == check.best_block(probe)
    runs = {r["variant"]: r for r in payload["runs"]}
    assert runs["full"]["truncate_after"] == "none" and runs["truncated"]["truncate_after"] == payload["cuts"][model.name]
    assert runs["truncated"]["parameters"] < runs["full"]["parameters"]
    assert "--truncate-after none" in runs["full"]["command"] and "--num-train-epochs 1" in runs["truncated"]["command"]
    table = output.with_suffix(".md").read_text()
    assert "| test macro-F1 (mean ± std) |" in table and "truncated − full test macro-F1" in table
    # Subset: 6 images per class and split were used.
    subset = tmp_path / "results" / "truncation_check_runs" / "tiny_subset6"
    assert sorted(len(list(d.iterdir())) for d in subset.glob("*/*")) == [6] * 9
    # A second call finds every run in the JSON and reruns nothing: starting a run would fail the test.
    def no_rerun(*args, **kwargs):
        raise AssertionError(f"a run in the JSON was started again: {args}")

    monkeypatch.setattr(check, "run", no_rerun)
    assert check.main(argv) == 0 and json.loads(output.with_suffix(".json").read_text())["runs"] == payload["runs"]

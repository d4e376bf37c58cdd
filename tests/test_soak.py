"""Soak: a folder of 2000 small images, 5% of them broken in every way a real folder can be, trains to the end and
leaves out exactly the broken files, counted in the report and listed in run_config.json."""

from __future__ import annotations

import json
from pathlib import Path

from bad_files import BROKEN_KINDS, write_broken_file
from cli_runs import QUIET, run_cli
from conftest import write_image_folder

CLASSES = ("cat", "dog", "fish", "bird")
TOTAL, BROKEN_SHARE = 2000, 0.05


def test_two_thousand_images_five_percent_broken(tmp_path, tiny_checkpoint):
    n_broken = int(TOTAL * BROKEN_SHARE)
    folder = write_image_folder(tmp_path / "images", classes=CLASSES, per_class=(TOTAL - n_broken) // len(CLASSES), size=16)
    kinds = list(BROKEN_KINDS)
    broken = {
        write_broken_file(folder / CLASSES[i % len(CLASSES)] / f"broken_{i:03d}", kinds[i % len(kinds)], size=16, seed=i)
        for i in range(n_broken)
    }
    assert len(list(folder.rglob("*.*"))) == TOTAL

    out = tmp_path / "out"
    argv = ["--model", tiny_checkpoint("vit"), "--dataset", str(folder), "--output-dir", str(out),
            "--num-train-epochs", "1", "--per-device-train-batch-size", "64", "--per-device-eval-batch-size", "128", *QUIET]
    assert run_cli(argv, tmp_path / "run.log") == 0, (tmp_path / "run.log").read_text()[-3000:]

    config = json.loads((out / "run_config.json").read_text())
    assert config["status"] == "finished" and config["epochs_run"] == 1  # trained to the end
    skipped = {Path(entry["file"]) for entry in config["skipped_files"]}
    assert skipped == {path.resolve() for path in broken}  # exactly the broken ones
    summary = config["splits"]["image_check"]
    n_not_images = sum(1 for i in range(n_broken) if BROKEN_KINDS[kinds[i % len(kinds)]][1] is False)
    assert summary["skipped"] == n_broken and summary["non_image_files"] == n_not_images
    assert summary["checked"] == TOTAL - n_not_images
    report = json.loads((out / "test_report.json").read_text())
    assert report["num_skipped_files"] == n_broken
    counts = config["splits"]["counts"]
    assert sum(sum(split.values()) for split in counts.values()) == TOTAL - n_broken
    assert report["num_samples"] == sum(counts["test"].values())  # every good test image was evaluated
    log = (tmp_path / "run.log").read_text()
    assert f"Skipping {n_broken} file(s) that cannot be used" in log and "... and 50 more" in log

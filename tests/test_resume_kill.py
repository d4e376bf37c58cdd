"""A real `python -m hf_finetune` process, SIGKILLed in the middle of an unfreeze stage and started again with the
same command, ends with the same test report and the same schedule as an uninterrupted run (CPU, fixed seed)."""

from __future__ import annotations

import json
import math
import signal

from cli_runs import QUIET, complete_checkpoints, run_cli, start_cli, wait_for_checkpoint
from conftest import write_image_folder
from helpers import assert_mentions
from hf_finetune import DataArguments, load_splits

# Validation timings differ from run to run; everything else in schedule.json must not.
TIMING_KEYS = ("runtime", "samples_per_second", "steps_per_second")
BATCH = 4


def _without_timing(schedule: dict) -> dict:
    for record in schedule["epochs"]:
        record["validation"] = {k: v for k, v in record["validation"].items() if k not in TIMING_KEYS}
    return schedule


def test_sigkill_mid_unfreeze_stage_then_same_command_gives_the_same_results(tmp_path, tiny_checkpoint):
    folder = write_image_folder(tmp_path / "images", per_class=40)
    splits = load_splits(DataArguments(dataset=str(folder)), seed=42)  # also warms the datasets cache for both runs
    steps_per_epoch = math.ceil(len(splits.train) / BATCH)
    # Epoch 0: head only; epochs 1-2: + top stage (its LR ramps over 1.5 epochs); 3-4: + next stage; ...
    common = [
        "--model", tiny_checkpoint("vit"), "--dataset", str(folder), "--num-train-epochs", "8",
        "--per-device-train-batch-size", str(BATCH), "--learning-rate", "2e-3", "--head-epochs", "1",
        "--unfreeze-every", "2", "--unfreeze-warmup-epochs", "1.5", *QUIET,
    ]
    reference_out, out = tmp_path / "reference", tmp_path / "run"
    reference = start_cli([*common, "--output-dir", str(reference_out)], tmp_path / "reference.log")
    victim = start_cli([*common, "--output-dir", str(out)], tmp_path / "killed.log")
    # End of epoch 1: the top stage was unfrozen at epoch 1 and trains on through epoch 2.
    wait_for_checkpoint(out, victim, min_step=2 * steps_per_epoch, log=tmp_path / "killed.log")
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    assert not (out / "test_report.json").exists()
    resume_from = complete_checkpoints(out)[-1]
    state = json.loads((resume_from / "trainer_state.json").read_text())
    assert state["global_step"] < state["max_steps"]
    assert state["stateful_callbacks"]["StageUnfreezeCallback"]["attributes"]["num_unfrozen"] >= 1

    # Restarted with the very same command: the output dir holds this unfinished run, so it continues.
    assert run_cli([*common, "--output-dir", str(out)], tmp_path / "resumed.log") == 0
    assert_mentions((tmp_path / "resumed.log").read_text(), "unfinished", f"continuing from {resume_from}")
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]

    report = json.loads((out / "test_report.json").read_text())
    assert report == json.loads((reference_out / "test_report.json").read_text())
    schedule = _without_timing(json.loads((out / "schedule.json").read_text()))
    assert schedule == _without_timing(json.loads((reference_out / "schedule.json").read_text()))
    assert [e["epoch"] for e in schedule["epochs"]] == list(range(8))

    config = json.loads((out / "run_config.json").read_text())
    reference_config = json.loads((reference_out / "run_config.json").read_text())
    assert config["status"] == "finished" and config["resumed_from"] == str(resume_from)
    assert config["freeze_events"] == reference_config["freeze_events"]
    assert config["command"] == [*reference_config["command"][:-1], str(out)]  # the original command is kept

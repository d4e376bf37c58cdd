"""Ctrl-C (a real SIGINT to a real `python -m hf_finetune` process) and NaN losses stop a run without losing work
and without a report that claims results."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess


from cli_runs import QUIET, REPO, cli_env, complete_checkpoints, start_cli, wait_for_checkpoint
from conftest import write_image_folder
from helpers import assert_mentions
from hf_finetune.cli.main import main

TIMING = ("runtime", "samples_per_second", "steps_per_second")


def test_ctrl_c_saves_a_checkpoint_prints_the_resume_command_and_exits_130(tmp_path, tiny_checkpoint):
    folder = write_image_folder(tmp_path / "images", per_class=24)  # 50 train images: 13 steps per epoch
    out = tmp_path / "out"
    argv = ["--model", tiny_checkpoint("vit"), "--dataset", str(folder), "--output-dir", str(out),
            "--num-train-epochs", "8", "--per-device-train-batch-size", "4", "--augmentation", "none", *QUIET]
    log = tmp_path / "run.log"
    proc = start_cli(argv, log)
    first = wait_for_checkpoint(out, proc, min_step=1, log=log)  # end of epoch 0: training is under way
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]

    text = log.read_text()
    assert_mentions(text, "Ctrl-C: saving a checkpoint", "interrupted (checkpoint saved)", "no test evaluation")
    saved = complete_checkpoints(out)[-1]
    assert int(saved.name.split("-")[1]) > int(first.name.split("-")[1])  # a new checkpoint, after the signal
    state = json.loads((saved / "trainer_state.json").read_text())
    assert state["global_step"] < state["max_steps"]
    assert "StageUnfreezeCallback" in state["stateful_callbacks"] and "ScheduleRecorderCallback" in state["stateful_callbacks"]
    # No result is claimed: no test report, no final model; the partial schedule is there.
    assert not any((out / name).exists() for name in ("test_report.json", "model.safetensors", "README.md"))
    partial = json.loads((out / "schedule.json").read_text())
    assert partial["epochs"] and partial["epochs"][-1]["last_step"] == state["global_step"]
    config = json.loads((out / "run_config.json").read_text())
    assert config["status"] == "interrupted" and config["last_checkpoint"] == str(saved)

    # The printed command is exact: running it finishes the run from that checkpoint.
    command = text.split(f"Resume from {saved} with:\n  ", 1)[1].splitlines()[0]
    assert command.endswith(f"--resume-from-checkpoint {saved}")
    resumed = subprocess.run(shlex.split(command), cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    report = json.loads((out / "test_report.json").read_text())
    assert report["num_samples"] > 0
    config = json.loads((out / "run_config.json").read_text())
    assert config["status"] == "finished" and config["resumed_from"] == str(saved)
    assert config["command"][1:] == argv  # how the run was started is kept
    assert config["resumes"][0]["from"] == str(saved)
    schedule = json.loads((out / "schedule.json").read_text())
    assert [e["epoch"] for e in schedule["epochs"]] == list(range(8))
    steps = [(e["first_step"], e["last_step"]) for e in schedule["epochs"]]
    assert all(b[0] == a[1] + 1 for a, b in zip(steps, steps[1:]))  # the interrupted epoch is one record, no gap


def _nan_after(monkeypatch, step: int) -> None:
    """Makes the loss NaN from optimizer step `step` on (the model itself stays healthy)."""
    from hf_finetune import FinetuneTrainer

    original = FinetuneTrainer.compute_loss

    def compute_loss(self, model, inputs, *args, **kwargs):
        loss = original(self, model, inputs, *args, **kwargs)
        if self.state.global_step >= step:
            loss = loss * float("nan") if not isinstance(loss, tuple) else (loss[0] * float("nan"), *loss[1:])
        return loss

    monkeypatch.setattr(FinetuneTrainer, "compute_loss", compute_loss)


def test_nan_loss_stops_keeps_the_last_good_checkpoint_and_claims_no_result(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    folder = write_image_folder(tmp_path / "images", per_class=10)
    out = tmp_path / "out"
    _nan_after(monkeypatch, step=5)  # 3 steps per epoch: epoch 0 checkpoint (step 3) is good, the fault is in epoch 1
    argv = ["--model", tiny_checkpoint("vit"), "--dataset", str(folder), "--output-dir", str(out),
            "--num-train-epochs", "4", "--per-device-train-batch-size", "8", *QUIET]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert_mentions(err, "loss became nan", "step 6", "epoch 1.67", "learning rates in use: head", "lower `--learning-rate`",
                    "`--head-learning-rate`", "LR range test", f"last good checkpoint is kept: {out / 'checkpoint-3'}")
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-3"]
    assert not any((out / name).exists() for name in ("test_report.json", "model.safetensors", "README.md"))
    config = json.loads((out / "run_config.json").read_text())
    assert config["status"] == "failed" and "loss became nan" in config["failure"]
    assert config["last_checkpoint"] == str(out / "checkpoint-3")


def test_a_far_too_high_learning_rate_is_caught_as_nan(tmp_path, tiny_checkpoint, capsys):
    folder = write_image_folder(tmp_path / "images", per_class=10)
    argv = ["--model", tiny_checkpoint("vit"), "--dataset", str(folder), "--output-dir", str(tmp_path / "out"),
            "--num-train-epochs", "3", "--per-device-train-batch-size", "8", "--strategy", "full",
            "--learning-rate", "1e30", "--warmup-steps", "0", *QUIET]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "The training loss became nan" in err or "The training loss became inf" in err
    assert not (tmp_path / "out" / "test_report.json").exists()


def test_resume_command_replaces_the_resume_flag_and_hides_the_token():
    from hf_finetune.cli.main import resume_command

    command = resume_command(["--hub-token", "hf_x", "--resume-from-checkpoint", "old", "--seed", "3"], "runs/x/checkpoint-9")
    assert command.endswith("-m hf_finetune --hub-token '<HUB_TOKEN>' --seed 3 --resume-from-checkpoint runs/x/checkpoint-9")
    assert "hf_x" not in command and "old" not in command
    assert resume_command(["run.yaml"], "runs/x/checkpoint-9").endswith("-m hf_finetune run.yaml")  # resumes by itself

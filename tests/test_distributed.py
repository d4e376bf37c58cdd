"""The CLI under torchrun: 2 CPU processes (gloo) give the same run as 1 process on the same effective batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import write_image_folder

# Same samples per optimizer step (2 x 4 == 1 x 8, 48 train images), no augmentation, no dropout in the tiny ViT:
# the two runs differ only by float summation order.
WEIGHT_TOLERANCE = 1e-5


def _run(command: list[str], cwd) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun (from torch) is not next to this Python")
def test_two_process_run_matches_one_process_run(tmp_path, tiny_checkpoint):
    data = write_image_folder(tmp_path / "images", per_class=16, splits=("train", "val", "test"))
    common = [
        "--model", tiny_checkpoint("vit"), "--dataset", str(data), "--augmentation", "none", "--num-train-epochs", "3",
        "--learning-rate", "5e-3", "--disable-tqdm", "true", "--seed", "1",
    ]
    _run([sys.executable, "-m", "hf_finetune", *common, "--per-device-train-batch-size", "8", "--output-dir", str(tmp_path / "one")], tmp_path)
    two = _run(
        [TORCHRUN, "--nproc_per_node", "2", "-m", "hf_finetune", *common, "--per-device-train-batch-size", "4", "--output-dir", str(tmp_path / "two")],
        tmp_path,
    )
    assert two.stdout.count("hf_finetune: test accuracy") == 1  # one summary, from the main process

    one_report = json.loads((tmp_path / "one" / "test_report.json").read_text())
    two_report = json.loads((tmp_path / "two" / "test_report.json").read_text())
    assert two_report["num_samples"] == 48  # the full test set, gathered once across processes
    for key in ("accuracy", "macro_f1", "confusion_matrix", "per_class", "labels"):
        assert two_report[key] == one_report[key], key

    one_weights = load_file(tmp_path / "one" / "model.safetensors")
    two_weights = load_file(tmp_path / "two" / "model.safetensors")
    assert one_weights.keys() == two_weights.keys()
    worst = max((one_weights[k] - two_weights[k]).abs().max().item() for k in one_weights)
    assert worst < WEIGHT_TOLERANCE

    one_schedule = json.loads((tmp_path / "one" / "schedule.json").read_text())["epochs"]
    two_schedule = json.loads((tmp_path / "two" / "schedule.json").read_text())["epochs"]
    assert [e["trainable_stages"] for e in two_schedule] == [e["trainable_stages"] for e in one_schedule]
    for a, b in zip(one_schedule, two_schedule):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
        assert b["lr_start"] == pytest.approx(a["lr_start"]) and b["lr_end"] == pytest.approx(a["lr_end"])


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun (from torch) is not next to this Python")
def test_two_process_streaming_run_reads_the_whole_stream_once_per_epoch(tmp_path, tiny_checkpoint):
    from test_streaming import write_shards

    shards = write_shards(tmp_path / "shards", per_class=24, shards=4)
    out = tmp_path / "two"
    two = _run(
        [TORCHRUN, "--nproc_per_node", "2", "-m", "hf_finetune", "--model", tiny_checkpoint("vit"), "--dataset", str(shards),
         "--output-dir", str(out), "--strategy", "head_then_unfreeze", "--num-train-epochs", "2", "--augmentation", "none",
         "--per-device-train-batch-size", "4", "--learning-rate", "5e-3", "--streaming", "--streaming-sample", "16",
         "--disable-tqdm", "true"],
        tmp_path,
    )
    assert two.stdout.count("hf_finetune: test accuracy") == 1
    rows = json.loads((out / "run_config.json").read_text())["splits"]["streaming"]["train_rows"]
    schedule = json.loads((out / "schedule.json").read_text())
    assert len(schedule["epochs"]) == 2
    assert schedule["lr_history"]["step"][-1] == 2 * -(-rows // 8)  # 2 processes x 4 images per optimizer step


def test_a_finished_run_leaves_the_process_group(tmp_path, tiny_checkpoint, monkeypatch):
    """The CLI destroys the process group it ran in (a group left alive at exit can abort the process while Gloo's
    threads are torn down), after a barrier, so no process leaves before the main one has written the output."""
    import torch.distributed as dist

    from hf_finetune.cli import main as cli

    data = write_image_folder(tmp_path / "images", per_class=4, splits=("train", "val", "test"))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    calls = []
    barrier = dist.barrier
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: calls.append("barrier") or barrier(*a, **k))
    try:
        code = cli.main(["--model", tiny_checkpoint("vit"), "--dataset", str(data), "--output-dir", str(tmp_path / "out"),
                         "--strategy", "linear_probe", "--disable-tqdm", "true"])
        assert code == 0 and (tmp_path / "out" / "model.safetensors").is_file()
        assert not dist.is_initialized()
        assert calls == ["barrier"]
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()

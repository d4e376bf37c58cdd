"""Running `python -m hf_finetune` as a real subprocess (for kills, Ctrl-C and log capture) and waiting on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Plain logs (no progress bars) and a fixed-length schedule (no early stop).
# The fixed head_then_unfreeze recipe: these runs must train for several epochs and write checkpoints.
QUIET = ["--strategy", "head_then_unfreeze", "--baseline", "false", "--disable-tqdm", "true", "--early-stopping-patience", "0"]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: offline, and this worktree's package first on the path."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # One intra-op thread: tiny models run ~10x faster than with OpenMP threads fighting over a busy CPU, and the
    # thread count (which can change float summation order) is the same on every machine.
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def start_cli(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Starts `python -m hf_finetune ARGV` with stdout+stderr going to `log`."""
    handle = open(log, "wb")  # noqa: SIM115 - closed with the process by the caller's wait()
    return subprocess.Popen(
        [sys.executable, "-m", "hf_finetune", *argv], cwd=REPO, env=env or cli_env(), stdout=handle, stderr=subprocess.STDOUT
    )


def run_cli(argv: list[str], log: Path, env: dict[str, str] | None = None, timeout: float = 300) -> int:
    """Runs `python -m hf_finetune ARGV` to the end; returns its exit code."""
    proc = start_cli(argv, log, env)
    return proc.wait(timeout=timeout)


def complete_checkpoints(out: Path) -> list[Path]:
    """`checkpoint-N` folders whose trainer_state.json reads back, oldest first."""
    found = []
    for path in out.glob("checkpoint-*"):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        found.append(path)
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def wait_for_checkpoint(out: Path, proc: subprocess.Popen, min_step: int, log: Path, timeout: float = 240) -> Path:
    """Polls until a complete checkpoint with step >= `min_step` exists; fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [p for p in complete_checkpoints(out) if int(p.name.split("-")[1]) >= min_step]
        if done:
            return done[0]
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before checkpoint >= {min_step}:\n{log.read_text()[-3000:]}")
        time.sleep(0.005)
    proc.kill()
    raise AssertionError(f"no checkpoint >= {min_step} within {timeout}s:\n{log.read_text()[-3000:]}")

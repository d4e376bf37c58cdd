"""How a run stops early without losing work, and how it continues.

- Ctrl-C (SIGINT): `InterruptCallback` lets the current optimizer step finish, saves a checkpoint at the step end
  (the Trainer's own save path, so model, optimizer, scheduler, RNG and callback states are consistent), stops,
  and the run raises `TrainingInterrupted` instead of evaluating the test split. A second Ctrl-C stops at once.
- A NaN/inf training loss: `check_finite_loss` (called by `FinetuneTrainer.training_step`, before the optimizer
  step, so the weights stay finite) raises `NonFiniteLossError`; the checkpoints already written stay as they are.
- `last_checkpoint` finds the newest *complete* checkpoint (a kill during a save leaves a folder without
  `trainer_state.json`, which the Trainer writes last); `resume_command` prints the command that continues a run,
  with every token redacted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import signal
import threading
from collections.abc import Iterator
from typing import Any

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_TRAINER_STATE = "trainer_state.json"


class TrainingInterrupted(Exception):
    """Training stopped on Ctrl-C after saving `checkpoint`; nothing was evaluated on the test split."""

    def __init__(self, checkpoint: str | None, global_step: int, epoch: float) -> None:
        self.checkpoint = checkpoint
        self.global_step = global_step
        self.epoch = epoch
        super().__init__(f"Interrupted at step {global_step} (epoch {epoch:.2f}); checkpoint: {checkpoint}")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops without a test report."""


class InterruptCallback(TrainerCallback):
    """Turns a Ctrl-C into "save a checkpoint at the end of this step, then stop".

    The signal handler only sets a flag (`interrupted`); the callback acts on it at the next step end through
    `TrainerControl`, so the checkpoint is taken between two optimizer steps. Install the handler around
    `trainer.train()` with `handle_sigint()`.
    """

    def __init__(self) -> None:
        self.interrupted = False
        self._saved_at_step: int | None = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.interrupted:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, without a checkpoint
        self.interrupted = True
        logger.warning(
            "Ctrl-C: saving a checkpoint at the end of this training step, then stopping "
            "(press Ctrl-C again to stop at once, without a checkpoint)."
        )

    @contextlib.contextmanager
    def handle_sigint(self) -> Iterator[None]:
        """Routes SIGINT to this callback while the block runs (main thread only), then restores the old handler."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def on_step_end(self, args, state, control, **kwargs):
        if not self.interrupted:
            return
        control.should_training_stop = True
        if abs(state.epoch - round(state.epoch)) > 1e-9:
            # Mid-epoch: save now. At an epoch's last step the epoch end evaluates and saves as usual, so the
            # checkpoint carries that epoch's validation result (early stopping and plateaus depend on it).
            control.should_save = True
            self._saved_at_step = state.global_step

    def on_epoch_end(self, args, state, control, **kwargs):
        if not self.interrupted:
            return
        if self._saved_at_step == state.global_step:
            # A validation pass over a partial epoch would feed early stopping and the plateau detector a value the
            # uninterrupted run never sees, and overwrite the checkpoint just saved.
            control.should_evaluate = False
            control.should_save = False
        else:
            control.should_save = True


def check_finite_loss(loss: torch.Tensor, state: Any, optimizer: Any, output_dir: str) -> None:
    """Raises `NonFiniteLossError` (with the LRs in use and the last good checkpoint) if `loss` is NaN or inf."""
    value = float(loss.detach().float().mean())
    if math.isfinite(value):
        return
    lrs = {}
    for group in getattr(optimizer, "param_groups", []):
        lrs.setdefault(group.get("stage", group.get("name", "?")), group["lr"])
    top = ", ".join(f"{name} {lr:.3g}" for name, lr in list(lrs.items())[:3])
    checkpoint = last_checkpoint(output_dir)
    kept = (
        f"The last good checkpoint is kept: {checkpoint} (its optimizer carries the old learning rates: start over "
        "with --overwrite-output-dir rather than resuming it)."
        if checkpoint
        else "No checkpoint was saved before the fault."
    )
    raise NonFiniteLossError(
        f"The training loss became {value} at step {state.global_step + 1} (epoch {state.epoch or 0:.2f}); "
        f"learning rates in use: {top}. The learning rate is most likely too high: lower `--learning-rate` (and "
        f"`--head-learning-rate`), e.g. by 10x, or pick one with an LR range test (lr-find). {kept} "
        "No test report was written."
    )


def last_checkpoint(output_dir: str) -> str | None:
    """The newest complete `checkpoint-N` folder in `output_dir` (one whose `trainer_state.json` reads back)."""
    if not os.path.isdir(output_dir):
        return None
    steps = sorted(
        (int(m.group(1)), entry)
        for entry in os.listdir(output_dir)
        if (m := _CHECKPOINT.match(entry)) and os.path.isdir(os.path.join(output_dir, entry))
    )
    for _, entry in reversed(steps):
        path = os.path.join(output_dir, entry)
        try:
            with open(os.path.join(path, _TRAINER_STATE)) as f:
                json.load(f)
        except (OSError, ValueError):
            logger.warning("Ignoring %s: it is incomplete (no readable %s; the run stopped while saving it).", path, _TRAINER_STATE)
            continue
        return path
    return None

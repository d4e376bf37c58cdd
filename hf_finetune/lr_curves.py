"""LR curves beyond the Trainer's (`--lr-schedule`): one-cycle, cyclical, and ReduceLROnPlateau on validation
macro-F1 that keeps working with frozen groups.

Every curve is a multiplier of the groups' absolute LRs, turned into the same gated `LambdaLR` as the stock
schedules (`lr_schedule.build_staged_scheduler`), so frozen stages stay at LR 0 and newly unfrozen stages still
ramp up. ReduceLROnPlateau is not a LambdaLR in torch; here it is a constant-after-warmup curve times each group's
`lr_factor`, which `PlateauLRCallback` halves when validation macro-F1 stalls. The factor lives in the optimizer's
param groups, so it is saved with the optimizer state and survives a resume.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .lr_schedule import refresh_learning_rates

logger = logging.getLogger(__name__)

# one_cycle: share of the steps spent rising, start and end as fractions of the peak (fastai-style).
ONE_CYCLE_RISE = 0.3
ONE_CYCLE_START = 1 / 25
ONE_CYCLE_END = 1 / 1000
# cyclic: the low point of a triangular cycle, as a fraction of the peak.
CYCLIC_LOW = 0.1


def uses_plateau(lr_schedule: str | None, lr_scheduler_type: object) -> bool:
    """`--lr-schedule plateau`, or the Trainer's `--lr-scheduler-type reduce_lr_on_plateau` (served by the same
    gated equivalent: torch's ReduceLROnPlateau is no LambdaLR and would ignore the freeze gates)."""
    return lr_schedule == "plateau" or getattr(lr_scheduler_type, "value", lr_scheduler_type) == "reduce_lr_on_plateau"


def warmup_constant(warmup_steps: int) -> Callable[[int], float]:
    """Linear warmup to 1, then 1 (the base of the plateau schedule)."""

    def curve(step: int) -> float:
        return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0

    return curve


def one_cycle(total_steps: int) -> Callable[[int], float]:
    """Linear rise from `ONE_CYCLE_START` to 1 over the first `ONE_CYCLE_RISE` of the steps, then cosine to `ONE_CYCLE_END`."""
    rise = max(1, int(total_steps * ONE_CYCLE_RISE))
    fall = max(1, total_steps - rise)

    def curve(step: int) -> float:
        if step < rise:
            return ONE_CYCLE_START + (1 - ONE_CYCLE_START) * step / rise
        progress = min(1.0, (step - rise) / fall)
        return ONE_CYCLE_END + (1 - ONE_CYCLE_END) * 0.5 * (1 + math.cos(math.pi * progress))

    return curve


def cyclic(half_period_steps: int) -> Callable[[int], float]:
    """Triangular cycles: `CYCLIC_LOW` -> 1 over `half_period_steps`, back down over the next, repeated."""
    half = max(1, half_period_steps)

    def curve(step: int) -> float:
        position = (step % (2 * half)) / half  # 0..2
        up = position if position <= 1 else 2 - position
        return CYCLIC_LOW + (1 - CYCLIC_LOW) * up

    return curve


class PlateauLRCallback(TrainerCallback, ExportableState):
    """Multiplies every group's `lr_factor` by `factor` when `metric` has not improved for `patience` evaluations.

    Args:
        metric (`str`, defaults to `"eval_macro_f1"`): the validation metric (greater is better).
        patience (`int`, defaults to 1): evaluations without improvement before a reduction.
        factor (`float`, defaults to 0.5): multiplier per reduction.
        min_factor (`float`, defaults to 1e-3): floor of the cumulative factor.
    """

    def __init__(self, metric: str = "eval_macro_f1", patience: int = 1, factor: float = 0.5, min_factor: float = 1e-3) -> None:
        self.metric = metric
        self.patience = patience
        self.factor = factor
        self.min_factor = min_factor
        self.best: float | None = None
        self.bad_evaluations = 0
        self.reductions: list[dict] = []

    def state(self) -> dict:
        return {
            "args": {"metric": self.metric, "patience": self.patience, "factor": self.factor, "min_factor": self.min_factor},
            "attributes": {"best": self.best, "bad_evaluations": self.bad_evaluations, "reductions": self.reductions},
        }

    def on_evaluate(self, args, state, control, metrics=None, optimizer=None, lr_scheduler=None, **kwargs):
        if not metrics or self.metric not in metrics:
            return
        value = float(metrics[self.metric])
        if self.best is None or value > self.best:
            self.best, self.bad_evaluations = value, 0
            return
        self.bad_evaluations += 1
        if self.bad_evaluations < self.patience or optimizer is None:
            return
        self.bad_evaluations = 0
        groups = getattr(optimizer, "optimizer", optimizer).param_groups
        current = groups[0].get("lr_factor", 1.0)
        new = max(self.min_factor, current * self.factor)
        for group in groups:
            group["lr_factor"] = new
        if lr_scheduler is not None:
            refresh_learning_rates(lr_scheduler)
        self.reductions.append({"step": state.global_step, "epoch": state.epoch, "lr_factor": new})
        logger.info("ReduceLROnPlateau: %s stalled at %.4f; LR factor now %.4g", self.metric, self.best, new)

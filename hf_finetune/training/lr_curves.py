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

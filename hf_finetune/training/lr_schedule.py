"""Per-group LR schedule: the Trainer's warmup + decay curve, times a per-stage gate.

One `LambdaLR` with one lambda per optimizer group. Each lambda multiplies the stock schedule
(`get_scheduler(...)`'s curve, so every `--lr-scheduler-type` keeps working) by:
    0                         while the group's stage is frozen (`trainable_since` is None);
    a linear ramp 0 -> 1      over `ramp_steps` steps after the stage was unfrozen;
    1                         afterwards;
and by the group's `lr_factor` (1 unless a plateau callback lowered it).
The gate reads the optimizer's param groups on every step, so the freeze callback changes a
stage's LR by editing its group, and a resumed optimizer state brings the gates back with it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR


def stage_gate(group: dict, step: int) -> float:
    """Factor applied to a group's scheduled LR at `step` (see the module docstring)."""
    since = group.get("trainable_since")
    if since is None:
        return 0.0
    ramp = group.get("ramp_steps", 0) or 0
    if ramp <= 0:
        return 1.0
    return min(1.0, max(0.0, (step - since + 1) / ramp))


def _gated(base: Callable[[int], float], optimizer: torch.optim.Optimizer, index: int) -> Callable[[int], float]:
    # A closure (not a callable object) so LambdaLR.state_dict() does not try to save it; it looks the
    # group up by index on each call because Optimizer.load_state_dict() replaces the group dicts.
    def factor(step: int) -> float:
        group = optimizer.param_groups[index]
        # lr_factor: a run-time multiplier shared by all groups (ReduceLROnPlateau, `lr_curves.PlateauLRCallback`).
        return base(step) * stage_gate(group, step) * group.get("lr_factor", 1.0)

    return factor


def build_staged_scheduler(base_scheduler: LambdaLR, optimizer: torch.optim.Optimizer) -> LambdaLR:
    """Wraps the stock schedule's curve into one gated lambda per param group of `optimizer`."""
    if len(base_scheduler.lr_lambdas) != 1 and len(base_scheduler.lr_lambdas) != len(optimizer.param_groups):
        raise ValueError("Expected a LambdaLR with one shared lambda or one per param group.")
    bases = base_scheduler.lr_lambdas * (len(optimizer.param_groups) if len(base_scheduler.lr_lambdas) == 1 else 1)
    # Start from the absolute LRs the groups were built with (get_scheduler already scaled `lr` by step 0's factor).
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"]
    return LambdaLR(optimizer, [_gated(base, optimizer, i) for i, base in enumerate(bases)])


def _unwrap(scheduler: object) -> object:
    # accelerate wraps the scheduler in AcceleratedScheduler (attribute `scheduler`).
    return getattr(scheduler, "scheduler", scheduler)


def refresh_learning_rates(scheduler: object) -> None:
    """Re-applies the current step's factors after a gate changed mid-schedule (e.g. a stage was unfrozen)."""
    inner = _unwrap(scheduler)
    if not isinstance(inner, LambdaLR):
        return
    for group, base_lr, lam in zip(inner.optimizer.param_groups, inner.base_lrs, inner.lr_lambdas):
        group["lr"] = base_lr * lam(inner.last_epoch)
    inner._last_lr = [group["lr"] for group in inner.optimizer.param_groups]

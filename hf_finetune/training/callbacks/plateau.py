"""`PlateauLRCallback`: ReduceLROnPlateau on validation macro-F1 for gated parameter groups (see `lr_curves`)."""

from __future__ import annotations

import logging

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from hf_finetune.training.lr_schedule import refresh_learning_rates

logger = logging.getLogger(__name__)


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

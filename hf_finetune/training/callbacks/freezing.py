"""Freezing and gradual unfreezing of encoder stages, as a `TrainerCallback`.

The callback never runs the loop: it acts on the model and optimizer the Trainer passes it.
It flips `requires_grad` and each optimizer group's `trainable_since` (see `lr_schedule`), so
the optimizer and scheduler built at the start stay the same objects for the whole run.

Frozen stages run in eval mode inside a training step (BatchNorm running statistics fixed,
dropout and drop-path off), unless `train_bn` lets their BatchNorm layers keep updating. Their
parameters get no gradient, and because autograd only records operations on tensors that need a
gradient, no backward pass runs through a frozen prefix of the network.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from hf_finetune.backbones.split import split_stages
from hf_finetune.backbones.stages import StageMap, resolve_stages
from hf_finetune.backbones.targets import tunable_parameter_names
from hf_finetune.config.finetune import FinetuneArguments
from hf_finetune.training.lr_schedule import refresh_learning_rates

logger = logging.getLogger(__name__)

_FROZEN_FLAG = "_hf_finetune_frozen"
_TRAIN_BN_FLAG = "_hf_finetune_train_bn"
_BN_STATS_FIXED_FLAG = "_hf_finetune_bn_stats_fixed"
_HOOKED_FLAG = "_hf_finetune_hooked"


def unfreeze_units(stage_map: StageMap) -> list[list[str]]:
    """Backbone stages grouped into unfreeze steps, top first; the final norm goes with the top block."""
    names = [stage.name for stage in stage_map.backbone]
    units = [[name] for name in reversed(names)]
    if len(units) > 1 and units[0][0] == "norm":
        units[1] = ["norm", *units[1]]
        units.pop(0)
    return units


def _eval_if_frozen(module: torch.nn.Module, _inputs: Any) -> None:
    # Runs right before the module's forward, i.e. after the Trainer's model.train() of this step.
    if module.training and getattr(module, _FROZEN_FLAG, False):
        module.eval()
        if getattr(module, _TRAIN_BN_FLAG, False):
            for sub in module.modules():
                if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
                    sub.train()
    elif module.training and getattr(module, _BN_STATS_FIXED_FLAG, False):
        # A trainable stage with fixed BatchNorm statistics: normalise with the running statistics (eval mode);
        # the affine weights still train.
        for sub in module.modules():
            if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
                sub.eval()


def set_trainable_stages(
    model: torch.nn.Module, stage_map: StageMap, trainable: set[str], *, train_bn: bool = False, fix_bn_stats: bool = False
) -> None:
    """Makes exactly the stages in `trainable` (plus the head) trainable and freezes the rest.

    For a peft model, "trainable" covers only the adapter parameters of those stages (see
    `backbone.tunable_parameter_names`); its base weights stay frozen whatever the stage.

    Args:
        model (`torch.nn.Module`): the model.
        stage_map (`StageMap`): its stages.
        trainable (`set[str]`): names of the backbone stages to train; the head always trains.
        train_bn (`bool`, defaults to `False`): let BatchNorm layers of frozen stages update their statistics.
        fix_bn_stats (`bool`, defaults to `False`): keep the BatchNorm statistics of trainable stages fixed too.
    """
    trainable = trainable | {stage_map.head.name}
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    # Under peft only adapters (and the head's trainable copy) follow the schedule; base weights stay frozen.
    tunable = tunable_parameter_names(model)
    for stage in stage_map.stages:
        frozen = stage.name not in trainable
        for name in stage.param_names:
            params[name].requires_grad_(not frozen and (tunable is None or name in tunable))
        for module_name in stage.module_names:
            module = modules[module_name]
            if not getattr(module, _HOOKED_FLAG, False):
                module.register_forward_pre_hook(_eval_if_frozen)
                setattr(module, _HOOKED_FLAG, True)
            setattr(module, _FROZEN_FLAG, frozen)
            setattr(module, _TRAIN_BN_FLAG, train_bn)
            setattr(module, _BN_STATS_FIXED_FLAG, fix_bn_stats)


def trainable_stage_names(model: torch.nn.Module, stage_map: StageMap) -> list[str]:
    """Stages with at least one parameter that requires a gradient, input to output."""
    params = dict(model.named_parameters())
    return [s.name for s in stage_map.stages if any(params[n].requires_grad for n in s.param_names)]


class StageUnfreezeCallback(TrainerCallback, ExportableState):
    """Applies a freezing strategy and unfreezes stages, top first, on an epoch schedule or on a plateau.

    Args:
        strategy (`str`): linear_probe, head_then_unfreeze, top_k or full.
        head_epochs (`int`): epochs of head-only training before the first unfreeze (head_then_unfreeze).
        unfreeze_every (`int`): epochs between unfreeze steps on the epoch schedule.
        stages_per_unfreeze (`int`): stages unfrozen per step.
        unfreeze_on_plateau (`bool`): unfreeze when `metric` stalls for `plateau_patience` epochs instead.
        plateau_patience (`int`): evaluations without improvement that make a plateau.
        top_k (`int`): stages trained by the top_k strategy.
        unfreeze_warmup_epochs (`float`): LR ramp of a newly unfrozen stage, in epochs.
        train_bn (`bool`): BatchNorm of frozen stages keeps updating its statistics.
        fix_bn_stats (`bool`): BatchNorm of trainable stages normalises with its running statistics (eval mode).
        metric (`str`): the validation metric watched for plateaus.
        train_stages (`str`, *optional*): surgical fine-tuning (`--train-stages`): only these backbone stages (names or
            indices) are units, so strategy `full` trains exactly them (and the head) for the whole run.
    """

    def __init__(
        self,
        strategy: str = "head_then_unfreeze",
        head_epochs: int = 1,
        unfreeze_every: int = 1,
        stages_per_unfreeze: int = 1,
        unfreeze_on_plateau: bool = False,
        plateau_patience: int = 1,
        top_k: int = 2,
        unfreeze_warmup_epochs: float = 0.5,
        train_bn: bool = False,
        metric: str = "eval_macro_f1",
        fix_bn_stats: bool = False,
        train_stages: str | None = None,
    ) -> None:
        self.strategy = strategy
        self.train_stages = train_stages
        self.head_epochs = head_epochs
        self.unfreeze_every = unfreeze_every
        self.stages_per_unfreeze = stages_per_unfreeze
        self.unfreeze_on_plateau = unfreeze_on_plateau
        self.plateau_patience = plateau_patience
        self.top_k = top_k
        self.unfreeze_warmup_epochs = unfreeze_warmup_epochs
        self.train_bn = train_bn
        self.fix_bn_stats = fix_bn_stats
        self.metric = metric
        # State that must survive a resume (saved through ExportableState).
        self.num_unfrozen: int | None = None  # backbone units trainable, counted from the top
        self.events: list[dict] = []
        self.best_metric: float | None = None
        self.evals_without_improvement = 0
        self.plateau_pending = False
        # The run's stage map, handed over by FinetuneTrainer; discovered from the model under a plain Trainer.
        self.stage_map: StageMap | None = None
        self._units: list[list[str]] = []

    @classmethod
    def from_args(cls, finetune_args: FinetuneArguments, metric: str = "eval_macro_f1") -> "StageUnfreezeCallback":
        """Builds the callback from the recipe flags."""
        return cls(
            strategy=finetune_args.strategy,
            head_epochs=finetune_args.head_epochs,
            unfreeze_every=finetune_args.unfreeze_every,
            stages_per_unfreeze=finetune_args.stages_per_unfreeze,
            unfreeze_on_plateau=finetune_args.unfreeze_on_plateau,
            plateau_patience=finetune_args.plateau_patience,
            top_k=finetune_args.top_k,
            unfreeze_warmup_epochs=finetune_args.unfreeze_warmup_epochs,
            train_bn=finetune_args.train_bn,
            metric=metric,
            fix_bn_stats=bool(finetune_args.fix_bn_stats),
            train_stages=finetune_args.train_stages,
        )

    def state(self) -> dict:
        return {
            "args": {
                "strategy": self.strategy,
                "head_epochs": self.head_epochs,
                "unfreeze_every": self.unfreeze_every,
                "stages_per_unfreeze": self.stages_per_unfreeze,
                "unfreeze_on_plateau": self.unfreeze_on_plateau,
                "plateau_patience": self.plateau_patience,
                "top_k": self.top_k,
                "unfreeze_warmup_epochs": self.unfreeze_warmup_epochs,
                "train_bn": self.train_bn,
                "fix_bn_stats": self.fix_bn_stats,
                "metric": self.metric,
                "train_stages": self.train_stages,
            },
            "attributes": {
                "num_unfrozen": self.num_unfrozen,
                "events": self.events,
                "best_metric": self.best_metric,
                "evals_without_improvement": self.evals_without_improvement,
                "plateau_pending": self.plateau_pending,
            },
        }

    # ---- the schedule -------------------------------------------------------------------

    def _initial_units(self) -> int:
        total = len(self._units)
        return {"linear_probe": 0, "head_then_unfreeze": 0, "top_k": min(self.top_k, total), "full": total}[self.strategy]

    def _target_units(self, epoch: int) -> int:
        """Units that should be trainable during `epoch` (0-based)."""
        if self.strategy != "head_then_unfreeze":
            return self.num_unfrozen
        if self.unfreeze_on_plateau:
            if epoch >= self.head_epochs and self.plateau_pending:
                return min(len(self._units), self.num_unfrozen + self.stages_per_unfreeze)
            return self.num_unfrozen
        if epoch < self.head_epochs:
            return 0
        steps_done = (epoch - self.head_epochs) // self.unfreeze_every + 1
        return min(len(self._units), steps_done * self.stages_per_unfreeze)

    def trainable_stages(self) -> set[str]:
        """Names of the backbone stages currently trainable."""
        return {name for unit in self._units[: self.num_unfrozen or 0] for name in unit}

    def _apply(self, model: torch.nn.Module, optimizer: Any, step: int, ramp_steps: int) -> None:
        set_trainable_stages(
            model, self.stage_map, self.trainable_stages(), train_bn=self.train_bn, fix_bn_stats=self.fix_bn_stats
        )
        trainable = self.trainable_stages() | {self.stage_map.head.name}
        if optimizer is None:
            return
        for group in optimizer.param_groups:
            if group.get("stage") in trainable and group.get("trainable_since") is None:
                group["trainable_since"] = step
                group["ramp_steps"] = ramp_steps

    # ---- Trainer events -----------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.stage_map = self.stage_map or split_stages(model)
        self._units = unfreeze_units(self.stage_map)
        if self.train_stages:  # surgical: the listed stages are the only units, each on its own, top first
            chosen = resolve_stages(self.stage_map, self.train_stages, "--train-stages", type(model).__name__)
            self._units = [[name] for name in reversed(chosen)]
        if self.num_unfrozen is None:
            self.num_unfrozen = self._initial_units()
            self.events.append(
                {"epoch": 0, "step": state.global_step, "trainable": sorted(self.trainable_stages()), "reason": "start"}
            )
        # Fresh start: the initial stages train from step 0 without a ramp (the global warmup covers them).
        # Resume: the optimizer state already carries every group's gate; this only restores requires_grad.
        self._apply(model, optimizer, state.global_step, ramp_steps=0)
        logger.info(
            "Freezing strategy %s: %d of %d backbone stages trainable at start (%s)",
            self.strategy, len(self.trainable_stages()), len(self.stage_map.backbone),
            ", ".join(sorted(self.trainable_stages())) or "head only",
        )

    def on_epoch_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        epoch = int(math.floor(state.epoch + 1e-6))
        target = self._target_units(epoch)
        if target <= self.num_unfrozen:
            return
        newly = [name for unit in self._units[self.num_unfrozen : target] for name in unit]
        self.num_unfrozen = target
        self.plateau_pending = False
        self.evals_without_improvement = 0
        steps_per_epoch = state.max_steps / max(state.num_train_epochs, 1)
        ramp = math.ceil(self.unfreeze_warmup_epochs * steps_per_epoch)
        self._apply(model, optimizer, state.global_step, ramp_steps=ramp)
        if lr_scheduler is not None:
            refresh_learning_rates(lr_scheduler)
        reason = "plateau" if self.unfreeze_on_plateau else "schedule"
        self.events.append(
            {"epoch": epoch, "step": state.global_step, "unfrozen": newly, "trainable": sorted(self.trainable_stages()), "reason": reason}
        )
        logger.info("Epoch %d: unfroze %s (%s); LR ramps up over %d steps", epoch, ", ".join(newly), reason, ramp)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or self.metric not in metrics:
            return
        value = metrics[self.metric]
        if self.best_metric is None or value > self.best_metric:
            self.best_metric = value
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
            if self.evals_without_improvement >= self.plateau_patience:
                self.plateau_pending = True

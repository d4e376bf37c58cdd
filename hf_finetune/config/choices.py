"""The values a recipe field may take, and the fixed recipe that applies where nothing decided a field."""

from __future__ import annotations

import copy
from typing import TypeVar

STRATEGIES = ("linear_probe", "head_then_unfreeze", "top_k", "full")
AUTO = "auto"
AUGMENTATIONS = ("none", "light", "medium", "strong")
PEFT_METHODS = ("none", "lora")
# What an evaluation reports (`evaluation.compute_metrics` plus the loss): the metrics a run can select on.
VALIDATION_METRICS = ("macro_f1", "accuracy", "loss")
HEAD_INITS = ("probe", "random")
MIXUP_MODES = ("off", "on", "auto")
CLASS_BALANCE = ("none", "weighted_loss", "sampler")
OPTIMIZERS = ("adamw", "radam", "sgd")
LR_SCHEDULES = ("trainer", "plateau", "one_cycle", "cyclic")

# A field left at None is decided by the recipe advisor (`advisor.py`) before training. When nothing decides it
# (a trainer assembled by hand from the Python API), these values apply: the fixed recipe hf_finetune had before the
# advisor existed.
FALLBACKS: dict[str, object] = {
    "strategy": "head_then_unfreeze",
    "layer_decay": 0.7,
    "head_epochs": 1,
    "top_k": 2,
    "stages_per_unfreeze": 1,
    "head_init": "random",
    "head_dropout": 0.0,
    "fix_bn_stats": False,
    "mixup": "off",
    "class_balance": "none",
    "augmentation": "light",
    "num_train_epochs": 10.0,
    "label_smoothing_factor": 0.1,
    "learning_rate": 3e-4,
    "head_lr_multiplier": 10.0,
}

ADVISOR_HELP = "default: chosen by the recipe advisor (see `run_config.json` -> recipe)"

Arguments = TypeVar("Arguments")


def is_undecided(name: str, value: object) -> bool:
    """Whether a recipe field still awaits a decision: None, or `"auto"` for the strategy."""
    return value is None or (name == "strategy" and value == AUTO)


def with_fallbacks(arguments: Arguments) -> tuple[Arguments, list[str]]:
    """`arguments` with every undecided field set to its `FALLBACKS` value, and the names of those fields.

    The object passed in is never changed: when a field is filled, a shallow copy is returned.
    """
    filled = [name for name, value in FALLBACKS.items() if is_undecided(name, getattr(arguments, name, "absent"))]
    if not filled:
        return arguments, []
    resolved = copy.copy(arguments)
    for name in filled:
        setattr(resolved, name, FALLBACKS[name])  # the copy is ours: the caller's object keeps its None
    return resolved, filled

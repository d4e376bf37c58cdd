"""TODO docstring."""

from __future__ import annotations

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


_ADVISOR = "default: chosen by the recipe advisor (see `run_config.json` -> recipe)"


def fill_fallbacks(*args: object) -> list[str]:
    """Sets every undecided field (None, or strategy "auto") of the given argument objects to `FALLBACKS`.

    Returns the names of the fields that were filled.
    """
    filled = []
    for obj in args:
        for name, value in FALLBACKS.items():
            current = getattr(obj, name, "absent")
            if current is None or (name == "strategy" and current == AUTO):
                setattr(obj, name, value)
                filled.append(name)
    return filled

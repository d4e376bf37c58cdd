"""LR range test (`python -m hf_finetune lr-find ...`, or `--lr-find` in a training run).

The learning rate of every trainable optimizer group grows exponentially, step by step, from `start_lr` to
`end_lr` (measured as the top backbone stage's LR, i.e. `--learning-rate`; all groups are scaled together, so
the layer-wise decay ratios and the head's multiplier are kept) while the training loss is recorded. The sweep
stops early when the loss diverges. The suggestion is the point of steepest descent of the smoothed loss
(fastai's "steep" rule) before its minimum. The model and its BatchNorm statistics are restored afterwards and the
optimizer is discarded, so training starts from the same weights it would have without the sweep.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hf_finetune.config.files import LR_FIND_JSON, LR_FIND_PLOT
from hf_finetune.training.callbacks.freezing import StageUnfreezeCallback, set_trainable_stages, unfreeze_units

logger = logging.getLogger(__name__)

# The sweep stops when the smoothed loss exceeds this multiple of its minimum.
DIVERGENCE_FACTOR = 4.0
# Exponential smoothing of the recorded loss (fastai's beta).
SMOOTHING = 0.9


@dataclass
class LRFindResult:
    """A finished sweep: LR and (raw, smoothed) loss per step, and the suggested `--learning-rate`."""

    learning_rates: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    steepest_index: int
    minimum_index: int
    stopped_early: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """Bias-corrected exponential moving average."""
    out, average = [], 0.0
    for i, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta**i))
    return out


def suggest_learning_rate(learning_rates: list[float], losses: list[float], beta: float = SMOOTHING) -> tuple[float, int, int, list[float]]:
    """Steepest descent of the smoothed loss against log10(LR), searched before the smoothed minimum.

    Returns:
        `(suggestion, steepest_index, minimum_index, smoothed)`.
    """
    if len(learning_rates) != len(losses) or len(losses) < 3:
        raise ValueError(f"The LR range test needs at least 3 (lr, loss) points, got {len(losses)}.")
    smoothed = smooth(losses, beta)
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    minimum = min(finite, key=lambda i: smoothed[i])
    log_lr = np.log10(np.asarray(learning_rates, dtype=np.float64))
    values = np.asarray(smoothed, dtype=np.float64)
    end = max(minimum, 2)
    slopes = np.gradient(values[: end + 1], log_lr[: end + 1])
    # Skip the first points: the EMA is still warming up there.
    skip = min(len(slopes) - 1, max(1, (end + 1) // 10))
    steepest = skip + int(np.argmin(slopes[skip:]))
    return float(learning_rates[steepest]), steepest, minimum, smoothed


def _trainable_at_start(trainer: Any) -> set[str]:
    """Backbone stages trainable in the first training epoch under the run's freezing strategy."""
    callback = StageUnfreezeCallback.from_args(trainer.finetune_args)
    callback._stage_map = trainer.stage_map
    callback._units = unfreeze_units(trainer.stage_map)
    callback.num_unfrozen = callback._initial_units()
    callback.num_unfrozen = max(callback.num_unfrozen, callback._target_units(0))
    return callback.trainable_stages()


def lr_range_test(
    trainer: Any,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    num_steps: int | None = None,
) -> LRFindResult:
    """Sweeps the LR on `trainer`'s model and training data, then restores the model.

    Args:
        trainer (`FinetuneTrainer`): a trainer built by `build_trainer` (not yet trained).
        start_lr, end_lr (`float`): sweep range of the top backbone stage's LR.
        num_steps (`int`, *optional*): steps of the sweep (default: 3 epochs' worth, between 30 and 300).

    Returns:
        `LRFindResult`.
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"The LR range test needs 0 < start_lr < end_lr, got {start_lr} and {end_lr}.")
    model = trainer.model
    dataloader = trainer.get_train_dataloader()
    steps_per_epoch = max(1, len(dataloader))
    num_steps = num_steps or int(min(300, max(30, 3 * steps_per_epoch)))
    saved_state = copy.deepcopy(model.state_dict())
    saved_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    saved_optimizer, saved_mixer = trainer.optimizer, trainer.mixer
    trainer.optimizer = None
    trainer.mixer = None  # plain batches: the sweep measures the loss the LR has to bring down
    try:
        set_trainable_stages(
            model, trainer.stage_map, _trainable_at_start(trainer),
            train_bn=trainer.finetune_args.train_bn, fix_bn_stats=bool(trainer.finetune_args.fix_bn_stats),
        )
        optimizer = trainer.create_optimizer()
        base = trainer.args.learning_rate
        initial = [group["lr"] / base for group in optimizer.param_groups]  # each group's ratio to the top stage
        growth = (end_lr / start_lr) ** (1.0 / max(1, num_steps - 1))
        lrs, losses = [], []
        best = math.inf
        stopped = False
        model.train()
        batches = iter(dataloader)
        for step in range(num_steps):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(dataloader)
                batch = next(batches)
            lr = start_lr * growth**step
            for group, ratio in zip(optimizer.param_groups, initial):
                group["lr"] = lr * ratio
            batch = trainer._prepare_inputs(batch)
            loss = trainer.compute_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            lrs.append(lr)
            losses.append(value)
            current = smooth(losses)[-1]
            best = min(best, current)
            if not math.isfinite(value) or (step > 5 and current > DIVERGENCE_FACTOR * best):
                stopped = True
                break
    finally:
        model.load_state_dict(saved_state)
        for name, param in model.named_parameters():
            param.requires_grad_(saved_grad[name])
        model.zero_grad(set_to_none=True)
        trainer.optimizer, trainer.mixer = saved_optimizer, saved_mixer
    suggestion, steepest, minimum, smoothed = suggest_learning_rate(lrs, losses)
    logger.info(
        "LR range test: %d steps from %.1e to %.1e; suggested --learning-rate %.2e (steepest descent; minimum at %.1e)",
        len(lrs), lrs[0], lrs[-1], suggestion, lrs[minimum],
    )
    return LRFindResult(lrs, losses, smoothed, suggestion, steepest, minimum, stopped)


def save_lr_find(result: LRFindResult, output_dir: str) -> tuple[str, str]:
    """Writes `lr_find.json` and `lr_find.png` (loss vs LR, log scale, suggestion marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, LR_FIND_JSON)
    with open(json_path, "w") as f:
        json.dump(result.to_dict(), f, indent=2)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.learning_rates, result.losses, alpha=0.3, label="loss")
    ax.plot(result.learning_rates, result.smoothed, label="smoothed loss")
    ax.scatter([result.suggestion], [result.smoothed[result.steepest_index]], color="red", zorder=3,
               label=f"suggestion {result.suggestion:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (top backbone stage)")
    ax.set_ylabel("training loss")
    top = max(result.smoothed[: result.minimum_index + 1] or result.smoothed)
    ax.set_ylim(top=top * 1.5 if math.isfinite(top) else None)
    ax.legend()
    fig.tight_layout()
    plot_path = os.path.join(output_dir, LR_FIND_PLOT)
    fig.savefig(plot_path, dpi=120)
    plt.close(fig)
    return json_path, plot_path

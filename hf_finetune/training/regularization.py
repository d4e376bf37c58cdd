"""Loss-side regularisation: the classification loss (hard or soft targets, label smoothing, class weights), class
weights for imbalance, a class-balanced sampler, head dropout, and L2-SP (pull toward the pretrained weights).

`FinetuneTrainer.compute_loss` assembles them; each piece is a small function that tests can call directly.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Iterable

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

# Label smoothing used for --noisy-labels (unless --label-smoothing-factor is given).
NOISY_LABEL_SMOOTHING = 0.2
# Largest / smallest class count from which the advisor treats the data as imbalanced.
IMBALANCE_RATIO_THRESHOLD = 3.0


def class_counts(labels: Iterable[int], num_classes: int) -> list[int]:
    """Images per class id `0 .. num_classes-1`."""
    counter = Counter(int(label) for label in labels)
    return [counter.get(i, 0) for i in range(num_classes)]


def imbalance_ratio(counts: list[int]) -> float:
    """Largest class count over the smallest non-empty one (1.0 = balanced)."""
    present = [c for c in counts if c > 0]
    return max(present) / min(present) if present else 1.0


def inverse_frequency_weights(counts: list[int]) -> torch.Tensor:
    """Per-class loss weights `N / (K * n_k)` (sklearn's "balanced"): a balanced dataset gets all ones.

    Classes without examples get weight 0 (they contribute nothing anyway).
    """
    total, k = sum(counts), len(counts)
    return torch.tensor([total / (k * c) if c > 0 else 0.0 for c in counts], dtype=torch.float32)


def classification_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy with hard (`[B]` long) or soft (`[B, K]` float, from mixup/CutMix) targets.

    Args:
        logits (`torch.Tensor`): `[B, K]`.
        targets (`torch.Tensor`): class ids or class probabilities.
        label_smoothing (`float`, defaults to 0): mixes each target with the uniform distribution.
        class_weights (`torch.Tensor`, *optional*): `[K]` per-class weights.
    """
    weight = class_weights.to(logits) if class_weights is not None else None
    if targets.dtype.is_floating_point:
        targets = targets.to(logits)
    return F.cross_entropy(logits.float(), targets, weight=None if weight is None else weight.float(), label_smoothing=label_smoothing)


def balanced_sample_weights(labels: Iterable[int]) -> list[float]:
    """Per-example weights that make every class equally likely under `WeightedRandomSampler`."""
    labels = [int(label) for label in labels]
    counter = Counter(labels)
    return [1.0 / counter[label] for label in labels]


def add_head_dropout(head_layers: list[torch.nn.Module], p: float) -> list[torch.utils.hooks.RemovableHandle]:
    """Dropout on the inputs of the head's linear layer(s) in training mode, as forward pre-hooks.

    A hook rather than a new module: the saved model's architecture (and its reload through the Auto classes) is
    unchanged, and dropout is inactive at evaluation anyway.
    """
    if p <= 0:
        return []

    def drop(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (F.dropout(inputs[0], p=p, training=module.training), *inputs[1:])

    return [layer.register_forward_pre_hook(drop) for layer in head_layers]


class L2SP:
    """L2-SP: `alpha / 2 * sum ||w - w0||^2` over the given backbone parameters (Li et al., 2018).

    The pretrained copy `w0` is stored once, at construction, detached (on the parameters' device). Parameters that
    do not require a gradient at the time of the call are skipped, so frozen stages cost nothing.

    Args:
        named_parameters (`Iterable[tuple[str, torch.nn.Parameter]]`): the backbone parameters to anchor.
        alpha (`float`): strength.
    """

    def __init__(self, named_parameters: Iterable[tuple[str, torch.nn.Parameter]], alpha: float) -> None:
        self.alpha = alpha
        self.params = dict(named_parameters)
        self.anchor = {name: p.detach().clone() for name, p in self.params.items()}

    def penalty(self) -> torch.Tensor:
        total = None
        for name, param in self.params.items():
            if not param.requires_grad:
                continue
            term = (param - self.anchor[name]).pow(2).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.alpha * total

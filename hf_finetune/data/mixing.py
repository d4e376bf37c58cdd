"""Batch-level mixup / CutMix: `BatchMixer` applies torchvision's `MixUp` or `CutMix` (one of them per batch, at
random) to a collated batch and returns soft targets.

It is on from the start with `--mixup on`; with `--mixup auto` the gap monitor (`training.callbacks.monitor`) switches
it on when train macro-F1 runs ahead of validation. `FinetuneTrainer.compute_loss` passes every training batch through it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)


class BatchMixer:
    """Mixup / CutMix on a batch, switchable at run time (the gap monitor flips `enabled`).

    Args:
        num_classes (`int`): number of classes (soft targets have this width).
        mixup_alpha (`float`, defaults to 0.2): Beta parameter of mixup; 0 disables mixup.
        cutmix_alpha (`float`, defaults to 1.0): Beta parameter of CutMix; 0 disables CutMix.
        enabled (`bool`, defaults to `False`): whether batches are mixed now.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.2, cutmix_alpha: float = 1.0, enabled: bool = False) -> None:
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.enabled = enabled
        self._transform = None

    @property
    def available(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def _build(self) -> Any:
        from torchvision.transforms import v2

        choices = []
        if self.mixup_alpha > 0:
            choices.append(v2.MixUp(alpha=self.mixup_alpha, num_classes=self.num_classes))
        if self.cutmix_alpha > 0:
            choices.append(v2.CutMix(alpha=self.cutmix_alpha, num_classes=self.num_classes))
        return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)

    def __call__(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns `(mixed pixel values, soft targets [batch, num_classes])`, or the inputs unchanged when off."""
        if not (self.enabled and self.available) or pixel_values.shape[0] < 2:
            return pixel_values, labels
        if self._transform is None:
            self._transform = self._build()
        return self._transform(pixel_values, labels)

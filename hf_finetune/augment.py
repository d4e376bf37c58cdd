"""Label-safe training augmentation presets and batch-level mixup / CutMix.

Presets (torchvision v2), all at the checkpoint's own resolution and normalisation:
    none    resize only
    light   random resized crop (35-100% of the area) + horizontal flip
    medium  random resized crop (25-100%) + flip + colour jitter + TrivialAugmentWide
    strong  random resized crop (8-100%) + flip + colour jitter + RandAugment(2 ops, magnitude 9) + random erasing

Every operation keeps the label valid for classification (no crops so small they routinely lose the object at the
"light" level; flips only horizontal). `BatchMixer` applies torchvision's `MixUp` or `CutMix` (one of them per
batch, at random) to a collated batch and returns soft targets; `FinetuneTrainer.compute_loss` uses it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)


# Area fraction range of the random-resized crop per preset.
CROP_SCALES = {"light": (0.35, 1.0), "medium": (0.25, 1.0), "strong": (0.08, 1.0)}


def min_crop_scale(strength: str) -> float:
    """Smallest crop area fraction of a preset (1.0 for `none`): how far training images may be pre-downscaled."""
    return CROP_SCALES.get(strength, (1.0, 1.0))[0]


def augmentation_ops(size: tuple[int, int], interpolation: Any, strength: str) -> tuple[list[Any], list[Any]]:
    """The preset's operations: `(on the uint8 image, on the normalised float tensor)`.

    Args:
        size (`tuple[int, int]`): output (height, width).
        interpolation (`torchvision.transforms.InterpolationMode`): the checkpoint's resize interpolation.
        strength (`str`): none, light, medium or strong.
    """
    from torchvision.transforms import InterpolationMode, v2

    # The auto-augment policies run on tensors, where torchvision supports nearest and bilinear only.
    policy_interpolation = InterpolationMode.BILINEAR
    if strength == "none":
        return [v2.Resize(size, interpolation=interpolation, antialias=True)], []
    scale = CROP_SCALES.get(strength)
    if scale is None:
        raise ValueError(f"`--augmentation` must be one of none, light, medium, strong; got {strength!r}.")
    ops: list[Any] = [
        v2.RandomResizedCrop(size, scale=scale, interpolation=interpolation, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    after: list[Any] = []
    if strength == "medium":
        ops += [v2.ColorJitter(0.2, 0.2, 0.2, 0.02), v2.TrivialAugmentWide(interpolation=policy_interpolation)]
    elif strength == "strong":
        ops += [v2.ColorJitter(0.4, 0.4, 0.4, 0.05), v2.RandAugment(num_ops=2, magnitude=9, interpolation=policy_interpolation)]
        after.append(v2.RandomErasing(p=0.25))
    return ops, after


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

"""Test-time augmentation (`--tta`): each image is classified in a few views (itself, its mirror image, crops
resized back to the input size) and the logits are averaged.

The views work on the preprocessed `pixel_values` (after the image processor), so every model and processor takes
them unchanged, and the identity view alone is exactly the plain forward pass. `dataset_logits` runs a transformed
split (`data.transforms.attach_transforms`) through the model, with or without views.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hf_finetune.data.transforms import collate

logger = logging.getLogger(__name__)

IDENTITY = "identity"
# The identity, its horizontal flip, and three crops of 87.5% of each side (the usual centre-crop ratio) resized back.
TTA_VIEWS: tuple[str, ...] = (IDENTITY, "hflip", "crop_center", "crop_top_left", "crop_bottom_right")
CROP_FRACTION = 0.875


def apply_view(pixels: torch.Tensor, view: str) -> torch.Tensor:
    """One view of a batch of preprocessed images `[B, C, H, W]` (same shape out).

    Args:
        pixels (`torch.Tensor`): the batch.
        view (`str`): one of `TTA_VIEWS`.
    """
    if view == IDENTITY:
        return pixels
    if view == "hflip":
        return torch.flip(pixels, dims=[-1])
    height, width = pixels.shape[-2:]
    crop_h, crop_w = max(1, round(height * CROP_FRACTION)), max(1, round(width * CROP_FRACTION))
    offsets = {
        "crop_center": ((height - crop_h) // 2, (width - crop_w) // 2),
        "crop_top_left": (0, 0),
        "crop_bottom_right": (height - crop_h, width - crop_w),
    }
    if view not in offsets:
        raise ValueError(f"Unknown test-time augmentation view {view!r}: choose from {TTA_VIEWS}.")
    top, left = offsets[view]
    crop = pixels[..., top : top + crop_h, left : left + crop_w]
    return F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)


def tta_logits(model: torch.nn.Module, pixels: torch.Tensor, views: Sequence[str] = TTA_VIEWS) -> torch.Tensor:
    """The mean of the model's logits over `views` of `pixels` (the model's mode is left as it is)."""
    total = None
    for view in views:
        logits = model(pixel_values=apply_view(pixels, view)).logits
        total = logits if total is None else total + logits
    return total / len(views)


@torch.inference_mode()
def dataset_logits(
    model: torch.nn.Module, dataset, batch_size: int = 32, views: Sequence[str] = (IDENTITY,),
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of a transformed split (`pixel_values`, `labels` examples), in eval mode.

    Args:
        model (`torch.nn.Module`): the classifier.
        dataset: a split with evaluation transforms attached.
        batch_size (`int`, defaults to 32): images per forward pass.
        views (`list[str]`, defaults to the identity alone): TTA views whose logits are averaged.
        device (*optional*): where to run (default: the model's device).

    Returns:
        `(logits [N, C] float32, labels [N] int64)`.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    logits, labels = [], []
    try:
        for batch in loader:
            logits.append(tta_logits(model, batch["pixel_values"].to(device), views).float().cpu())
            labels.append(batch["labels"])
    finally:
        model.train(was_training)
    if not logits:
        return np.zeros((0, model.config.num_labels), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()

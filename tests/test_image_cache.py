"""Decode-once cache: hits skip decoding, the byte budget is respected, downscaling keeps crop resolution."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from hf_finetune.data.transforms import min_crop_scale
from hf_finetune.data.transforms import ToNormalizedTensor
from hf_finetune.data.images import DecodeCache, downscale, open_image, train_min_side


def _jpeg_ref(width: int, height: int) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return {"path": None, "bytes": buffer.getvalue()}


def test_cache_decodes_each_image_once_and_respects_the_budget():
    calls = []

    def make(ref):
        calls.append(ref["path"])
        return torch.zeros(10, dtype=torch.float32)  # 40 bytes

    cache = DecodeCache(make, budget_bytes=100)
    for _ in range(3):
        for name in ("a", "b", "c"):
            cache.get({"path": name, "bytes": None})
    # a and b fit (80 bytes), c never does: decoded on every access.
    assert calls == ["a", "b", "c", "c", "c"]
    assert len(cache) == 2 and cache.used_bytes == 80


def test_jpeg_draft_decode_keeps_at_least_the_requested_short_side():
    ref = _jpeg_ref(2000, 1500)
    min_side = train_min_side((224, 224), min_crop_scale("light"))
    assert min_side == 379  # the smallest crop (35% of the area) still spans >= 224 pixels
    image = downscale(open_image(ref, min_side).convert("RGB"), min_side)
    assert min(image.size) == min_side
    assert abs(image.size[0] / image.size[1] - 2000 / 1500) < 0.01
    assert downscale(image, 1000) is image  # never enlarges


def test_normalised_tensor_matches_torchvision():
    from torchvision.transforms import v2

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 48, 3), dtype=np.uint8))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])(image)
    assert torch.allclose(ToNormalizedTensor(mean, std)(image), expected, atol=1e-5)

"""Open and decode images, convert them to RGB, and decode each one once: an in-memory cache of decoded (and,
where the transform allows, downscaled) images and of finished evaluation tensors, within a byte budget.

`open_image` decodes an undecoded `datasets.Image` value (path or bytes); `to_rgb` turns any PIL mode (grayscale,
palette, alpha, 16-bit) into upright (EXIF orientation applied) 8-bit RGB the way every consumer needs it (training, the image check, the feature pass,
the demo). Small datasets are read every epoch; decoding a 2592x1944 JPEG to train on a 224x224 crop wastes most
of a CPU step. Training images are kept downscaled so that even the smallest random-resized crop still
has at least the model's input resolution (JPEGs are decoded at reduced scale with `draft`). Validation
and test inputs are deterministic, so their final tensors are kept as they are (`DecodeCache`).
"""

from __future__ import annotations

import io
import logging
import math
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

# True bytes (Pillow's padded RGB counted): ~1,700 training images at 320x240 plus ~900 evaluation tensors at 224 px.
# Every image past it is decoded each time, so peak memory stops growing with the dataset at about this much.
DEFAULT_BUDGET_BYTES = 1024**3


# glibc's default mmap threshold: allocations from this size up get their own mapping, returned to the system on free.
_MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)


def keep_heap_compact() -> bool:
    """Fixes glibc's mmap threshold at its 128 KiB default for this process (and the workers it forks).

    glibc raises the threshold to the size of every mapped block it frees (up to 32 MB), so after the first freed
    batch tensor, images (300 KB) and tensors (600 KB) are carved from the heap between long-lived cached images
    and freed chunks are kept: a one-epoch run over 10k images grew to 4.2 GB with a 1 GB cache, 2.1 GB with the
    threshold fixed. A no-op (False) where the C library is not glibc.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


def image_key(ref: dict[str, Any]) -> str:
    """A stable key of an undecoded `datasets.Image` value: its path, or a hash of its bytes."""
    if ref.get("path"):
        return ref["path"]
    return f"bytes:{hash(ref['bytes'])}"


def open_image_header(ref: dict[str, Any]) -> Image.Image:
    """Opens an undecoded `datasets.Image` value without decoding it: size, mode and format come from the header."""
    return Image.open(io.BytesIO(ref["bytes"]) if ref.get("bytes") is not None else ref["path"])


def open_image(ref: dict[str, Any], min_side: int | None = None) -> Image.Image:
    """Decodes an undecoded `datasets.Image` value ({"path", "bytes"}), at reduced JPEG scale when `min_side` allows."""
    image = open_image_header(ref)
    if min_side is not None and image.format == "JPEG":
        # libjpeg decodes at 1/2, 1/4 or 1/8 scale directly, keeping the short side >= min_side.
        image.draft("RGB", (min_side, min_side))
    image.load()
    return image


def downscale(image: Image.Image, min_side: int) -> Image.Image:
    """Shrinks `image` so its shorter side is `min_side` (never enlarges)."""
    short = min(image.size)
    if short <= min_side:
        return image
    scale = min_side / short
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)


def decode_rgb(ref: dict[str, Any], max_side: int | None = None) -> Image.Image:
    """`to_rgb(open_image(ref))`, except that an image whose shorter side exceeds `max_side` is decoded at reduced
    JPEG scale and shrunk to `max_side`: a 24 MP photo then never exists at full size (96 MB) in memory."""
    image = to_rgb(open_image(ref, max_side))
    return image if max_side is None else downscale(image, max_side)


def model_input(item: Image.Image | dict[str, Any], max_side: int | None = None) -> Image.Image:
    """Upright RGB for an image processor, from a decoded image or an undecoded reference (`decode_rgb`), its
    shorter side at most `max_side`."""
    if isinstance(item, dict):
        return decode_rgb(item, max_side)
    image = to_rgb(item)
    return image if max_side is None else downscale(image, max_side)


def undecoded(split: Any) -> Any:
    """A view of a `datasets.Dataset` whose `image` column yields undecoded references ({"path", "bytes"}), with
    no transform: selecting rows of it decodes nothing, so callers decode one image at a time."""
    import datasets

    return split.with_format(None).cast_column("image", datasets.Image(decode=False))


# Bytes per pixel as Pillow stores a mode: 8-bit single-band modes one, 16-bit integer modes two, every other mode
# (RGB and LA included: their pixels are padded to 32 bits) four.
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


def decoded_bytes(image: Image.Image) -> int:
    """Memory a decoded PIL image takes: width x height x the bytes per pixel of its mode as Pillow stores it."""
    return image.width * image.height * _PIXEL_BYTES.get(image.mode, 4)


def train_min_side(crop: tuple[int, int], min_crop_scale: float) -> int:
    """Shorter side that keeps the smallest random-resized crop (area fraction `min_crop_scale`) at full resolution."""
    return math.ceil(max(crop) / math.sqrt(min_crop_scale))


class DecodeCache:
    """Memoises `make(ref)` per image key while the total size stays within `budget_bytes`.

    Sizes are what the values really take (`decoded_bytes`, tensors' element bytes). Entries are never evicted:
    under a shuffled sampler any policy hits about budget / dataset of the time, and a full cache churns nothing.
    In a DataLoader worker the budget is shared: each of the N workers keeps its own cache of budget / N bytes, so
    the processes together stay within it.

    Args:
        make (`Callable`): builds the cached value (a PIL image or a tensor) from an undecoded image reference.
        budget_bytes (`int`): stop adding entries beyond this many bytes (values are still returned, just not kept).
    """

    def __init__(self, make: Callable[[dict[str, Any]], Any], budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.make = make
        self.total_budget_bytes = budget_bytes
        self.used_bytes = 0
        self._store: dict[str, Any] = {}
        self._full_logged = False

    @property
    def budget_bytes(self) -> int:
        """This process's share of the budget (the whole of it outside DataLoader workers)."""
        info = torch.utils.data.get_worker_info()
        return self.total_budget_bytes // (info.num_workers if info is not None else 1)

    @staticmethod
    def _size(value: Any) -> int:
        if isinstance(value, torch.Tensor):
            return value.element_size() * value.nelement()
        return decoded_bytes(value)

    def get(self, ref: dict[str, Any]) -> Any:
        key = image_key(ref)
        value = self._store.get(key)
        if value is None:
            value = self.make(ref)
            size = self._size(value)
            if self.used_bytes + size <= self.budget_bytes:
                self._store[key] = value
                self.used_bytes += size
            elif not self._full_logged:
                logger.info("Image cache full (%.0f MB): further images are decoded every time.", self.used_bytes / 2**20)
                self._full_logged = True
        return value

    def __len__(self) -> int:
        return len(self._store)


# EXIF tag 274: how the camera held the sensor. 1 (or no tag) means the pixels are stored upright.
_ORIENTATION = 274


def upright(image: Image.Image) -> Image.Image:
    """Applies the EXIF orientation (a phone photo taken sideways is stored sideways with a rotate tag).

    `datasets` applies it when it decodes an image, a raw `Image.open` does not: every path (training, evaluation,
    the image check, the feature pass, the demo) goes through `to_rgb`, which calls this, so all of them see the same
    pixels. The transposed image carries no orientation tag any more, so calling this twice is harmless.
    """
    if image.getexif().get(_ORIENTATION, 1) == 1:
        return image  # exif_transpose would copy the image even when there is nothing to do
    return ImageOps.exif_transpose(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts any PIL mode (grayscale, palette, RGBA, CMYK, 16-bit) to 8-bit RGB, upright (EXIF orientation)."""
    image = upright(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit integer images: scale to 8 bits instead of clipping everything to white.
        array = np.asarray(image, dtype=np.float64)
        high = array.max() or 1.0
        image = Image.fromarray(np.round(array * (255.0 / high)).astype("uint8"))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")

"""Writers of the broken and unusual files a real image folder holds."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# Each kind -> (file suffix, whether imagefolder lists it as an image).
BROKEN_KINDS: dict[str, tuple[str, bool]] = {
    "truncated_jpeg": (".jpg", True),
    "truncated_png": (".png", True),
    "zero_byte": (".jpg", True),
    "text_named_png": (".png", True),
    "non_image_file": (".txt", False),
}
# Image modes that must be converted, never rejected.
MODES = ("L", "P", "P_transparent", "RGBA", "LA", "CMYK", "I;16", "1")


def _encoded(size: int, fmt: str, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def write_broken_file(stem: Path, kind: str, size: int = 32, seed: int = 0) -> Path:
    """Writes `stem + suffix` broken the way `kind` says; returns the path."""
    suffix, _ = BROKEN_KINDS[kind]
    path = stem.with_name(stem.name + suffix)
    if kind == "truncated_jpeg":
        data = _encoded(size, "JPEG", seed)
        path.write_bytes(data[: int(len(data) * 0.6)])
    elif kind == "truncated_png":
        data = _encoded(size, "PNG", seed)
        path.write_bytes(data[: int(len(data) * 0.6)])
    elif kind == "zero_byte":
        path.write_bytes(b"")
    elif kind == "text_named_png":
        path.write_text("this is not a PNG\n")
    else:
        path.write_text("notes about this class\n")
    return path


def write_mode_image(stem: Path, mode: str, size: int = 24, seed: int = 0) -> Path:
    """Writes an image stored in PIL `mode` (16-bit grayscale PNG for I;16, CMYK JPEG, ...)."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65535, (size, size), dtype=np.uint16)).save(path := stem.with_suffix(".png"))
    elif mode == "CMYK":
        rgb.convert("CMYK").save(path := stem.with_suffix(".jpg"))
    elif mode == "P_transparent":
        image = rgb.convert("P")
        image.info["transparency"] = 0
        image.save(path := stem.with_suffix(".png"), transparency=0)
    else:
        rgb.convert(mode).save(path := stem.with_suffix(".png"))
    return path

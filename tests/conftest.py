"""Shared fixtures: offline mode, tiny image folders written by the tests, tiny checkpoints."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from tiny_models import save_tiny_model  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# One colour per class plus noise: learnable in a few steps, so "weights changed" tests are meaningful.
_CLASS_COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 220, 40)]


def write_image_folder(
    root: Path, classes: tuple[str, ...] = ("cat", "dog", "fish"), per_class: int = 12, size: int = 40,
    splits: tuple[str, ...] = (), seed: int = 0,
) -> Path:
    """Writes a tiny ImageFolder: root/[split/]class/img_k.png with class-coloured noisy images."""
    rng = np.random.default_rng(seed)
    for split in splits or ("",):
        for index, name in enumerate(classes):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array(_CLASS_COLOURS[index % len(_CLASS_COLOURS)], dtype=np.float64)
            for k in range(per_class):
                noise = rng.normal(0, 40, size=(size, size, 3))
                pixels = np.clip(colour + noise, 0, 255).astype("uint8")
                Image.fromarray(pixels).save(folder / f"img_{k:03d}.png")
    return root


@pytest.fixture(autouse=True, scope="session")
def _feature_cache(tmp_path_factory):
    """Frozen-feature cache in a temp dir, never the user's ~/.cache."""
    os.environ["HF_FINETUNE_FEATURE_CACHE"] = str(tmp_path_factory.mktemp("feature_cache"))


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Three classes x 12 images, no split folders (the tool must make stratified splits)."""
    return write_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory: a saved tiny checkpoint of the given kind, built once per session."""
    cache: dict[str, str] = {}

    def make(kind: str) -> str:
        if kind not in cache:
            cache[kind] = save_tiny_model(kind, tmp_path_factory.mktemp(f"ckpt_{kind}"))
        return cache[kind]

    return make

"""Shared fixtures: offline mode, tiny image folders written by the tests, tiny checkpoints."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the demo tests never call home
# Remote code of truncated test models (trust_remote_code) is copied here, not into ~/.cache/huggingface/modules.
os.environ.setdefault("HF_MODULES_CACHE", __import__("tempfile").mkdtemp(prefix="hf_modules_"))

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from tiny_models import save_tiny_model  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
if not SHARED.is_dir():  # a worktree elsewhere than next to ../shared
    SHARED = Path("/work/shared")

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


# Flags of a quick CLI run on a tiny model (3 epochs: head, then two unfreeze steps).
FAST_RUN_FLAGS = ["--strategy", "head_then_unfreeze", "--baseline", "false", "--num-train-epochs", "3", "--per-device-train-batch-size", "8", "--learning-rate", "5e-3", "--disable-tqdm", "true"]


@pytest.fixture(scope="session")
def finished_run_dir(tmp_path_factory, tiny_checkpoint) -> Path:
    """A finished `python -m hf_finetune` run on a tiny ViT: model, card, plots, reports, examples.

    Shared by the card, hub and demo tests: tests that change files work on a copy (`copy_run`).
    """
    from hf_finetune.cli.main import main

    root = tmp_path_factory.mktemp("finished_run")
    folder = write_image_folder(root / "images", per_class=10)
    out = root / "out"
    argv = ["--model", tiny_checkpoint("vit"), "--dataset", str(folder), "--output-dir", str(out), *FAST_RUN_FLAGS]
    assert main([*argv, "--keep-checkpoints"]) == 0  # the hub tests check that checkpoints are never uploaded
    return out


def copy_run(run_dir: Path, destination: Path) -> Path:
    """A copy of a finished run's output directory (checkpoints included) that a test may modify."""
    import shutil

    shutil.copytree(run_dir, destination)
    return destination

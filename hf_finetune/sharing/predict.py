"""Predictions of a finished run's model on new images: `python -m hf_finetune predict OUTPUT_DIR INPUT...`.

An INPUT is an image file, a folder (searched recursively for image files) or a Hub dataset split written
`NAME:SPLIT` (e.g. `beans:test`). Images are read, converted to RGB and classified in batches with the model's own
saved image processor, the same preprocessing `pipeline("image-classification")` applies, so the top-1 label is
the pipeline's. A file that cannot be read or decoded becomes a row with its error, never an exception.
`--tta` averages the logits over the test-time augmentation views (`evaluation.tta`).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hf_finetune.backbones.loading import load_model_and_processor
from hf_finetune.data.images import open_image, to_rgb
from hf_finetune.evaluation.calibration import softmax
from hf_finetune.evaluation.tta import IDENTITY, TTA_VIEWS, tta_logits

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 5


@dataclass
class Prediction:
    """One input's result: its top-k labels and probabilities, or the error that kept it from being classified."""

    source: str
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass
class ImageInput:
    """An image to classify: where it comes from, and how to open it (errors are caught by the caller)."""

    source: str
    load: Callable[[], Image.Image]


def load_classifier(model_dir: str, device: str | torch.device | None = None) -> tuple[torch.nn.Module, Any]:
    """A finished run's classifier (full, truncated or LoRA-merged) and its image processor, in eval mode.

    A truncated model is rebuilt with hf_finetune's own copy of its class, never with the code stored next to it.
    """
    from transformers import AutoConfig

    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ValueError(
            f"`{model_dir}` has no config.json: pass the --output-dir of a finished hf_finetune run (the saved model)."
        )
    config = AutoConfig.from_pretrained(model_dir)
    model, processor = load_model_and_processor(model_dir, dict(config.id2label), ignore_mismatched_sizes=False)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor


def _image_files(folder: Path) -> list[Path]:
    suffixes = {suffix.lower() for suffix in Image.registered_extensions()}
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in suffixes]
    if len(images) < len(files):
        logger.info("%s: %d file(s) without an image extension skipped.", folder, len(files) - len(images))
    return images


def _open_file(path: str) -> Callable[[], Image.Image]:
    return lambda: open_image({"path": path, "bytes": None})


def _dataset_inputs(spec: str) -> list[ImageInput]:
    """The images of a Hub dataset split `NAME:SPLIT` (the first image column), decoded lazily."""
    import datasets

    name, _, split = spec.rpartition(":")
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:
        raise ValueError(
            f"INPUT {spec!r} is neither a file nor a folder, and the Hub dataset split {name!r} / {split!r} could not be "
            f"loaded ({type(err).__name__}: {err}). Pass image files, folders, or NAME:SPLIT of an existing dataset."
        ) from err
    column = next((key for key, feature in dataset.features.items() if isinstance(feature, datasets.Image)), None)
    if column is None:
        raise ValueError(f"INPUT {spec!r}: the dataset split has no image column (features: {list(dataset.features)}).")
    dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return [ImageInput(f"{spec}[{i}]", lambda i=i: open_image(dataset[i][column])) for i in range(len(dataset))]


def collect_inputs(inputs: Sequence[str]) -> list[ImageInput]:
    """The images named by `inputs`: files, folders (recursively, image extensions only) and `NAME:SPLIT` Hub
    dataset splits. A path that does not exist (and is no `NAME:SPLIT`) becomes an input whose loading fails."""
    found: list[ImageInput] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += [ImageInput(str(p), _open_file(str(p))) for p in _image_files(path)]
        elif path.exists() or ":" not in item:
            found.append(ImageInput(item, _open_file(item)))
        else:
            found += _dataset_inputs(item)
    return found


def _batches(items: Sequence[ImageInput], size: int) -> Iterator[Sequence[ImageInput]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _error_text(err: Exception) -> str:
    return f"{type(err).__name__}: {err}".replace("\n", " ")


@torch.inference_mode()
def _classify(model: torch.nn.Module, processor: Any, images: list[Image.Image], views: Sequence[str]) -> np.ndarray:
    device = next(model.parameters()).device
    pixels = processor(images, return_tensors="pt")["pixel_values"].to(device)
    return softmax(tta_logits(model, pixels, views).float().cpu().numpy())


def predict_images(
    model_dir: str,
    inputs: Sequence[str],
    *,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int = 32,
    tta: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[Prediction]:
    """Classifies every image of `inputs` with a finished run's model.

    Args:
        model_dir (`str`): the --output-dir of a finished run.
        inputs (`list[str]`): image files, folders (recursive) and `NAME:SPLIT` Hub dataset splits.
        top_k (`int`, defaults to 5): labels kept per image (at most the number of classes).
        batch_size (`int`, defaults to 32): images per forward pass.
        tta (`bool`, defaults to `False`): average the logits over the test-time augmentation views.
        device (*optional*): where to run (default: CUDA when available, else the CPU).
        progress (`bool`, defaults to `True`): show a progress bar.

    Returns:
        `list[Prediction]`, one per image in input order; unreadable images carry their `error`.
    """
    from tqdm.auto import tqdm

    if top_k < 1 or batch_size < 1:
        raise ValueError(f"`--top-k` and `--batch-size` must be >= 1, got {top_k} and {batch_size}.")
    model, processor = load_classifier(model_dir, device)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    top_k = min(top_k, len(names))
    views = TTA_VIEWS if tta else (IDENTITY,)
    items = collect_inputs(inputs)
    results: list[Prediction] = []
    with tqdm(total=len(items), disable=not progress, desc="predict", unit="img") as bar:
        for batch in _batches(items, batch_size):
            opened: list[tuple[Prediction, Image.Image]] = []
            for item in batch:
                prediction = Prediction(item.source)
                results.append(prediction)
                try:
                    opened.append((prediction, to_rgb(item.load())))
                except Exception as err:  # noqa: BLE001 - any unreadable file is reported in its row, never raised
                    prediction.error = _error_text(err)
            _fill(model, processor, opened, views, names, top_k)
            bar.update(len(batch))
    failed = sum(p.error is not None for p in results)
    if failed:
        logger.warning("%d of %d input(s) could not be classified; their rows hold the error.", failed, len(results))
    return results


def _fill(model, processor, opened: list[tuple[Prediction, Image.Image]], views, names: list[str], top_k: int) -> None:
    """Classifies the opened images of a batch; when the batch fails, image by image, so one bad image fails alone."""
    if not opened:
        return
    try:
        groups = [(opened, _classify(model, processor, [image for _, image in opened], views))]
    except Exception:  # noqa: BLE001 - isolate the image that broke the batch
        groups = []
        for pair in opened:
            try:
                groups.append(([pair], _classify(model, processor, [pair[1]], views)))
            except Exception as err:  # noqa: BLE001 - reported in the image's row
                pair[0].error = _error_text(err)
    for pairs, probabilities in groups:
        for (prediction, _), row in zip(pairs, probabilities):
            order = np.argsort(-row, kind="stable")[:top_k]
            prediction.labels = [names[i] for i in order]
            prediction.scores = [float(row[i]) for i in order]


def write_predictions_csv(predictions: Sequence[Prediction], path: str, top_k: int = DEFAULT_TOP_K) -> str:
    """Writes one row per input: `input`, `prediction`, `score`, `label_1`, `score_1`, ... `label_k`, `score_k`,
    `error` (empty for a classified image). Returns `path`."""
    k = max([len(p.labels) for p in predictions] + [0]) or top_k
    header = ["input", "prediction", "score"]
    for i in range(1, k + 1):
        header += [f"label_{i}", f"score_{i}"]
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*header, "error"])
        for p in predictions:
            ranked = [value for pair in zip(p.labels, (f"{s:.6f}" for s in p.scores)) for value in pair]
            ranked += [""] * (2 * k - len(ranked))
            top = [p.labels[0], f"{p.scores[0]:.6f}"] if p.labels else ["", ""]
            writer.writerow([p.source, *top, *ranked, p.error or ""])
    return path

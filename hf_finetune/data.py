"""Data: load an ImageFolder directory or a Hub dataset, make clean stratified splits, and
turn images into model inputs with the checkpoint's own preprocessing.

The test split is never used for any decision; it is evaluated once, at the end.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from PIL import Image

from .arguments import DataArguments

logger = logging.getLogger(__name__)

_VALIDATION_NAMES = ("validation", "valid", "val", "dev")
_TEST_NAMES = ("test", "testing")


@dataclass
class DataSplits:
    """The three splits of one run and how they were made.

    Attributes:
        train, validation, test (`datasets.Dataset`): the splits, each with the columns `image` and `label`.
        labels (`list[str]`): class names; label id i is `labels[i]`.
        provenance (`dict`): which split came from where, recorded in `run_config.json`.
    """

    train: Any
    validation: Any
    test: Any
    labels: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class in each split, keyed by label name."""
        out = {}
        for name in ("train", "validation", "test"):
            split = getattr(self, name)
            counter = Counter(split["label"])
            out[name] = {self.labels[i]: counter.get(i, 0) for i in range(len(self.labels))}
        return out


def _load_raw(data_args: DataArguments):
    import datasets

    source = data_args.dataset
    if os.path.isdir(source):
        return datasets.load_dataset("imagefolder", data_dir=source)
    if os.path.exists(source):
        raise ValueError(f"`--dataset` {source!r} is a file; pass an ImageFolder directory or a Hub dataset id.")
    try:
        return datasets.load_dataset(source, data_args.dataset_config)
    except (FileNotFoundError, ConnectionError, OSError) as err:
        raise ValueError(
            f"`--dataset` {source!r} is neither a local directory nor a Hub dataset that could be loaded ({err}). "
            "Pass a local ImageFolder directory (class sub-folders of images), or a Hub dataset id while online "
            "(or cached, with HF_HUB_OFFLINE=1)."
        ) from err


def _pick_column(features: Any, wanted: str | None, kind: str, flag: str) -> str:
    import datasets

    feature_type = datasets.Image if kind == "image" else datasets.ClassLabel
    if wanted is not None:
        if wanted not in features:
            raise ValueError(f"`--{flag}` {wanted!r} is not a column of the dataset; columns are {list(features)}.")
        return wanted
    matches = [name for name, feature in features.items() if isinstance(feature, feature_type)]
    if len(matches) == 1:
        return matches[0]
    what = "an Image" if kind == "image" else "a ClassLabel"
    raise ValueError(
        f"Could not tell which column holds the {kind}s: the dataset has {len(matches)} columns of {what} type "
        f"({matches}) among {list(features)}. Name it with `--{flag}`."
    )


def _find_split(raw: Any, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in raw), None)


def _stratified_split(dataset: Any, fraction: float, seed: int, what: str) -> tuple[Any, Any]:
    """Splits off `fraction` of `dataset`, stratified by label. Returns (rest, held_out)."""
    counts = Counter(dataset["label"])
    n_classes = len(counts)
    n_held = round(len(dataset) * fraction)
    if n_held < n_classes or len(dataset) - n_held < n_classes:
        raise ValueError(
            f"Cannot hold out a stratified {what} split: {len(dataset)} images over {n_classes} classes give "
            f"{n_held} held-out images, fewer than one per class. Add images, raise `--{what}-fraction`, or provide "
            f"a {what} split (a `{what if what != 'validation' else 'val'}/` folder)."
        )
    thin = sorted(label for label, count in counts.items() if count < 2)
    if thin:
        raise ValueError(
            f"Cannot make a stratified {what} split: class ids {thin} have a single image. Every class needs at least "
            f"2 images (better: 10+), or provide a separate {what} split."
        )
    parts = dataset.train_test_split(test_size=n_held, stratify_by_column="label", seed=seed)
    return parts["train"], parts["test"]


def load_splits(data_args: DataArguments, seed: int) -> DataSplits:
    """Loads `--dataset` and returns train/validation/test splits with columns `image` and `label`.

    Uses the dataset's own splits where present. Otherwise, stratified splits made with `seed`: with train +
    validation only, the given validation split becomes the untouched test split and a new validation split is
    carved from train; with train only, both are carved from train.

    Args:
        data_args (`DataArguments`): the data flags.
        seed (`int`): seed of the stratified splits.
    """
    import datasets

    raw = _load_raw(data_args)
    if isinstance(raw, datasets.Dataset):
        raw = datasets.DatasetDict({"train": raw})
    if "train" not in raw:
        raise ValueError(f"The dataset {data_args.dataset!r} has no 'train' split; it has {list(raw)}.")

    features = raw["train"].features
    if os.path.isdir(data_args.dataset) and data_args.label_column is None and not any(
        isinstance(feature, datasets.ClassLabel) for feature in features.values()
    ):
        # imagefolder infers labels from class sub-folders only when there are at least two of them.
        raise ValueError(
            f"The dataset {data_args.dataset!r} has a single class (one class sub-folder, or images directly in the "
            "folder); classification needs at least 2 classes, one sub-folder of images per class."
        )
    image_col = _pick_column(features, data_args.image_column, "image", "image-column")
    label_col = _pick_column(features, data_args.label_column, "label", "label-column")
    labels = list(features[label_col].names)
    if len(labels) < 2:
        raise ValueError(
            f"The dataset {data_args.dataset!r} has a single class ({labels}); classification needs at least 2 "
            "classes (one sub-folder per class)."
        )

    def normalise(split: Any) -> Any:
        split = split.select_columns([image_col, label_col])
        if image_col != "image":
            split = split.rename_column(image_col, "image")
        if label_col != "label":
            split = split.rename_column(label_col, "label")
        return split

    train = normalise(raw["train"])
    val_name, test_name = _find_split(raw, _VALIDATION_NAMES), _find_split(raw, _TEST_NAMES)
    provenance: dict[str, Any] = {"source": data_args.dataset, "image_column": image_col, "label_column": label_col}

    if test_name is not None:
        test = normalise(raw[test_name])
        provenance["test"] = f"dataset split '{test_name}'"
    elif val_name is not None:
        test = normalise(raw[val_name])
        provenance["test"] = f"dataset split '{val_name}' (no test split given; it stays untouched until the end)"
        val_name = None
    else:
        train, test = _stratified_split(train, data_args.test_fraction, seed, "test")
        provenance["test"] = f"stratified {data_args.test_fraction:.0%} of train (seed {seed})"

    if val_name is not None:
        validation = normalise(raw[val_name])
        provenance["validation"] = f"dataset split '{val_name}'"
    else:
        train, validation = _stratified_split(train, data_args.validation_fraction, seed, "validation")
        provenance["validation"] = f"stratified {data_args.validation_fraction:.0%} of train (seed {seed})"
    carved = [name for name in ("validation", "test") if provenance[name].startswith("stratified")]
    provenance["train"] = "dataset split 'train'" + (f" minus the held-out {' and '.join(carved)}" if carved else "")

    splits = DataSplits(train=train, validation=validation, test=test, labels=labels, provenance=provenance)
    provenance["counts"] = splits.counts()
    logger.info(
        "Data: %d train / %d validation / %d test images, %d classes %s",
        len(train), len(validation), len(test), len(labels), labels,
    )
    return splits


@dataclass(frozen=True)
class Preprocessing:
    """What the checkpoint's image processor does, in terms training augmentation can reuse."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str


def resolve_preprocessing(processor: Any) -> Preprocessing:
    """Reads input size, normalisation and interpolation from a checkpoint's image processor (never hard-coded)."""
    data_config = getattr(processor, "data_config", None)  # timm (TimmWrapperImageProcessor)
    if data_config is not None:
        _, height, width = data_config["input_size"]
        return Preprocessing(
            size=(int(height), int(width)),
            mean=tuple(float(v) for v in data_config["mean"]),
            std=tuple(float(v) for v in data_config["std"]),
            interpolation=str(data_config.get("interpolation", "bilinear")),
        )
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = crop or getattr(processor, "size", None)
    size = dict(size.items()) if hasattr(size, "items") else {"shortest_edge": size} if isinstance(size, int) else size
    height = size.get("height") or size.get("shortest_edge")
    width = size.get("width") or size.get("shortest_edge")
    if not height or not width:
        raise ValueError(f"Cannot read the input size from the image processor {type(processor).__name__}: {size}.")
    resample = getattr(processor, "resample", None)
    interpolation = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}.get(
        int(resample) if resample is not None else 2, "bilinear"
    )
    return Preprocessing(
        size=(int(height), int(width)),
        mean=tuple(float(v) for v in processor.image_mean),
        std=tuple(float(v) for v in processor.image_std),
        interpolation=interpolation,
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts any PIL mode (grayscale, palette, RGBA, CMYK, 16-bit) to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit integer images: scale to 8 bits instead of clipping everything to white.
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        high = array.max() or 1.0
        image = Image.fromarray(np.round(array * (255.0 / high)).astype("uint8"))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def build_train_transform(preprocessing: Preprocessing, augmentation: str) -> Callable[[Image.Image], torch.Tensor]:
    """Label-safe training augmentation (a preset of `augment.py`) at the checkpoint's resolution and normalisation."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2

    from .augment import augmentation_ops

    interpolation = InterpolationMode(preprocessing.interpolation)
    on_image, on_tensor = augmentation_ops(preprocessing.size, interpolation, augmentation)
    return v2.Compose(
        [
            v2.ToImage(),
            *on_image,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(preprocessing.mean), std=list(preprocessing.std)),
            *on_tensor,
        ]
    )


def attach_transforms(splits: DataSplits, processor: Any, augmentation: str) -> Preprocessing:
    """Sets on-the-fly transforms: augmentation on train, the checkpoint's own processor on validation/test.

    Evaluation uses the saved image processor itself, so validation/test numbers are what
    `pipeline("image-classification")` will see after export.
    """
    preprocessing = resolve_preprocessing(processor)
    train_transform = build_train_transform(preprocessing, augmentation)

    def train_batch(batch: dict[str, list]) -> dict[str, Any]:
        return {
            "pixel_values": [train_transform(to_rgb(image)) for image in batch["image"]],
            "labels": batch["label"],
        }

    def eval_batch(batch: dict[str, list]) -> dict[str, Any]:
        pixels = processor([to_rgb(image) for image in batch["image"]], return_tensors="pt")["pixel_values"]
        return {"pixel_values": list(pixels), "labels": batch["label"]}

    splits.train.set_transform(train_batch)
    splits.validation.set_transform(eval_batch)
    splits.test.set_transform(eval_batch)
    return preprocessing


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stacks transformed examples into a batch for the model."""
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples], dtype=torch.long),
    }

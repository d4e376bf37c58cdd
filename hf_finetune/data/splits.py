"""Load an ImageFolder directory or a Hub dataset and make clean, stratified train / validation / test splits.

The image and label columns are found (or named by `--image-column` / `--label-column`) and cast to images and one
class label shared by every split; unreadable images are left out (`check.py`) and classes left without an image
dropped. The dataset's own splits are used where present, the missing ones are carved from train, stratified by label.
`DataSplits` holds the three splits, the class names and where each split came from (`run_config.json` records it).
The test split is never used for any decision; it is evaluated once, at the end.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hf_finetune.config.sources import DataArguments
from hf_finetune.data.check import drop_unreadable_images
from hf_finetune.data.layout import FolderLayout, layout_to_datasets, scan_image_folder

logger = logging.getLogger(__name__)

VALIDATION_NAMES = ("validation", "valid", "val", "dev")
TEST_NAMES = ("test", "testing")


@dataclass
class DataSplits:
    """The three splits of one run and how they were made.

    Attributes:
        train, validation, test (`datasets.Dataset`): the splits, each with the columns `image` and `label`.
        labels (`list[str]`): class names; label id i is `labels[i]`.
        provenance (`dict`): which split came from where, recorded in `run_config.json`.
        skipped_files (`list[dict]`): files left out of the run and why (see `image_check`).
        fingerprint (`dict`): per split of the source, what identifies its data (a local folder: image count, bytes
            and a hash of every file's path, size and modification time; a Hub dataset: rows and `datasets`'
            fingerprint). A resumed run compares it with the one it recorded.
    """

    train: Any
    validation: Any
    test: Any
    labels: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)
    skipped_files: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    stream: Any = None  # `--streaming`: the training stream (`data.streaming.TrainStream`); `train` is its sample

    def training_data(self) -> Any:
        """What the Trainer reads: the training stream under `--streaming`, else the train split."""
        return self.stream.examples if self.stream is not None else self.train

    @property
    def id2label(self) -> dict[int, str]:
        """Label id -> class name, as a model config takes it."""
        return dict(enumerate(self.labels))

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class in each split, keyed by label name."""
        out = {}
        for name in ("train", "validation", "test"):
            split = getattr(self, name)
            counter = Counter(split.with_format(None)["label"])  # not through a transform set on the split
            out[name] = {self.labels[i]: counter.get(i, 0) for i in range(len(self.labels))}
        return out


def load_source(data_args: DataArguments, streaming: bool = False) -> Any:
    """`datasets.load_dataset` of a Hub dataset (or, streaming, also a local folder of shards), with errors that
    say how to get the data."""
    import datasets

    source = data_args.dataset
    if os.path.exists(source) and not (streaming and os.path.isdir(source)):
        raise ValueError(f"`--dataset` {source!r} is a file; pass an ImageFolder directory or a Hub dataset id.")
    try:
        return datasets.load_dataset(source, data_args.dataset_config, streaming=streaming)
    except (FileNotFoundError, ConnectionError, OSError) as err:
        if "offline" in str(err).lower() or isinstance(err, ConnectionError):
            raise ValueError(
                f"`--dataset` {source!r} is not a local directory and is not in the datasets cache, and the Hub cannot "
                f"be reached (offline: {err}). Download it once with network access (e.g. `hf download --repo-type "
                f"dataset {source}`), or pass a local ImageFolder directory (one sub-folder of images per class)."
            ) from err
        raise ValueError(
            f"`--dataset` {source!r} is neither a local directory nor a Hub dataset that could be loaded ({err}). "
            "Pass a local ImageFolder directory (class sub-folders of images), or a Hub dataset id while online "
            "(or cached, with HF_HUB_OFFLINE=1)."
        ) from err


def pick_column(features: Any, wanted: str | None, kind: str, flag: str) -> str:
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


def _as_image_column(raw: Any, column: str) -> Any:
    """Casts a column of paths or encoded bytes to `datasets.Image`; refuses anything else."""
    import datasets

    if isinstance(raw["train"].features[column], datasets.Image):
        return raw
    try:
        return raw.cast_column(column, datasets.Image())
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"`--image-column` {column!r} holds {raw['train'].features[column]}, not images: name a column of "
            f"images, image file paths or encoded image bytes ({err})."
        ) from err


def _relabel(raw: Any, column: str, new_ids: dict[Any, int], names: list[str]) -> Any:
    """Rewrites `column` as a `ClassLabel(names)`, value `v` becoming id `new_ids[v]` (the images stay untouched)."""
    import datasets

    features = raw["train"].features.copy()
    features[column] = datasets.ClassLabel(names=names)
    return raw.map(
        lambda values: {column: [new_ids[v] for v in values]},
        input_columns=[column],
        batched=True,
        features=features,
        desc="Relabelling",
    )


def _as_class_label_column(raw: Any, column: str) -> Any:
    """Encodes a column of strings/integers as one `ClassLabel` shared by every split (sorted class names)."""
    import datasets

    if isinstance(raw["train"].features[column], datasets.ClassLabel):
        return raw
    values = sorted({v for split in raw.values() for v in split[column]}, key=lambda v: (str(type(v)), v))
    if not values or not all(isinstance(v, (str, int, bool)) for v in values):
        raise ValueError(
            f"`--label-column` {column!r} holds {raw['train'].features[column]}: name a column of class names or "
            "class ids (strings or integers)."
        )
    return _relabel(raw, column, {v: i for i, v in enumerate(values)}, [str(v) for v in values])


def _drop_empty_classes(raw: Any, column: str) -> tuple[Any, list[str]]:
    """Removes class names that no image carries any more (every file of the class was unreadable)."""
    names = raw["train"].features[column].names
    counts = Counter(label for split in raw.values() for label in split[column])
    empty = [name for i, name in enumerate(names) if counts[i] == 0]
    if not empty:
        return raw, []
    keep = [i for i in range(len(names)) if counts[i] > 0]
    logger.warning(
        "Class(es) %s have no readable image left: they are not classes of this run. Add readable images to train "
        "on them.",
        empty,
    )
    return _relabel(raw, column, {old: new for new, old in enumerate(keep)}, [names[i] for i in keep]), empty


def find_split(raw: Any, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in raw), None)


def _stratified_split(dataset: Any, fraction: float, seed: int, what: str, labels: list[str]) -> tuple[Any, Any, list[str]]:
    """Splits off `fraction` of `dataset`, stratified by label. Returns (rest, held_out, train-only class names).

    A class with a single image cannot be in both parts: it stays on the training side, with a warning.
    """
    import datasets

    label_ids = list(dataset["label"])
    counts = Counter(label_ids)
    thin = sorted(label for label, count in counts.items() if count < 2)
    thin_names = [labels[i] for i in thin]
    if thin:
        logger.warning(
            "Class(es) %s have a single image left for the %s split: kept in train only, so the %s metrics do not "
            "measure them. Add images (at least 3 per class; better 10+), or provide a %s split.",
            thin_names, what, what, what,
        )
        dataset, kept_aside = (
            dataset.select([i for i, label in enumerate(label_ids) if label not in thin]),
            dataset.select([i for i, label in enumerate(label_ids) if label in thin]),
        )
        counts = Counter({label: count for label, count in counts.items() if label not in thin})
    n_classes = len(counts)
    n_held = round(len(dataset) * fraction)
    if n_held < n_classes or len(dataset) - n_held < n_classes:
        raise ValueError(_unsplittable_message(len(dataset), n_classes, n_held, fraction, what))
    parts = dataset.train_test_split(test_size=n_held, stratify_by_column="label", seed=seed)
    rest = datasets.concatenate_datasets([parts["train"], kept_aside]) if thin else parts["train"]
    return rest, parts["test"], thin_names


def _unsplittable_message(n_images: int, n_classes: int, n_held: int, fraction: float, what: str) -> str:
    """Why a stratified split cannot be made, with advice that works: a `--{what}-fraction` only when one in range
    would do, else the images per class it takes."""
    folder = f"`{what if what != 'validation' else 'val'}/` folder"
    needed = math.ceil(100 * n_classes / max(n_images, 1)) / 100
    if needed < 0.5 and n_images - round(n_images * needed) >= n_classes:
        fix = f"Pass `--{what}-fraction {needed}` (or more), add images, or provide a {what} split (a {folder})."
    else:
        fix = (
            f"No `--{what}-fraction` (at most 0.5) can do it: train, validation and test each need an image of every "
            f"class, so add images (at least 3 per class, better 10+; there are {n_images / max(n_classes, 1):.1f} on "
            f"average), provide validation and test splits (`val/` and `test/` folders beside `train/`), or merge "
            "classes."
        )
    return (
        f"Cannot hold out a stratified {what} split: {n_images} images over {n_classes} classes give {n_held} "
        f"held-out images at `--{what}-fraction` {fraction}, fewer than one per class. {fix}"
    )


def _load_dataset_dict(data_args: DataArguments) -> tuple[Any, FolderLayout | None]:
    """`--dataset` as a `datasets.DatasetDict` that has a train split, and the folder listing of a local one."""
    import datasets

    if os.path.isdir(data_args.dataset):
        # Listed here, not by `imagefolder`: it takes splits from tokens in file names and labels from the deepest folder.
        layout = scan_image_folder(data_args.dataset, data_args.label_depth)
        return layout_to_datasets(layout), layout
    raw = load_source(data_args)
    if isinstance(raw, datasets.Dataset):
        raw = datasets.DatasetDict({"train": raw})
    if "train" not in raw:
        raise ValueError(f"The dataset {data_args.dataset!r} has no 'train' split; it has {list(raw)}.")
    return raw, None


def _find_columns(raw: Any, data_args: DataArguments) -> tuple[str, str]:
    """(image column, label column): the ones the flags name, else the single column of each type."""
    features = raw["train"].features
    image_col = pick_column(features, data_args.image_column, "image", "image-column")
    label_col = pick_column(features, data_args.label_column, "label", "label-column")
    return image_col, label_col


def normalise_columns(split: Any, image_col: str, label_col: str) -> Any:
    """The split (a `Dataset` or a streaming `IterableDataset`) with only the columns `image` and `label`."""
    split = split.select_columns([image_col, label_col])
    if image_col != "image":
        split = split.rename_column(image_col, "image")
    if label_col != "label":
        split = split.rename_column(label_col, "label")
    return split


def _three_splits(
    raw: Any, image_col: str, label_col: str, data_args: DataArguments, seed: int, labels: list[str]
) -> tuple[Any, Any, Any, dict[str, str], list[str]]:
    """(train, validation, test, where each came from, train-only class names): the dataset's own test and validation
    splits where present (a lone validation split becomes the test split), else stratified parts of train."""
    train = normalise_columns(raw["train"], image_col, label_col)
    val_name, test_name = find_split(raw, VALIDATION_NAMES), find_split(raw, TEST_NAMES)
    origins: dict[str, str] = {}
    train_only: list[str] = []

    if test_name is not None:
        test = normalise_columns(raw[test_name], image_col, label_col)
        origins["test"] = f"dataset split '{test_name}'"
    elif val_name is not None:
        test = normalise_columns(raw[val_name], image_col, label_col)
        origins["test"] = f"dataset split '{val_name}' (no test split given; it stays untouched until the end)"
        val_name = None
    else:
        train, test, thin = _stratified_split(train, data_args.test_fraction, seed, "test", labels)
        train_only += thin
        origins["test"] = f"stratified {data_args.test_fraction:.0%} of train (seed {seed})"

    if val_name is not None:
        validation = normalise_columns(raw[val_name], image_col, label_col)
        origins["validation"] = f"dataset split '{val_name}'"
    else:
        train, validation, thin = _stratified_split(train, data_args.validation_fraction, seed, "validation", labels)
        train_only += [name for name in thin if name not in train_only]
        origins["validation"] = f"stratified {data_args.validation_fraction:.0%} of train (seed {seed})"
    carved = [name for name in ("validation", "test") if origins[name].startswith("stratified")]
    origins["train"] = "dataset split 'train'" + (f" minus the held-out {' and '.join(carved)}" if carved else "")
    return train, validation, test, origins, train_only


def load_splits(data_args: DataArguments, seed: int) -> DataSplits:
    """Loads `--dataset` and returns train/validation/test splits with columns `image` and `label`.

    Uses the dataset's own splits where present. Otherwise, stratified splits made with `seed`: with train +
    validation only, the given validation split becomes the untouched test split and a new validation split is
    carved from train; with train only, both are carved from train.

    Args:
        data_args (`DataArguments`): the data flags.
        seed (`int`): seed of the stratified splits.
    """
    raw, layout = _load_dataset_dict(data_args)
    fingerprint = layout.fingerprint() if layout is not None else _hub_fingerprint(raw)
    image_col, label_col = _find_columns(raw, data_args)
    raw = _as_class_label_column(_as_image_column(raw, image_col), label_col)
    image_check = None
    skipped = list(layout.skipped) if layout is not None else []
    if data_args.check_images:
        raw, image_check = drop_unreadable_images(raw, image_col, layout)
        skipped = image_check.skipped_files
    raw, empty_classes = _drop_empty_classes(raw, label_col)
    labels = list(raw["train"].features[label_col].names)
    if len(labels) < 2:
        raise ValueError(
            f"The dataset {data_args.dataset!r} has a single class ({labels}); classification needs at least 2 "
            "classes (one sub-folder per class)."
        )
    provenance: dict[str, Any] = {"source": data_args.dataset, "image_column": image_col, "label_column": label_col}
    if layout is not None:
        provenance["layout"] = layout.summary()
    if image_check is not None:
        provenance["image_check"] = image_check.summary()
    if empty_classes:
        provenance["dropped_classes"] = empty_classes
    train, validation, test, origins, train_only = _three_splits(raw, image_col, label_col, data_args, seed, labels)
    provenance.update(origins)
    if train_only:
        provenance["train_only_classes"] = train_only
    splits = DataSplits(
        train=train, validation=validation, test=test, labels=labels, provenance=provenance, skipped_files=skipped,
        fingerprint=fingerprint,
    )
    provenance["counts"] = splits.counts()
    missing = classes_missing_from_train(provenance["counts"], data_args)
    if missing:
        provenance["missing_train_classes"] = missing
    logger.info(
        "Data: %d train / %d validation / %d test images, %d classes %s",
        len(train), len(validation), len(test), len(labels), labels,
    )
    return splits


def _hub_fingerprint(raw: Any) -> dict[str, dict[str, Any]]:
    """Per split of a loaded (Hub) dataset: its rows and `datasets`' own fingerprint of its content."""
    return {name: {"rows": len(split), "fingerprint": getattr(split, "_fingerprint", None)} for name, split in raw.items()}


def classes_missing_from_train(counts: dict[str, dict[str, int]], data_args: DataArguments) -> list[str]:
    """Classes with validation/test images but no training image: refused, or (with the flag) a warning."""
    missing = [name for name, count in counts["train"].items() if count == 0]
    if not missing:
        return []
    where = {name: [s for s in ("validation", "test") if counts[s][name]] for name in missing}
    if not data_args.allow_missing_train_classes:
        raise ValueError(
            f"Class(es) {missing} have no training image (only {where}): the model cannot learn them and would score "
            "F1 0 on them. Add training images for them (e.g. train/<class>/), remove them from the validation/test "
            "folders, or pass `--allow-missing-train-classes` to train without them anyway."
        )
    logger.warning(
        "--allow-missing-train-classes: class(es) %s have no training image (only %s); the model never predicts "
        "them correctly, and their F1 is 0.", missing, where,
    )
    return missing

"""`--streaming`: train on data that need not fit in memory or on disk, read shard by shard through `datasets`.

A Hub dataset or a local folder of parquet / webdataset shards is opened with `datasets.load_dataset(...,
streaming=True)`. The training split is never materialised: the Trainer reads it through `StreamingExamples`,
shuffled within a buffer (`--shuffle-buffer`) and decoded one image at a time. What needs random access is small and
goes to `datasets`' on-disk cache (memory-mapped, not RAM): the validation and test splits and a bounded sample of
the training stream (`--streaming-sample` images), on which the feature pass, the advisor, the linear probe and the
data audit run.

Held-out splits come from the dataset where it has them. Otherwise an image belongs to the test split when a hash of
its bytes falls below `--test-fraction`, to the validation split when it falls below the sum of both fractions: the
same split on every shard, worker, epoch and rerun, with no global shuffle, and identical images never straddle
train and test.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import torch

from hf_finetune.config.sources import DataArguments
from hf_finetune.data.check import drop_unreadable_images
from hf_finetune.data.splits import (
    TEST_NAMES,
    VALIDATION_NAMES,
    DataSplits,
    classes_missing_from_train,
    find_split,
    load_source,
    normalise_columns,
    pick_column,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainStream:
    """The training split of a `--streaming` run.

    Attributes:
        dataset (`datasets.IterableDataset`): rows `{"image": undecoded reference, "label": class id}`.
        num_rows (`int`): rows in one pass (one epoch).
        class_counts (`list[int]`): rows per class id.
        counted (`bool`): True when `num_rows` and `class_counts` come from a pass over the labels; False when the
            dataset's metadata gave the rows and the class counts are the sample's, scaled.
        sample_rows (`int`): rows of the sample (`DataSplits.train`) the feature pass and the advisor used: a
            stratified random sample from the counting pass when there was one, else the first rows of the shuffled
            stream (`counted` False).
        shuffle_buffer (`int`): rows the shuffle buffer holds.
        examples (`StreamingExamples`): what the Trainer reads, set by `data.transforms.attach_transforms`.
    """

    dataset: Any
    num_rows: int
    class_counts: list[int]
    counted: bool
    sample_rows: int
    shuffle_buffer: int
    examples: Any = None

    def summary(self) -> dict[str, Any]:
        return {
            "train_rows": self.num_rows, "train_rows_from": "a pass over the labels" if self.counted else "dataset metadata",
            "sample_rows": self.sample_rows, "shuffle_buffer": self.shuffle_buffer,
            "sample": "stratified random rows (the counting pass)" if self.counted else "the first rows of the shuffled stream",
        }


class StreamingExamples(torch.utils.data.IterableDataset):
    """The training stream as the Trainer reads it: shuffled within the buffer, every image decoded and transformed
    as it arrives (no decode cache: each image comes once per epoch).

    `__len__` is the stream's row count, so epochs, the LR schedule and the unfreeze callbacks run as on a map-style
    split. `set_epoch` reshuffles; `datasets` shares the epoch with persistent DataLoader workers, and each worker
    reads its own shards. An image that cannot be decoded is skipped with a warning instead of ending the run.
    """

    def __init__(self, stream: TrainStream, transform: Callable[[dict[str, Any]], dict[str, Any]], seed: int) -> None:
        self.rows = stream.dataset.shuffle(seed=seed, buffer_size=stream.shuffle_buffer)
        self.num_rows = stream.num_rows
        self.transform = transform

    def __len__(self) -> int:
        return self.num_rows

    def set_epoch(self, epoch: int) -> None:
        self.rows.set_epoch(epoch)

    def __iter__(self):
        for row in self.rows:
            try:
                yield self.transform(row)
            except OSError as err:  # PIL's UnidentifiedImageError and truncated files are OSErrors
                logger.warning("Skipped a training image that cannot be decoded (%s): %s", row["image"].get("path"), err)


def bucket(reference: dict[str, Any]) -> float:
    """A number in [0, 1) fixed by an undecoded image's bytes (its path when it has no bytes)."""
    content = reference.get("bytes") or str(reference.get("path")).encode()
    return int.from_bytes(hashlib.sha1(content).digest()[:8], "big") / 2**64


def _in_bucket(image: dict[str, Any], low: float, high: float) -> bool:
    return low <= bucket(image) < high


def _encode_label(label: Any, ids: dict[Any, int]) -> dict[str, int]:
    if label not in ids:
        raise ValueError(
            f"Label {label!r} of a held-out split is not a class of the training stream (its classes: {sorted(ids)}): "
            "add training rows of it, or remove its rows from the validation / test split."
        )
    return {"label": ids[label]}


def _rows(stream: Any):
    yield from stream


def _source_fingerprint(data_args: DataArguments, raw: Any) -> str:
    """A local folder: every file's path, size and modification time; a Hub dataset: its id, config and metadata."""
    digest = hashlib.sha1(f"{data_args.dataset}\0{data_args.dataset_config}".encode())
    if os.path.isdir(data_args.dataset):
        for root, dirs, files in sorted(os.walk(data_args.dataset)):
            dirs.sort()
            for name in sorted(files):
                stat = os.stat(os.path.join(root, name))
                digest.update(f"{os.path.relpath(os.path.join(root, name), data_args.dataset)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    else:
        info = raw["train"].info
        digest.update(f"{info.dataset_name}\0{info.config_name}\0{info.version}\0{info.splits}".encode())
    return digest.hexdigest()


def _materialise(stream: Any, features: Any, fingerprint: str, limit: int | None = None) -> Any:
    """The rows of `stream` (at most `limit`) as a `datasets.Dataset` in `datasets`' on-disk cache, memory-mapped.
    The fingerprint names the cache entry: a rerun on unchanged data reads it instead of streaming again."""
    import datasets

    rows = stream.take(limit) if limit is not None else stream
    return datasets.Dataset.from_generator(_rows, gen_kwargs={"stream": rows}, features=features, fingerprint=fingerprint)


def _open(data_args: DataArguments) -> tuple[Any, str, str]:
    """(the streaming `IterableDatasetDict`, image column, label column)."""
    import datasets

    raw = load_source(data_args, streaming=True)
    if isinstance(raw, datasets.IterableDataset):
        raw = datasets.IterableDatasetDict({"train": raw})
    if "train" not in raw:
        raise ValueError(f"`--dataset` {data_args.dataset!r} has no 'train' split to stream; it has {list(raw)}.")
    features = raw["train"].features
    if features is None:
        raise ValueError(
            f"`--streaming`: the column types of {data_args.dataset!r} are not known before reading it. Store it as "
            "parquet shards written by `datasets` (`Dataset.to_parquet`), or name the columns with `--image-column` "
            "and `--label-column`."
        )
    image_col = pick_column(features, data_args.image_column, "image", "image-column")
    label_col = pick_column(features, data_args.label_column, "label", "label-column")
    return raw, image_col, label_col


def _normalised(split: Any, image_col: str, label_col: str) -> Any:
    """The stream with the columns `image` (undecoded) and `label` only."""
    import datasets

    return normalise_columns(split, image_col, label_col).cast_column("image", datasets.Image(decode=False))


def _held_out(raw: Any, streams: dict[str, Any], data_args: DataArguments) -> tuple[Any, Any, Any, dict[str, str]]:
    """(train, validation, test streams, where each came from): the dataset's own held-out splits where present, else
    hash buckets of train (see the module docstring)."""
    train = streams["train"]
    val_name, test_name = find_split(raw, VALIDATION_NAMES), find_split(raw, TEST_NAMES)
    if test_name is None and val_name is not None:
        test_name, val_name = val_name, None  # a lone validation split is the untouched test split
    low, origins = 0.0, {}
    held = {}
    for name, own, fraction in (("test", test_name, data_args.test_fraction), ("validation", val_name, data_args.validation_fraction)):
        if own is not None:
            held[name], origins[name] = streams[own], f"dataset split '{own}'"
            continue
        held[name] = train.filter(_in_bucket, input_columns="image", fn_kwargs={"low": low, "high": low + fraction})
        origins[name] = f"images of train whose content hash falls in [{low:.2f}, {low + fraction:.2f})"
        low += fraction
    if low > 0:
        train = train.filter(_in_bucket, input_columns="image", fn_kwargs={"low": low, "high": 1.0})
    origins["train"] = "dataset split 'train'" + (" minus the hash-held-out images" if low > 0 else "")
    return train, held["validation"], held["test"], origins


# Fewest rows of a class the recipe's sample holds (all of them when the class has fewer), whatever its share.
MIN_SAMPLE_PER_CLASS = 5


def _count_and_sample(train: Any, size: int, seed: int) -> tuple[Counter, frozenset[int]]:
    """One pass over the training labels (images read, never decoded; a hash filter earlier in the chain still sees
    them, as `select_columns` applies after it): rows per label value, and the positions of a stratified random
    sample of about `size` rows. Each class keeps a reservoir of positions; the sample takes each class's share of
    `size`, at least `MIN_SAMPLE_PER_CLASS`. A stream stored in class order (rows of one class together, as folder
    conversions write them) is sampled as well as a shuffled one, which a shuffle buffer cannot do."""
    rng = random.Random(seed)
    counts: Counter = Counter()
    reservoirs: dict[Any, list[int]] = defaultdict(list)
    for position, row in enumerate(train.select_columns(["label"])):
        label = row["label"]
        counts[label] += 1
        pool = reservoirs[label]
        if len(pool) < size:
            pool.append(position)
        elif (slot := rng.randrange(counts[label])) < size:
            pool[slot] = position
    total = max(1, sum(counts.values()))
    chosen: set[int] = set()
    for label, pool in reservoirs.items():
        share = max(min(counts[label], MIN_SAMPLE_PER_CLASS), round(size * counts[label] / total))
        chosen.update(rng.sample(pool, min(share, len(pool))))
    return counts, frozenset(chosen)


def _at(_: Any, position: int, positions: frozenset[int]) -> bool:
    return position in positions


def _classes(source: Any, label_col: str, sample: int, seed: int, *streams: Any) -> tuple[Any, ...]:
    """(train, validation, test streams with class ids, class names, rows per class or None, training rows, the
    sample's positions or None).

    The rows come from the dataset's metadata when it has them and nothing was carved from train (rows per class
    None: the caller scales the sample's); else from one pass over the training labels. A label column that is not
    a `ClassLabel` gets its distinct values, sorted, as class names (found in that pass)."""
    import datasets

    train, validation, test, origins = streams
    label_feature = source.features[label_col]
    carved = origins["train"] != "dataset split 'train'"
    rows = (source.info.splits or {}).get("train")
    if isinstance(label_feature, datasets.ClassLabel) and not carved and rows is not None and rows.num_examples:
        return train, validation, test, list(label_feature.names), None, rows.num_examples, None
    value_counts, positions = _count_and_sample(train, sample, seed)
    if isinstance(label_feature, datasets.ClassLabel):
        labels = list(label_feature.names)
        counts = [value_counts.get(i, 0) for i in range(len(labels))]
    else:
        values = sorted(value_counts, key=lambda v: (str(type(v)), v))
        labels, ids = [str(v) for v in values], {v: i for i, v in enumerate(values)}
        counts = [value_counts[v] for v in values]
        features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=labels)})
        train, validation, test = (
            s.map(_encode_label, input_columns="label", fn_kwargs={"ids": ids}, features=features) for s in (train, validation, test)
        )
    return train, validation, test, labels, counts, sum(counts), positions


def _sample(train: Any, positions: frozenset[int] | None, data_args: DataArguments, seed: int, cached: Callable) -> Any:
    """The recipe's sample: the stratified positions of the counting pass, else (no pass: the rows came from the
    dataset's metadata) the first `--streaming-sample` rows of the shuffled stream."""
    if positions is not None:
        return cached(train.filter(_at, with_indices=True, fn_kwargs={"positions": positions}),
                      f"stratified{seed}{data_args.streaming_sample}")
    return cached(train.shuffle(seed=seed, buffer_size=data_args.shuffle_buffer), f"sample{seed}{data_args.shuffle_buffer}",
                  data_args.streaming_sample)


def load_streaming_splits(data_args: DataArguments, seed: int) -> DataSplits:
    """`--streaming`: the training stream, the held-out splits and the sample the recipe measures (module docstring).

    Args:
        data_args (`DataArguments`): the data flags (`--streaming-sample`, `--shuffle-buffer` included).
        seed (`int`): seed of the shuffle (sample and epochs).
    """
    import datasets

    start = time.perf_counter()
    raw, image_col, label_col = _open(data_args)
    streams = {name: _normalised(split, image_col, label_col) for name, split in raw.items()}
    train, validation, test, origins = _held_out(raw, streams, data_args)
    train, validation, test, labels, counts, num_rows, positions = _classes(
        raw["train"], label_col, data_args.streaming_sample, seed, train, validation, test, origins
    )
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=labels)})
    key = _source_fingerprint(data_args, raw) + f"{data_args.test_fraction}{data_args.validation_fraction}{labels}"

    def cached(stream: Any, what: str, limit: int | None = None) -> Any:
        return _materialise(stream, features, hashlib.sha1(f"{key}{what}{limit}".encode()).hexdigest(), limit)

    sample = _sample(train, positions, data_args, seed, cached)
    if counts is None:
        sample_counts = Counter(sample["label"])
        absent = [name for i, name in enumerate(labels) if not sample_counts.get(i)]
        if absent:  # a stream stored in class order: the shuffle buffer did not reach every class
            logger.warning(
                "The first %d rows of the shuffled training stream hold no image of %s (the stream is stored in class "
                "order, beyond what --shuffle-buffer mixes): counting the labels in one pass for a stratified sample.",
                len(sample), absent,
            )
            value_counts, positions = _count_and_sample(train, data_args.streaming_sample, seed)
            counts = [value_counts.get(i, 0) for i in range(len(labels))]
            num_rows, sample = sum(counts), _sample(train, positions, data_args, seed, cached)
        else:  # the sample's class shares, scaled to the stream
            counts = [round(sample_counts.get(i, 0) * num_rows / max(1, len(sample))) for i in range(len(labels))]
    held = datasets.DatasetDict({"train": sample, "validation": cached(validation, "validation"), "test": cached(test, "test")})
    skipped: list[dict[str, Any]] = []
    if data_args.check_images:  # what is held is checked like a loaded dataset; the stream skips as it trains
        held, image_check = drop_unreadable_images(held, "image")
        skipped = image_check.skipped_files
    sample = held["train"]
    splits = DataSplits(
        train=sample, validation=held["validation"], test=held["test"], labels=labels,
        provenance={"source": data_args.dataset, "image_column": image_col, "label_column": label_col, **origins},
        skipped_files=skipped, fingerprint={"streaming_source": key},
    )
    splits.stream = TrainStream(train, num_rows, counts, positions is not None, len(sample), data_args.shuffle_buffer)
    splits.provenance["counts"] = {**splits.counts(), "train": dict(zip(labels, counts))}
    splits.provenance["streaming"] = splits.stream.summary()
    missing = classes_missing_from_train(splits.provenance["counts"], data_args)
    if missing:
        splits.provenance["missing_train_classes"] = missing
    logger.info(
        "Streaming: %d train rows (%s), %d validation / %d test images held out, %d classes; the feature pass, advisor "
        "and probe use a sample of %d training images (%.1fs)",
        num_rows, splits.stream.summary()["train_rows_from"], len(splits.validation), len(splits.test), len(labels),
        len(sample), time.perf_counter() - start,
    )
    return splits

"""Frozen backbone features of every image of a run's splits, computed in one forward pass and cached on disk.

The features of an image are the input of the classification head's final linear layer (the pooled
representation), captured with a forward pre-hook, so every backbone family works the same way. They feed the
linear-probe baseline, the recipe advisor's domain-similarity measurement and the `linear_probe` strategy, which
together then cost one forward pass over the data; with `stages=True` the same pass also captures every backbone
stage's pooled output for the stage probe. Only images the cache (`feature_cache.FeatureCache`) does not hold go
through the backbone, and the pass's throughput is recorded for the advisor's cost estimate.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from hf_finetune.backbones.split import split_stages
from hf_finetune.backbones.stages import TRUNCATION_FIELD
from hf_finetune.backbones.taps import FeatureTaps, extract_features
from hf_finetune.data.images import undecoded
from hf_finetune.data.splits import DataSplits
from hf_finetune.probing.feature_cache import (
    CachedVectors,
    FeatureCache,
    default_feature_cache_dir,
    image_keys,
    model_cache_key,
)

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "validation", "test")
# A feature pass over fewer images is too short to time reliably (first-call allocations dominate).
MIN_TIMED_IMAGES = 64


@dataclass
class FeatureSet:
    """Features and labels of one split.

    Attributes:
        features (`np.ndarray`): float32 `[num_images, feature_dim]`.
        labels (`np.ndarray`): int64 `[num_images]`.
    """

    features: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class SplitFeatures:
    """Features of the train / validation / test splits of one run.

    Attributes:
        train, validation, test (`FeatureSet`): the splits' features.
        model_key (`str`): the cache key of the checkpoint + preprocessing.
        seconds (`float`): wall time of the whole feature pass (cache reads included).
        computed (`int`): images that went through the backbone (the rest came from the cache).
        images_per_second (`float`, *optional*): measured forward throughput (preprocessing included) of this
            machine on this model: of this feature pass, or recorded by an earlier one in the cache; `None` when
            neither timed at least `MIN_TIMED_IMAGES` images.
        extra (`dict`): more facts for `summary()` (`from_stage`: the vectors are a captured stage's output).
        stage_splits (`dict[str, SplitFeatures]`): pooled outputs of every backbone stage on all three splits, by
            stage name (input to output), when the feature pass captured them (`stages=True`).
    """

    train: FeatureSet
    validation: FeatureSet
    test: FeatureSet
    model_key: str
    seconds: float
    computed: int
    images_per_second: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    stage_splits: dict[str, "SplitFeatures"] = field(default_factory=dict)

    @property
    def stages(self) -> dict[str, FeatureSet]:
        """The train features of every captured stage, input to output: what the stage probe cross-validates on
        (validation and test are never looked at)."""
        return {name: features.train for name, features in self.stage_splits.items()}

    def summary(self) -> dict[str, Any]:
        """What `run_config.json` records about the feature pass."""
        return {
            "model_key": self.model_key,
            "feature_dim": int(self.train.features.shape[1]),
            "images": {name: len(getattr(self, name)) for name in SPLIT_NAMES},
            "computed": self.computed,
            "from_cache": sum(len(getattr(self, name)) for name in SPLIT_NAMES) - self.computed,
            "seconds": round(self.seconds, 3),
            "images_per_second": None if self.images_per_second is None else round(self.images_per_second, 2),
            **self.extra,
        }


def compute_split_features(
    model: torch.nn.Module,
    processor: Any,
    splits: DataSplits,
    *,
    model_name_or_path: str,
    revision: str | None = None,
    cache_dir: str | None = None,
    batch_size: int = 32,
    use_cache: bool = True,
    stages: bool = False,
) -> SplitFeatures:
    """Features of every image of the train, validation and test splits, from the cache where possible.

    Args:
        model (`torch.nn.Module`): the freshly loaded classifier (its head does not matter: its input is captured).
        processor: the checkpoint's image processor.
        splits (`DataSplits`): the run's splits (any transforms attached to them are bypassed).
        model_name_or_path (`str`): `--model`, for the cache key.
        revision (`str`, *optional*): `--revision`, for the cache key.
        cache_dir (`str`, *optional*): cache root (default: `default_feature_cache_dir()`).
        batch_size (`int`, defaults to 32): images per forward pass.
        use_cache (`bool`, defaults to `True`): read and write the disk cache.
        stages (`bool`, defaults to `False`): also capture every backbone stage's pooled output, in the same
            forward pass (each stage cached under its own key); returned in `SplitFeatures.stages`.

    Returns:
        `SplitFeatures`.
    """
    start = time.perf_counter()
    taps = FeatureTaps(model, split_stages(model), stages=stages)
    model_keys = _tap_cache_keys(model, processor, taps, model_name_or_path, revision)
    root = cache_dir or default_feature_cache_dir()
    caches = {name: FeatureCache(root, key) for name, key in model_keys.items()} if use_cache else {}
    keys_by_split = {name: image_keys(getattr(splits, name)) for name in SPLIT_NAMES}
    stored = _validated_cache(taps, processor, splits, keys_by_split["train"][0], caches)
    computed, throughput = _forward_uncached(taps, processor, splits, keys_by_split, stored, caches, batch_size)
    if throughput is None and caches:
        throughput = caches[FeatureTaps.HEAD].load_throughput()  # measured by an earlier feature pass on this machine

    def feature_sets(name: str) -> list[FeatureSet]:
        return [_feature_set(getattr(splits, s), keys_by_split[s], computed[name], stored[name]) for s in SPLIT_NAMES]

    head = FeatureTaps.HEAD
    result = SplitFeatures(
        *feature_sets(head),
        model_key=model_keys[head],
        seconds=time.perf_counter() - start,
        computed=len(computed[head]),
        images_per_second=throughput,
        stage_splits={
            stage.name: SplitFeatures(
                *feature_sets(stage.name),
                model_key=model_keys[stage.name],
                seconds=0.0,
                computed=len(computed[stage.name]),
                images_per_second=throughput,
            )
            for stage in taps.stages
        },
    )
    logger.info(
        "Features (%s, dim %d): %d computed, %d from the cache in %s, %.1fs",
        model_keys[head], result.train.features.shape[1], result.computed,
        sum(len(getattr(result, n)) for n in SPLIT_NAMES) - result.computed,
        caches[head].directory if caches else "(no cache)", result.seconds,
    )
    return result


def _validated_cache(
    taps: FeatureTaps, processor: Any, splits: DataSplits, first_key: str, caches: dict[str, FeatureCache]
) -> dict[str, CachedVectors]:
    """Every tap's cached vectors, checked against the model: the first train image goes through it, shards of
    another vector size are dropped (`FeatureCache.load`), and a tap whose cached vector of that image differs from
    the one computed now is cleared (a stale or corrupted entry the key did not catch). One image: a negligible cost."""
    if not caches:
        return {name: CachedVectors() for name in taps.names}
    image = undecoded(splits.train).select([0])["image"]  # decoded by `extract`, as the pass decodes every image
    reference = taps.extract(processor, image, batch_size=1)
    stored = {}
    for name in taps.names:
        vectors = caches[name].load(dim=reference[name].shape[1])
        cached, fresh = vectors.get(first_key), reference[name][0]
        scale = float(np.abs(fresh).max() or 1.0)
        if cached is not None and not np.allclose(cached, fresh, rtol=1e-3, atol=1e-3 * scale):
            caches[name].clear("its vector of a train image differs from what the model computes now")
            vectors = caches[name].load()
        stored[name] = vectors
    return stored


def _tap_cache_keys(
    model: torch.nn.Module, processor: Any, taps: FeatureTaps, model_name_or_path: str, revision: str | None
) -> dict[str, str]:
    """The cache key of every tap's vectors (`model_cache_key`), by tap name."""
    # A truncated model's head reads another stage than the full model of the same checkpoint.
    truncation = getattr(getattr(model, "config", None), TRUNCATION_FIELD, None)
    suffix = [f"truncated:{json.dumps({k: truncation[k] for k in ('after', 'keep', 'identity', 'linear')}, sort_keys=True)}"] if truncation else []
    # The commit transformers resolved `--revision` to when it loaded a Hub model: a moved `main` misses the cache.
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    return {
        name: model_cache_key(model_name_or_path, revision, processor, taps.hook_points(name) + suffix, commit)
        for name in taps.names
    }


def _forward_uncached(
    taps: FeatureTaps, processor: Any, splits: DataSplits, keys_by_split: dict[str, list[str]],
    stored: dict[str, CachedVectors], caches: dict[str, FeatureCache], batch_size: int,
) -> tuple[dict[str, CachedVectors], float | None]:
    """Runs every image some tap has no cached vector for through the backbone (once, however many splits hold it),
    caching the new vectors. Returns (new vectors by tap name and image key, images/s of the pass or `None` when it
    timed fewer than `MIN_TIMED_IMAGES` images)."""
    where: dict[str, tuple[str, int]] = {}  # image key -> (split, row) of one image that needs a forward pass
    for name in SPLIT_NAMES:
        for row, key in enumerate(keys_by_split[name]):
            if key not in where and any(key not in vectors for vectors in stored.values()):
                where[key] = (name, row)
    computed = {name: CachedVectors() for name in taps.names}
    if not where:
        return computed, None
    todo = list(where)
    rows_by_split: dict[str, list[int]] = {}
    for key in todo:
        rows_by_split.setdefault(where[key][0], []).append(where[key][1])
    chunks: list[dict[str, np.ndarray]] = []
    forward_start = time.perf_counter()
    # transformers' progress-bar switch (`--disable-tqdm true` turns it off): a 1,000-image pass takes a minute on CPU.
    progress = hf_logging.tqdm(total=len(todo), desc="Feature pass", unit="img", leave=False)
    for name, rows in rows_by_split.items():
        view = undecoded(getattr(splits, name))
        for offset in range(0, len(rows), batch_size):  # references; `extract` decodes them a few at a time
            images = view.select(rows[offset : offset + batch_size])["image"]
            chunks.append(taps.extract(processor, images, batch_size=batch_size))
            progress.update(len(images))
    progress.close()
    elapsed = time.perf_counter() - forward_start
    throughput = len(todo) / elapsed if elapsed > 0 else None
    ordered = [key for name, rows in rows_by_split.items() for key in (keys_by_split[name][r] for r in rows)]
    head_cache = caches.get(FeatureTaps.HEAD)
    for name in taps.names:
        matrix = np.concatenate([chunk[name] for chunk in chunks])
        computed[name].append(ordered, matrix)
        if caches:
            caches[name].add(ordered, matrix)
    if head_cache and len(todo) >= MIN_TIMED_IMAGES and throughput:
        head_cache.save_throughput(throughput, batch_size)
    logger.info("Feature pass: %d images through the backbone at %.1f images/s", len(ordered), throughput or 0.0)
    return computed, throughput if len(todo) >= MIN_TIMED_IMAGES else None


def _feature_set(split: Any, keys: list[str], found: CachedVectors, kept: CachedVectors) -> FeatureSet:
    """One split's vectors in row order, from this pass (`found`) or the cache (`kept`, read memory-mapped), with
    its labels."""
    matrix = np.zeros((0, 0), dtype=np.float32)
    if keys:
        fresh = np.fromiter((key in found for key in keys), dtype=bool, count=len(keys))
        matrix = np.empty((len(keys), found.dim or kept.dim or 0), dtype=np.float32)
        for rows, source in ((fresh, found), (~fresh, kept)):
            if rows.any():
                matrix[rows] = source.gather([key for key, row in zip(keys, rows) if row])
    labels = split.with_format(None)["label"]
    return FeatureSet(features=matrix, labels=np.asarray(labels, dtype=np.int64))


def head_features_from_stage(
    model: torch.nn.Module, processor: Any, splits: DataSplits, full_depth: SplitFeatures, batch_size: int = 32, sample: int = 8
) -> SplitFeatures | None:
    """The head features of a truncated model taken from the full-depth pass's capture of its cut stage, without a
    second pass over the data, when they are the same vectors.

    They are when nothing but the model's pooling sits between the cut and the head (CNNs whose final norm or conv
    was removed with the stages above the cut); a ViT keeps its final norm, so there they differ. The first
    `sample` train images go through the truncated model and are compared with the captured vectors.

    Args:
        model (`torch.nn.Module`): the truncated classifier (`truncation.truncate_model`).
        processor: its image processor.
        splits (`DataSplits`): the run's splits, in the order `full_depth` was computed on.
        full_depth (`SplitFeatures`): the full-depth model's feature pass with its stages captured (`stages=True`).
        batch_size (`int`, defaults to 32): images per forward pass of the check.
        sample (`int`, defaults to 8): train images compared.

    Returns:
        `SplitFeatures` (recording `from_stage`), or `None` when the model is not truncated, the cut stage was not
        captured, or the vectors differ (the caller then runs the truncated model's own feature pass).
    """
    cut = (getattr(getattr(model, "config", None), TRUNCATION_FIELD, None) or {}).get("after")
    stage = full_depth.stage_splits.get(cut) if cut else None
    if stage is None or not len(stage.train):
        return None
    count = min(sample, len(stage.train))
    images = undecoded(splits.train).select(range(count))["image"]
    start = time.perf_counter()
    head = extract_features(model, processor, images, batch_size=batch_size)
    captured = stage.train.features[:count]
    if head.shape != captured.shape or not np.allclose(head, captured, rtol=1e-4, atol=1e-4 * float(np.abs(captured).max() or 1.0)):
        logger.info("The truncated head does not read the pooled output of %s as captured: a feature pass of its own.", cut)
        return None
    logger.info("Truncated model's features: the captured output of %s (checked on %d images).", cut, count)
    return SplitFeatures(
        stage.train,
        stage.validation,
        stage.test,
        model_key=stage.model_key,
        seconds=time.perf_counter() - start,
        computed=0,
        images_per_second=full_depth.images_per_second,
        extra={"from_stage": cut},
    )


def measure_throughput(model: torch.nn.Module, processor: Any, images: list[Any], batch_size: int = 32) -> float:
    """Forward throughput (images/s, preprocessing included) on a small sample, when no feature pass timed one.

    `images`: PIL images or, better, undecoded references (`data.images.undecoded(split)`), decoded as they go.
    """
    images = list(images)
    extract_features(model, processor, images[:batch_size], batch_size=batch_size)  # warm-up (allocations, lazy init)
    start = time.perf_counter()
    extract_features(model, processor, images, batch_size=batch_size)
    return len(images) / max(time.perf_counter() - start, 1e-9)

"""Frozen backbone features, computed once and cached on disk.

The features of an image are the input of the classification head's final linear layer (the pooled
representation), captured with a forward pre-hook, so every backbone family works the same way. They feed the
linear-probe baseline, the recipe advisor's domain-similarity measurement and the `linear_probe` strategy, which
together then cost one forward pass over the data.

Cache layout: `<cache_dir>/<model key>/shard-<hash>.npz`, each shard holding `keys` (one content hash per image)
and `features`. The model key hashes the checkpoint (local weight files' names, sizes and modification times, or
the Hub id and revision), the image processor's settings and the hooked module; the image key hashes the encoded
image bytes. A changed checkpoint or preprocessing therefore misses the cache, while another split, seed or fold
of the same images reuses it. Shards are written atomically and never rewritten, so parallel runs can share a cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_finetune.backbones.split import split_stages
from hf_finetune.backbones.stages import TRUNCATION_FIELD
from hf_finetune.backbones.taps import FeatureTaps, extract_features
from hf_finetune.data.splits import DataSplits

logger = logging.getLogger(__name__)


# Bump when the meaning of a cached vector changes (hook point, dtype, preprocessing path).
FEATURE_CACHE_VERSION = 1


SPLIT_NAMES = ("train", "validation", "test")


THROUGHPUT_FILE = "throughput.json"


# A feature pass over fewer images is too short to time reliably (first-call allocations dominate).
MIN_TIMED_IMAGES = 64


def default_feature_cache_dir() -> str:
    """`$HF_FINETUNE_FEATURE_CACHE`, else `$XDG_CACHE_HOME/hf_finetune/features`, else `~/.cache/hf_finetune/features`."""
    explicit = os.environ.get("HF_FINETUNE_FEATURE_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hf_finetune", "features")


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


def _sha1(payload: Any) -> str:
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_fingerprint(model_name_or_path: str, revision: str | None = None) -> dict[str, Any]:
    """What identifies a checkpoint's weights: local files' names, sizes and mtimes, or the Hub id and revision."""
    path = Path(os.path.expanduser(model_name_or_path))
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".bin", ".pth"))
        return {
            "path": str(path.resolve()),
            "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files],
        }
    return {"hub_id": model_name_or_path, "revision": revision or "main"}


def model_cache_key(model_name_or_path: str, revision: str | None, processor: Any, hooked: list[str]) -> str:
    """Cache key of (checkpoint, preprocessing, hook point)."""
    to_dict = getattr(processor, "to_dict", None)
    preprocessing = to_dict() if callable(to_dict) else repr(processor)
    payload = {
        "version": FEATURE_CACHE_VERSION,
        "checkpoint": checkpoint_fingerprint(model_name_or_path, revision),
        "preprocessing": preprocessing,
        "processor_class": type(processor).__name__,
        "hooked": hooked,
    }
    return _sha1(payload)[:20]


def image_keys(split: Any) -> list[str]:
    """One content hash per image of a `datasets.Dataset` split (the encoded bytes, or the file's bytes)."""
    import datasets

    raw = split.cast_column("image", datasets.Image(decode=False))
    raw.reset_format()
    keys = []
    for item in raw["image"]:
        data = item.get("bytes")
        if data is None:
            with open(item["path"], "rb") as f:
                data = f.read()
        keys.append(hashlib.sha1(data).hexdigest())
    return keys


class FeatureCache:
    """Feature vectors by image key for one model key, stored as immutable `.npz` shards.

    Args:
        cache_dir (`str`): the root cache directory.
        model_key (`str`): the model cache key (see `model_cache_key`).
    """

    def __init__(self, cache_dir: str, model_key: str) -> None:
        self.directory = Path(os.path.expanduser(cache_dir)) / model_key
        self._vectors: dict[str, np.ndarray] | None = None

    def load(self) -> dict[str, np.ndarray]:
        if self._vectors is None:
            self._vectors = {}
            for shard in sorted(self.directory.glob("shard-*.npz")) if self.directory.is_dir() else []:
                try:
                    with np.load(shard) as data:
                        self._vectors.update(zip(data["keys"].tolist(), data["features"]))
                except (OSError, ValueError, KeyError) as err:  # a truncated shard only costs a recomputation
                    logger.warning("Ignoring unreadable feature cache shard %s (%s)", shard, err)
        return self._vectors

    def save_throughput(self, images_per_second: float, batch_size: int) -> None:
        """Records the throughput of a feature pass of at least `MIN_TIMED_IMAGES` images on this machine."""
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = {"images_per_second": images_per_second, "batch_size": batch_size, "host": platform.node(), "cpus": os.cpu_count()}
        tmp = self.directory / f".tmp-{os.getpid()}-throughput.json"
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, self.directory / THROUGHPUT_FILE)

    def load_throughput(self) -> float | None:
        """The recorded throughput, if it was measured on this machine."""
        path = self.directory / THROUGHPUT_FILE
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        same_machine = payload.get("host") == platform.node() and payload.get("cpus") == os.cpu_count()
        return float(payload["images_per_second"]) if same_machine else None

    def add(self, keys: list[str], features: np.ndarray) -> None:
        if not keys:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha1("".join(keys).encode()).hexdigest()[:16]
        path = self.directory / f"shard-{name}.npz"
        tmp = self.directory / f".tmp-{os.getpid()}-{name}.npz"
        np.savez(tmp, keys=np.asarray(keys), features=features.astype(np.float32))
        os.replace(tmp, path)
        self.load().update(zip(keys, features))


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
    # A truncated model's head reads another stage than the full model of the same checkpoint.
    truncation = getattr(getattr(model, "config", None), TRUNCATION_FIELD, None)
    suffix = [f"truncated:{json.dumps({k: truncation[k] for k in ('after', 'keep', 'identity', 'linear')}, sort_keys=True)}"] if truncation else []
    model_keys = {
        name: model_cache_key(model_name_or_path, revision, processor, taps.hook_points(name) + suffix) for name in taps.names
    }
    root = cache_dir or default_feature_cache_dir()
    caches = {name: FeatureCache(root, key) for name, key in model_keys.items()} if use_cache else {}
    stored = {name: caches[name].load() if caches else {} for name in taps.names}

    keys_by_split = {name: image_keys(getattr(splits, name)) for name in SPLIT_NAMES}
    where: dict[str, tuple[str, int]] = {}  # image key -> (split, row) of one image that needs a forward pass
    for name in SPLIT_NAMES:
        for row, key in enumerate(keys_by_split[name]):
            if key not in where and any(key not in vectors for vectors in stored.values()):
                where[key] = (name, row)
    computed: dict[str, dict[str, np.ndarray]] = {name: {} for name in taps.names}
    throughput = None
    if where:
        todo = list(where)
        rows_by_split: dict[str, list[int]] = {}
        for key in todo:
            rows_by_split.setdefault(where[key][0], []).append(where[key][1])
        chunks: list[dict[str, np.ndarray]] = []
        forward_start = time.perf_counter()
        for name, rows in rows_by_split.items():
            view = getattr(splits, name).with_format(None)
            for offset in range(0, len(rows), 256):  # decode in chunks to bound memory
                images = view.select(rows[offset : offset + 256])["image"]
                chunks.append(taps.extract(processor, images, batch_size=batch_size))
        elapsed = time.perf_counter() - forward_start
        throughput = len(todo) / elapsed if elapsed > 0 else None
        ordered = [key for name, rows in rows_by_split.items() for key in (keys_by_split[name][r] for r in rows)]
        head_cache = caches.get(FeatureTaps.HEAD)
        for name in taps.names:
            matrix = np.concatenate([chunk[name] for chunk in chunks])
            computed[name] = dict(zip(ordered, matrix))
            if caches:
                caches[name].add(ordered, matrix)
        if head_cache and len(todo) >= MIN_TIMED_IMAGES and throughput:
            head_cache.save_throughput(throughput, batch_size)
        logger.info("Feature pass: %d images through the backbone at %.1f images/s", len(ordered), throughput or 0.0)
        if len(todo) < MIN_TIMED_IMAGES:
            throughput = None
    if throughput is None and caches:
        throughput = caches[FeatureTaps.HEAD].load_throughput()  # measured by an earlier feature pass on this machine

    def feature_set(name: str, split: str) -> FeatureSet:
        found, kept = computed[name], stored[name]
        lookup = [found[k] if k in found else kept[k] for k in keys_by_split[split]]
        matrix = np.stack(lookup).astype(np.float32) if lookup else np.zeros((0, 0), dtype=np.float32)
        labels = getattr(splits, split).with_format(None)["label"]
        return FeatureSet(features=matrix, labels=np.asarray(labels, dtype=np.int64))

    head = FeatureTaps.HEAD
    result = SplitFeatures(
        train=feature_set(head, "train"),
        validation=feature_set(head, "validation"),
        test=feature_set(head, "test"),
        model_key=model_keys[head],
        seconds=time.perf_counter() - start,
        computed=len(computed[head]),
        images_per_second=throughput,
        stage_splits={
            stage.name: SplitFeatures(
                *(feature_set(stage.name, split) for split in SPLIT_NAMES),
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
    images = splits.train.with_format(None).select(range(count))["image"]
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
    """Forward throughput (images/s, preprocessing included) on a small sample, when no feature pass timed one."""
    images = list(images)
    extract_features(model, processor, images[:batch_size], batch_size=batch_size)  # warm-up (allocations, lazy init)
    start = time.perf_counter()
    extract_features(model, processor, images, batch_size=batch_size)
    return len(images) / max(time.perf_counter() - start, 1e-9)

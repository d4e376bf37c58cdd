"""The on-disk cache of frozen backbone features: one vector per (model key, image key), in immutable shards.

Cache layout: `<cache_dir>/<model key>/shard-<hash>.npz`, each shard holding `keys` (one content hash per image)
and `features`. The model key hashes the checkpoint (local weight files' names, sizes and modification times, or
the Hub id and revision), the image processor's settings and the hooked module; the image key hashes the encoded
image bytes. A changed checkpoint or preprocessing therefore misses the cache, while another split, seed or fold
of the same images reuses it. Shards are written atomically and never rewritten, so parallel runs can share a cache.
Next to them, `throughput.json` keeps the forward throughput a feature pass measured on this machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Bump when the meaning of a cached vector changes (hook point, dtype, preprocessing path).
FEATURE_CACHE_VERSION = 1
THROUGHPUT_FILE = "throughput.json"


def default_feature_cache_dir() -> str:
    """`$HF_FINETUNE_FEATURE_CACHE`, else `$XDG_CACHE_HOME/hf_finetune/features`, else `~/.cache/hf_finetune/features`."""
    explicit = os.environ.get("HF_FINETUNE_FEATURE_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hf_finetune", "features")


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
        """Every cached vector of this model key, by image key (read from the shards once, then kept)."""
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
        """Records the throughput a feature pass measured on this machine (one long enough to time: see
        `features.MIN_TIMED_IMAGES`)."""
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
        """Writes `features` (one row per key) as a new shard, atomically, and keeps them in memory."""
        if not keys:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha1("".join(keys).encode()).hexdigest()[:16]
        path = self.directory / f"shard-{name}.npz"
        tmp = self.directory / f".tmp-{os.getpid()}-{name}.npz"
        np.savez(tmp, keys=np.asarray(keys), features=features.astype(np.float32))
        os.replace(tmp, path)
        self.load().update(zip(keys, features))

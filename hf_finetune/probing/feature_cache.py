"""The on-disk cache of frozen backbone features: one vector per (model key, image key), in immutable shards.

Cache layout: `<cache_dir>/<model key>/shard-<hash>.npz`, each shard holding `keys` (one content hash per image)
and `features`. The model key hashes the checkpoint (local weight files' names, sizes and modification times, or
the Hub id and the commit its revision resolves to), the image processor's settings and the hooked module; the image key hashes the encoded
image bytes. A changed checkpoint or preprocessing therefore misses the cache, while another split, seed or fold
of the same images reuses it. Shards are written atomically and never rewritten, so parallel runs can share a cache.
What is read back is checked (a readable archive, one row of the expected size per key, finite, no all-zero vector):
a bad shard is removed with a warning and its images computed again.
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


def resolve_revision(model_id: str, revision: str | None = None, cache_dir: str | None = None) -> str:
    """The commit a Hub `revision` (default `main`) of `model_id` points to: from the local Hugging Face cache (what
    a download last resolved it to), else asked of the Hub when online, else the revision name itself."""
    import re

    from huggingface_hub import constants

    name = revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", name):
        return name
    ref = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{model_id.replace('/', '--')}" / "refs" / name
    try:
        return ref.read_text().strip()
    except OSError:
        pass
    if not constants.is_offline_mode():
        try:
            from huggingface_hub import HfApi

            return HfApi().model_info(model_id, revision=name).sha or name
        except Exception as err:  # noqa: BLE001 - no network, no such repo: the name is the best key left
            logger.info("Could not resolve revision %r of %s (%s): keyed by the name.", name, model_id, err)
    return name


def checkpoint_fingerprint(
    model_name_or_path: str, revision: str | None = None, commit: str | None = None, cache_dir: str | None = None
) -> dict[str, Any]:
    """What identifies a checkpoint's weights: local files' names, sizes and mtimes, or the Hub id and the commit.

    Args:
        model_name_or_path (`str`): `--model`.
        revision (`str`, *optional*): `--revision` (a branch such as `main` moves: it is resolved to its commit).
        commit (`str`, *optional*): the commit the weights were loaded from, when known (`config._commit_hash`).
        cache_dir (`str`, *optional*): the Hugging Face cache the model was downloaded to (`--cache-dir`).
    """
    path = Path(os.path.expanduser(model_name_or_path))
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".bin", ".pth"))
        return {
            "path": str(path.resolve()),
            "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files],
        }
    return {"hub_id": model_name_or_path, "revision": commit or resolve_revision(model_name_or_path, revision, cache_dir)}


def model_cache_key(
    model_name_or_path: str, revision: str | None, processor: Any, hooked: list[str], commit: str | None = None
) -> str:
    """Cache key of (checkpoint, preprocessing, hook point); `commit` as in `checkpoint_fingerprint`."""
    to_dict = getattr(processor, "to_dict", None)
    preprocessing = to_dict() if callable(to_dict) else repr(processor)
    payload = {
        "version": FEATURE_CACHE_VERSION,
        "checkpoint": checkpoint_fingerprint(model_name_or_path, revision, commit),
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


def _read_shard(shard: Path) -> tuple[list[str], np.ndarray, str | None]:
    """(keys, features, None), or ([], empty, why the shard cannot be used)."""
    try:
        with np.load(shard) as data:
            keys, features = data["keys"].tolist(), np.asarray(data["features"])
    except Exception as err:  # noqa: BLE001 - BadZipFile (bad CRC, truncated), EOFError, OSError, KeyError, ...
        return [], np.zeros((0, 0)), f"unreadable: {type(err).__name__}: {err}"
    if features.ndim != 2 or len(keys) != len(features):
        return [], features, f"{len(keys)} keys for features of shape {features.shape}"
    if not np.isfinite(features).all():
        return [], features, "non-finite values"
    if len(features) and not np.abs(features).sum(axis=1).all():
        return [], features, "all-zero vectors"
    return keys, features, None


class FeatureCache:
    """Feature vectors by image key for one model key, stored as immutable `.npz` shards.

    Args:
        cache_dir (`str`): the root cache directory.
        model_key (`str`): the model cache key (see `model_cache_key`).
    """

    def __init__(self, cache_dir: str, model_key: str) -> None:
        self.directory = Path(os.path.expanduser(cache_dir)) / model_key
        self._vectors: dict[str, np.ndarray] | None = None

    def load(self, dim: int | None = None) -> dict[str, np.ndarray]:
        """Every cached vector of this model key, by image key (read from the shards once, then kept).

        A shard that cannot be read, or holds vectors that are not `dim` wide, not finite or all zero, is removed
        with a warning: its images are then computed again.
        """
        if self._vectors is None:
            self._vectors = {}
            for shard in sorted(self.directory.glob("shard-*.npz")) if self.directory.is_dir() else []:
                keys, features, problem = _read_shard(shard)
                if problem is None and dim is not None and features.shape[1] != dim:
                    problem = f"vectors of size {features.shape[1]}, the model gives {dim}"
                if problem is not None:
                    self._discard(shard, problem)
                    continue
                self._vectors.update(zip(keys, features))
        return self._vectors

    def clear(self, reason: str) -> None:
        """Removes every shard of this model key (its vectors disagree with the model), with a warning."""
        for shard in sorted(self.directory.glob("shard-*.npz")) if self.directory.is_dir() else []:
            self._discard(shard, reason)
        self._vectors = {}

    @staticmethod
    def _discard(shard: Path, problem: str) -> None:
        # Our own file, and a bad one: removing it lets the next write put a good shard in its place.
        logger.warning("Feature cache shard %s is bad (%s): removed, its images are computed again.", shard, problem)
        try:
            shard.unlink(missing_ok=True)
        except OSError as err:  # a read-only shared cache: skipped on every load instead
            logger.warning("Could not remove %s (%s).", shard, err)

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

"""The on-disk cache of frozen backbone features: one vector per (model key, image key), in immutable shards.

Cache layout: `<cache_dir>/<model key>/shard-<hash>.features.npy` (float32, one row per image) and
`shard-<hash>.keys.npy` (the image keys in row order, fixed-width unicode), `<hash>` a checksum of both. Features are
read memory-mapped: RAM holds only an index image key -> (shard, row). Old-format shards (`shard-<hash>.npz`, arrays
`keys` and `features`) are converted to this layout when first read (kept in memory when the cache is read-only).
The model key hashes the checkpoint (local weight files' names, sizes and modification times, or
the Hub id and the commit its revision resolves to), the image processor's settings and the hooked module; the image key hashes the encoded
image bytes. A changed checkpoint or preprocessing therefore misses the cache, while another split, seed or fold
of the same images reuses it. Shards are written atomically (features first, keys last: a shard whose keys file
exists is complete) and never rewritten, so parallel runs can share a cache. What is read back is checked, a chunk
at a time (readable files, one row of the expected size per key, finite, no all-zero vector, the checksum):
a bad shard is removed with a warning and its images computed again.
Next to them, `throughput.json` keeps the forward throughput a feature pass measured on this machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Bump when the meaning of a cached vector changes (hook point, dtype, preprocessing path).
FEATURE_CACHE_VERSION = 1
THROUGHPUT_FILE = "throughput.json"
KEYS_SUFFIX, FEATURES_SUFFIX = ".keys.npy", ".features.npy"
# Bytes of a shard checked at a time: the check reads every shard once, never a whole big one into RAM at once.
SCAN_BYTES = 64 << 20


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


class CachedVectors(Mapping[str, np.ndarray]):
    """Feature vectors by image key: an index key -> (shard, row) over shards that are memory-mapped files (or
    in-memory arrays), read only when a vector is asked for. A key held by several shards reads from the latest."""

    def __init__(self) -> None:
        self._shards: list[np.ndarray] = []
        self._index: dict[str, tuple[int, int]] = {}

    def append(self, keys: Sequence[str], features: np.ndarray) -> None:
        """Adds a shard: `features` holds one row per key."""
        shard = len(self._shards)
        self._shards.append(features)
        self._index.update((key, (shard, row)) for row, key in enumerate(keys))

    def __getitem__(self, key: str) -> np.ndarray:
        shard, row = self._index[key]
        return self._shards[shard][row]

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    @property
    def dim(self) -> int | None:
        """The vector size, `None` while no shard is held."""
        return int(self._shards[-1].shape[1]) if self._shards else None

    def gather(self, keys: Sequence[str]) -> np.ndarray:
        """The vectors of `keys` as one float32 `[len(keys), dim]` matrix (`KeyError` for a key not held)."""
        if not len(keys):
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        where = np.array([self._index[key] for key in keys], dtype=np.int64)
        matrix = np.empty((len(keys), self.dim or 0), dtype=np.float32)
        # One fancy-indexed read per shard rather than one row view per key.
        order = np.argsort(where[:, 0], kind="stable")
        for group in np.split(order, np.flatnonzero(np.diff(where[order, 0])) + 1):
            matrix[group] = self._shards[where[group[0], 0]][where[group, 1]]
        return matrix


def _shard_paths(directory: Path, name: str) -> tuple[Path, Path]:
    """(keys file, features file) of shard `name`."""
    return directory / f"shard-{name}{KEYS_SUFFIX}", directory / f"shard-{name}{FEATURES_SUFFIX}"


def _features_path(keys_path: Path) -> Path:
    """The features file of the shard whose keys file is `keys_path`."""
    return keys_path.with_name(keys_path.name[: -len(KEYS_SUFFIX)] + FEATURES_SUFFIX)


def _check(keys: np.ndarray, features: np.ndarray, dim: int | None, checksum: str | None = None) -> str | None:
    """Why the shard (`features` possibly memory-mapped) cannot be used, or `None`; reads it a chunk at a time."""
    if keys.ndim != 1 or keys.dtype.kind != "U":
        return f"keys of type {keys.dtype} and shape {keys.shape}, not a list of strings"
    if features.ndim != 2 or len(keys) != len(features):
        return f"{len(keys)} keys for features of shape {features.shape}"
    if features.dtype != np.float32:
        return f"{features.dtype} vectors, not float32"
    if dim is not None and features.shape[1] != dim:
        return f"vectors of size {features.shape[1]}, the model gives {dim}"
    digest = hashlib.sha1(keys.tobytes())
    step = max(1, SCAN_BYTES // max(1, features.shape[1] * features.itemsize))
    for start in range(0, len(features), step):
        chunk = np.ascontiguousarray(features[start : start + step])
        if not np.isfinite(chunk).all():
            return "non-finite values"
        if not chunk.any(axis=1).all():
            return "all-zero vectors"
        digest.update(chunk)
    if checksum is not None and digest.hexdigest()[: len(checksum)] != checksum:
        return "contents differ from the checksum in its name (corrupted)"
    return None


def _open_shard(keys_path: Path, dim: int | None) -> tuple[np.ndarray, np.ndarray] | str | None:
    """(keys, memory-mapped features), or why the shard cannot be used, or `None` if it is gone (removed by a
    parallel run between listing and reading)."""
    features_path = _features_path(keys_path)
    try:
        keys = np.load(keys_path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 - ValueError (bad header, truncated), OSError, ...
        return f"unreadable keys: {type(err).__name__}: {err}"
    try:
        features = np.load(features_path, mmap_mode="r", allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - truncated ("mmap length is greater than file size"), missing, ...
        return f"unreadable features: {type(err).__name__}: {err}"
    # A bad shard's mapping is dropped on return: an open one would keep the files from being removed on Windows.
    problem = _check(keys, features, dim, checksum=keys_path.name[len("shard-") : -len(KEYS_SUFFIX)])
    return (keys, features) if problem is None else problem


def _read_npz(shard: Path) -> tuple[np.ndarray, np.ndarray, str | None] | None:
    """An old-format shard, read into memory: (keys, features, None or why it cannot be used), `None` if gone."""
    try:
        with np.load(shard, allow_pickle=False) as data:
            keys, features = data["keys"], np.asarray(data["features"])
    except FileNotFoundError:
        return None  # converted by a parallel run: its new shard is listed after the old ones
    except Exception as err:  # noqa: BLE001 - BadZipFile (bad CRC, truncated), EOFError, OSError, KeyError, ...
        return np.zeros(0, dtype=str), np.zeros((0, 0), dtype=np.float32), f"unreadable: {type(err).__name__}: {err}"
    if features.dtype.kind == "f" and features.dtype != np.float32:
        features = features.astype(np.float32)
    return keys, features, None


def _write_shard(directory: Path, keys: Sequence[str], features: np.ndarray) -> Path:
    """Writes a new-format shard atomically (features first, keys last) and returns its features file."""
    keys_array = np.asarray(keys, dtype=str)
    features = np.ascontiguousarray(features, dtype=np.float32)
    digest = hashlib.sha1(keys_array.tobytes())
    digest.update(features)
    keys_path, features_path = _shard_paths(directory, digest.hexdigest()[:16])
    for array, path in ((features, features_path), (keys_array, keys_path)):
        # A unique temp name: parallel runs (other hosts too) may write the same shard at once.
        tmp = directory / f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{path.name}"
        try:
            with open(tmp, "wb") as f:
                np.save(f, array, allow_pickle=False)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return features_path


class FeatureCache:
    """Feature vectors by image key for one model key, stored as immutable shards read memory-mapped.

    Args:
        cache_dir (`str`): the root cache directory.
        model_key (`str`): the model cache key (see `model_cache_key`).
    """

    def __init__(self, cache_dir: str, model_key: str) -> None:
        self.directory = Path(os.path.expanduser(cache_dir)) / model_key
        self._vectors: CachedVectors | None = None

    def load(self, dim: int | None = None) -> CachedVectors:
        """Every cached vector of this model key, by image key: the shards are indexed once (the index kept) and
        their vectors read memory-mapped when asked for (`CachedVectors.gather`). Old `.npz` shards are converted.

        A shard that cannot be read, or holds vectors that are not `dim` wide, not finite or all zero, or that differ
        from its checksum, is removed with a warning: its images are then computed again.
        """
        if self._vectors is None:
            self._vectors = CachedVectors()
            if self.directory.is_dir():
                self._convert_old_shards(self._vectors, dim)
                for keys_path in sorted(self.directory.glob(f"shard-*{KEYS_SUFFIX}")):
                    opened = _open_shard(keys_path, dim)
                    if isinstance(opened, str):
                        self._discard(keys_path, opened)
                    elif opened is not None:
                        self._vectors.append(opened[0].tolist(), opened[1])
        return self._vectors

    def _convert_old_shards(self, vectors: CachedVectors, dim: int | None) -> None:
        """Rewrites every valid `.npz` shard in the new layout (one at a time in RAM) and removes it; in a cache this
        process cannot write, its vectors are kept in `vectors`, in memory, as before."""
        for shard in sorted(self.directory.glob("shard-*.npz")):
            read = _read_npz(shard)
            if read is None:
                continue
            keys, features, problem = read
            problem = problem or _check(keys, features, dim)
            if problem is not None:
                self._discard(shard, problem)
                continue
            try:
                _write_shard(self.directory, keys.tolist(), features)
            except OSError as err:
                logger.info("Feature cache shard %s kept in the old format (%s): read into memory.", shard, err)
                vectors.append(keys.tolist(), features)
                continue
            try:
                shard.unlink(missing_ok=True)  # the new shard is listed (and checked) next
            except OSError as err:
                logger.warning("Could not remove %s, converted (%s).", shard, err)

    def clear(self, reason: str) -> None:
        """Removes every shard of this model key (its vectors disagree with the model), with a warning."""
        self._vectors = CachedVectors()  # drops this process's mappings of the files removed below
        if self.directory.is_dir():
            for shard in sorted([*self.directory.glob(f"shard-*{KEYS_SUFFIX}"), *self.directory.glob("shard-*.npz")]):
                self._discard(shard, reason)

    @staticmethod
    def _discard(shard: Path, problem: str) -> None:
        # Our own file, and a bad one: removing it lets the next write put a good shard in its place. The keys file
        # goes first, so that what is left is never taken for a complete shard.
        logger.warning("Feature cache shard %s is bad (%s): removed, its images are computed again.", shard, problem)
        paths = [shard]
        if shard.name.endswith(KEYS_SUFFIX):
            paths.append(_features_path(shard))
        for path in paths:
            try:
                path.unlink(missing_ok=True)
            except OSError as err:  # a read-only shared cache: skipped on every load instead
                logger.warning("Could not remove %s (%s).", path, err)

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
        """Writes `features` (one row per key) as a new shard, atomically, and indexes it (read memory-mapped)."""
        if not keys:
            return
        vectors = self.load()  # before the write: a first load would index the new shard too
        self.directory.mkdir(parents=True, exist_ok=True)
        features_path = _write_shard(self.directory, keys, features)
        vectors.append(keys, np.load(features_path, mmap_mode="r", allow_pickle=False))

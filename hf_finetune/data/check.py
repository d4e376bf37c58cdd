"""Decode every image once before training, drop the ones that cannot be read, and say which and why.

`datasets` decodes images lazily, so a corrupt, truncated or empty file would otherwise only fail in the middle of
an epoch. The scan reads the raw files/bytes (`datasets.Image(decode=False)`), decodes each one the way training
will (open, full decode, conversion to RGB) in a thread pool (Pillow releases the GIL while decoding), and returns
the dataset without the failures plus a list of `{file, split, kind, reason}` records that `run_config.json` keeps.
For a local folder it also records what its listing (`layout.py`) left out: files that are not images (e.g.
`notes.txt` in a class folder), file names that are not valid UTF-8, and class folders without a single image.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from hf_finetune.data.images import open_image, to_rgb
from hf_finetune.data.layout import NOT_AN_IMAGE, FolderLayout

logger = logging.getLogger(__name__)

# Lines of the skipped-file list written to the log; the full list always goes to run_config.json.
_LOG_LIMIT = 50
_BATCH = 512
UNREADABLE = "unreadable"


@dataclass
class ImageCheckReport:
    """What the scan found.

    Attributes:
        skipped_files (`list[dict]`): one `{"file", "split", "kind", "reason"}` per file left out of the run: kind
            `unreadable` (an image that cannot be decoded), `not_an_image` (local folders: e.g. `notes.txt` in a
            class folder) or `bad_file_name` (a name that is not valid UTF-8).
        empty_class_folders (`list[str]`): folders beside the class folders that hold no image at all.
        num_checked (`int`): images decoded.
        seconds (`float`): wall time of the scan.
    """

    skipped_files: list[dict[str, str]] = field(default_factory=list)
    empty_class_folders: list[str] = field(default_factory=list)
    num_checked: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Counts for `run_config.json` (the file list is recorded separately)."""
        unreadable = sum(1 for entry in self.skipped_files if entry["kind"] == UNREADABLE)
        return {
            "checked": self.num_checked,
            "skipped": len(self.skipped_files),
            "unreadable_images": unreadable,
            "non_image_files": sum(1 for entry in self.skipped_files if entry["kind"] == NOT_AN_IMAGE),
            "empty_class_folders": self.empty_class_folders,
            "seconds": round(self.seconds, 3),
        }


def image_problem(path: str | None = None, data: bytes | None = None) -> str | None:
    """Why an image cannot be used for training, or `None` when it decodes.

    Decodes the image the way training does (`image_cache.open_image`, then `to_rgb`): fully, since a truncated JPEG
    passes `Image.verify()` and only fails on `load()`. JPEGs decode at 1/8 scale (`draft`), which still reads every
    block of the file but skips most of the pixel work.

    Args:
        path (`str`, *optional*): a file to check.
        data (`bytes`, *optional*): the encoded image, when it lives in the dataset rather than in a file.
    """
    try:
        if (len(data) if data is not None else os.path.getsize(path)) == 0:
            return "empty file (0 bytes)"
        to_rgb(open_image({"path": path, "bytes": data}, min_side=1))
    except Exception as err:  # noqa: BLE001 - any decoder error (OSError, SyntaxError, struct.error, ...) would crash training
        return f"cannot be decoded ({type(err).__name__}: {err})"
    return None


def _check_one(value: dict[str, Any]) -> str | None:
    return image_problem(path=value.get("path"), data=value.get("bytes"))


def find_unreadable_images(dataset: Any, image_column: str, num_threads: int | None = None) -> list[tuple[int, str, str]]:
    """Decodes every image of `dataset[image_column]`; returns `(row, file, reason)` for each one that fails.

    Args:
        dataset (`datasets.Dataset`): the split to scan.
        image_column (`str`): its `datasets.Image` column.
        num_threads (`int`, *optional*): decoder threads (default: the CPU count, at most 8).
    """
    import datasets

    raw = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    threads = num_threads or min(8, os.cpu_count() or 1)
    failures = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start, batch in zip(range(0, len(raw), _BATCH), raw.iter(batch_size=_BATCH)):
            values = batch[image_column]
            for offset, (value, reason) in enumerate(zip(values, pool.map(_check_one, values))):
                if reason is not None:
                    failures.append((start + offset, value.get("path") or f"row {start + offset}", reason))
    return failures


def drop_unreadable_images(raw: Any, image_column: str, layout: FolderLayout | None = None) -> tuple[Any, ImageCheckReport]:
    """Scans every split of `raw` and returns it without the images that cannot be decoded.

    Args:
        raw (`datasets.DatasetDict`): the loaded dataset.
        image_column (`str`): its image column.
        layout (`FolderLayout`, *optional*): the listing of the local folder it came from, whose skipped files and
            empty class folders the report takes over.

    Returns:
        `(datasets.DatasetDict, ImageCheckReport)`.
    """
    import datasets

    start = time.perf_counter()
    report = ImageCheckReport()
    cleaned = {}
    for split_name, split in raw.items():
        failures = find_unreadable_images(split, image_column)
        if failures and len(failures) == len(split):
            _, file, reason = failures[0]
            raise ValueError(
                f"None of the {len(split)} images of the '{split_name}' split can be decoded (the first, {file}: "
                f"{reason}). Check that column {image_column!r} holds the images (`--image-column`) and that the "
                "files are images."
            )
        report.num_checked += len(split)
        bad_rows = {row for row, _, _ in failures}
        report.skipped_files += [
            {"file": file, "split": split_name, "kind": UNREADABLE, "reason": reason} for _, file, reason in failures
        ]
        cleaned[split_name] = split.select([i for i in range(len(split)) if i not in bad_rows]) if bad_rows else split
    if layout is not None:
        report.skipped_files += layout.skipped
        report.empty_class_folders = list(layout.empty_class_folders)
    report.seconds = time.perf_counter() - start
    _log(report)
    return datasets.DatasetDict(cleaned), report


def _log(report: ImageCheckReport) -> None:
    logger.info("Checked %d images in %.2fs.", report.num_checked, report.seconds)
    if report.skipped_files:
        lines = [f"  {e['file']}: {e['reason']}" for e in report.skipped_files[:_LOG_LIMIT]]
        if len(report.skipped_files) > _LOG_LIMIT:
            lines.append(f"  ... and {len(report.skipped_files) - _LOG_LIMIT} more")
        logger.warning(
            "Skipping %d file(s) that cannot be used (full list in run_config.json `skipped_files`); fix or remove "
            "them to train on them:\n%s",
            len(report.skipped_files),
            "\n".join(lines),
        )
    for folder in report.empty_class_folders:
        logger.warning("Folder %s holds no image: it is not a class of this run. Add images to it or remove it.", folder)

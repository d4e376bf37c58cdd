"""Read a local image folder: which files are images of which class in which split, by one documented rule.

The rule (docs/bad_inputs.md):

- Splits come from folder names only: `train/` (or `training/`), `val/` `valid/` `validation/` `dev/`, `test/`
  (`testing/`) directly under `--dataset`, when a `train/` folder is there. Otherwise the whole folder is the train
  split. Tokens in file names (`train_01.jpg`, `test_results.json`) never decide anything.
- The class of an image is the name of the folder `--label-depth` levels below the split (default 1: the first
  level). Deeper folders are flattened into that class (`cat/2019/x.jpg` is a `cat`); images above the class level are
  refused with the layout shown.
- Files directly in a split folder (README, results, notes) belong to no class and are not read. Hidden files and
  folders (name starts with a dot) are not read; a hidden folder holding images is reported.
- Symlinked files and folders are read through the link (a folder is entered once); a file name that is not valid
  UTF-8 is skipped and counted.

`datasets`' `imagefolder` builder infers splits from tokens in file names and labels from the deepest folder, so the
listing made here is handed to `datasets` as explicit rows instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

# The image types `datasets.Image` decodes (Pillow's readers), matched on the lower-cased extension.
IMAGE_EXTENSIONS = frozenset({
    ".apng", ".blp", ".bmp", ".bufr", ".bw", ".cur", ".dcx", ".dds", ".dib", ".emf", ".eps", ".fit", ".fits",
    ".flc", ".fli", ".ftc", ".ftu", ".gbr", ".gif", ".grib", ".icb", ".icns", ".ico", ".iim", ".im", ".j2c", ".j2k",
    ".jfif", ".jp2", ".jpc", ".jpe", ".jpeg", ".jpf", ".jpg", ".jpx", ".msp", ".pbm", ".pcd", ".pcx", ".pgm",
    ".png", ".pnm", ".ppm", ".ps", ".psd", ".pxr", ".ras", ".rgb", ".rgba", ".sgi", ".tga", ".tif", ".tiff", ".vda",
    ".vst", ".webp", ".wmf", ".xbm", ".xpm"
})
SPLIT_FOLDERS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing"),
}
NOT_AN_IMAGE, BAD_NAME = "not_an_image", "bad_file_name"
# Folders every tool leaves around: never reported as hidden classes.
_NOISE_FOLDERS = frozenset({"__MACOSX", "__pycache__"})
_SHOWN = 8  # lines of a layout shown in an error


@dataclass
class FolderLayout:
    """What `scan_image_folder` found.

    Attributes:
        root (`str`): the `--dataset` folder.
        label_depth (`int`): the folder level that names the class.
        files (`dict[str, list[tuple[str, str]]]`): split -> `(path, class name)` of every image, sorted.
        skipped (`list[dict]`): files left out and why (`kind` `not_an_image` or `bad_file_name`).
        empty_class_folders (`list[str]`): class folders holding no image.
        hidden_folders (`list[str]`): hidden folders (name starts with a dot) that hold images, not read.
        flattened (`dict[str, int]`): images taken from folders below their class folder, by class.
        ignored_folders (`list[str]`): folders beside the split folders that are no split.
    """

    root: str
    label_depth: int
    files: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    empty_class_folders: list[str] = field(default_factory=list)
    hidden_folders: list[str] = field(default_factory=list)
    flattened: dict[str, int] = field(default_factory=dict)
    ignored_folders: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        """Every class name of every split, sorted."""
        return sorted({label for rows in self.files.values() for _, label in rows})

    def summary(self) -> dict[str, Any]:
        """What `run_config.json` records about the folder (`splits.layout`)."""
        return {
            "label_depth": self.label_depth,
            "split_folders": sorted(self.files) if set(self.files) != {"train"} or self.ignored_folders else [],
            "flattened_nested_folders": self.flattened,
            "hidden_folders_not_read": self.hidden_folders,
            "ignored_folders": self.ignored_folders,
            "bad_file_names": sum(1 for entry in self.skipped if entry["kind"] == BAD_NAME),
        }

    def fingerprint(self) -> dict[str, dict[str, Any]]:
        """Per split: number of images, total bytes and a hash of every (path, size, mtime); a resume compares it."""
        out = {}
        for split, rows in sorted(self.files.items()):
            digest, total = hashlib.sha1(), 0
            for path, label in rows:
                stat = os.stat(path)
                total += stat.st_size
                digest.update(f"{os.path.relpath(path, self.root)}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            out[split] = {"images": len(rows), "bytes": total, "sha1": digest.hexdigest()}
        return out


def _valid_name(name: str) -> bool:
    """False for a name that is not valid UTF-8 (Python keeps the bad bytes as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(name: str) -> str:
    return os.fsencode(name).decode("utf-8", errors="backslashreplace")


def _split_roots(root: str) -> tuple[dict[str, str], list[str]]:
    """(canonical split -> folder, folders beside the split folders): split folders only when `train/` exists."""
    entries = sorted(e for e in os.listdir(root) if not e.startswith(".") and os.path.isdir(os.path.join(root, e)))
    by_name = {entry.lower(): entry for entry in entries}
    found = {
        split: os.path.join(root, next(by_name[n] for n in names if n in by_name))
        for split, names in SPLIT_FOLDERS.items()
        if any(n in by_name for n in names)
    }
    if "train" not in found:
        if found:
            named = sorted(os.path.basename(path) + "/" for path in found.values())
            raise ValueError(
                f"The dataset {root!r} has split folder(s) {named} but no train/ folder. Layout found:\n"
                f"{describe_layout(root)}\nPut the training images under train/<class>/ (val/ and test/ are "
                "optional), or, if these are class names, rename them: with no train/ folder every folder is a class."
            )
        return {"train": root}, []
    used = {os.path.basename(path) for path in found.values()}
    return found, [os.path.join(root, e) for e in entries if e not in used]


def _walk(top: str):
    """`os.walk` that follows symlinked folders, entering each real folder once (no cycles), without resolving the
    paths it yields (a linked image is listed under its link, never under its target's folder)."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        yield dirpath, dirnames, sorted(filenames)


def _has_image(folder: str) -> bool:
    return any(
        os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS for _, _, names in _walk(folder) for name in names
    )


def _scan_split(layout: FolderLayout, split: str, top: str) -> None:
    """Lists one split folder into `layout` (images by class, skipped files, empty/hidden folders)."""
    rows: list[tuple[str, str]] = []
    above: list[str] = []
    images_per_class_dir: dict[str, int] = {}
    for dirpath, dirnames, filenames in _walk(top):
        rel = os.path.relpath(dirpath, top)
        parts = [] if rel == "." else rel.split(os.sep)
        for name in list(dirnames):
            path = os.path.join(dirpath, name)
            if not _valid_name(name):
                layout.skipped.append({"file": _shown(path), "split": split, "kind": BAD_NAME,
                                       "reason": "folder name is not valid UTF-8: rename it to read its images"})
                dirnames.remove(name)
            elif name.startswith(".") or name in _NOISE_FOLDERS:
                if name.startswith(".") and _has_image(path):
                    layout.hidden_folders.append(path)
                dirnames.remove(name)
        if len(parts) == layout.label_depth:
            images_per_class_dir.setdefault(dirpath, 0)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if name.startswith(".") or not parts:
                continue  # hidden files, and files next to the class folders (README, results): no class's images
            if not _valid_name(name):
                layout.skipped.append({"file": _shown(path), "split": split, "kind": BAD_NAME,
                                       "reason": "file name is not valid UTF-8: rename the file to train on it"})
                continue
            if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                if name not in ("metadata.csv", "metadata.jsonl", "metadata.parquet"):
                    layout.skipped.append({"file": path, "split": split, "kind": NOT_AN_IMAGE,
                                           "reason": "not an image file type"})
                continue
            if len(parts) < layout.label_depth:
                above.append(path)
                continue
            label = parts[layout.label_depth - 1]
            rows.append((path, label))
            class_dir = os.path.join(top, *parts[: layout.label_depth])
            images_per_class_dir[class_dir] = images_per_class_dir.get(class_dir, 0) + 1
            if len(parts) > layout.label_depth:
                layout.flattened[label] = layout.flattened.get(label, 0) + 1
    if above:
        raise ValueError(
            f"{len(above)} image(s) of {top!r} sit above the class level `--label-depth` {layout.label_depth} (e.g. "
            f"{above[0]!r}): every image must be inside a folder {layout.label_depth} level(s) below the split "
            f"folder, whose name is its class. Layout found:\n{describe_layout(top)}\nMove those images into a class "
            "folder, or pass a smaller `--label-depth`."
        )
    layout.empty_class_folders += sorted(d for d, n in images_per_class_dir.items() if n == 0)
    layout.files[split] = sorted(rows)


def describe_layout(top: str, depth: int = 3) -> str:
    """A few lines showing the folders under `top` (`name/ (N files)`), for error messages."""
    lines: list[str] = []
    for dirpath, dirnames, filenames in _walk(top):
        rel = os.path.relpath(dirpath, top)
        level = 0 if rel == "." else rel.count(os.sep) + 1
        dirnames[:] = [d for d in dirnames if not d.startswith(".")] if level < depth else []
        if rel != ".":
            lines.append(f"{'  ' * level}{_shown(os.path.basename(dirpath))}/ ({len(filenames)} files)")
        if len(lines) > _SHOWN:
            lines[_SHOWN:] = ["  ..."]
            break
    return "\n".join(lines) or "  (no folders)"


def scan_image_folder(root: str, label_depth: int = 1) -> FolderLayout:
    """Lists the images of a local folder by split and class (the rule in this module's docstring).

    Args:
        root (`str`): the `--dataset` folder.
        label_depth (`int`, defaults to 1): the folder level below each split whose name is the class.

    Raises:
        `ValueError`: images above the class level, a split folder without a train folder, or fewer than 2 classes.
    """
    layout = FolderLayout(root=root, label_depth=label_depth)
    split_roots, layout.ignored_folders = _split_roots(root)
    for split, top in split_roots.items():
        _scan_split(layout, split, top)
    if layout.ignored_folders:
        logger.warning(
            "Folder(s) %s of %s are neither train/, val/ nor test/: not read (split folders were found beside them).",
            [os.path.basename(p) for p in layout.ignored_folders], root,
        )
    for folder in layout.hidden_folders:
        logger.warning("Hidden folder %s holds images but is not read (its name starts with a dot): rename it to "
                       "train on them.", folder)
    if layout.flattened:
        logger.info("Images in folders below their class folder, counted in their class: %s", layout.flattened)
    names = layout.classes
    if len(names) < 2:
        raise ValueError(
            f"The dataset {root!r} has {'a single class ' + repr(names) if names else 'no class folder with images'}; "
            f"classification needs at least 2 classes, one sub-folder of images per class (`--label-depth` "
            f"{label_depth}: the class is the folder name {label_depth} level(s) below the dataset or its train/ "
            f"val/ test/ folders). Layout found:\n{describe_layout(root)}"
        )
    return layout


def layout_to_datasets(layout: FolderLayout) -> Any:
    """The listing as a `datasets.DatasetDict` (`image` paths decoded lazily, one `label` `ClassLabel` for all)."""
    import datasets

    names = layout.classes
    index = {name: i for i, name in enumerate(names)}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict(
            {"image": [path for path, _ in rows], "label": [index[label] for _, label in rows]}, features=features
        )
        for split, rows in layout.files.items()
    })

"""The data audit: what a run's images are (counts per class and split, sizes, modes, grayscale share), which are
duplicated within or across splits, and which labels the frozen features contradict, from one cached feature pass.

    audit = audit_data(splits, features, seed=42)             # duplicates.py + suspects.py on the cached features
    write_data_audit(audit, splits, output_dir)                 # data_audit.json, suspect_labels.png, duplicate_pairs.png
    splits, actions = filter_splits(splits, audit, dedupe=True, drop_suspects=10)   # before training, recorded
    report["leakage"] = leakage_effect(...)                     # test metrics with and without the test's twins

The test split is never filtered for its labels: a suspect test label is listed, and only `--dedupe` removes test
images (the held-out copies of training images).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hf_finetune.config.files import (
    DATA_AUDIT_FILE,
    DUPLICATE_PAIRS_PLOT,
    SUSPECT_LABELS_PLOT,
)
from hf_finetune.data.images import open_image, open_image_header, to_rgb
from hf_finetune.evaluation.metrics import classification_report
from hf_finetune.probing.audit_gallery import plot_duplicate_pairs, plot_suspect_labels
from hf_finetune.probing.duplicates import (
    NEAR_DUPLICATE_THRESHOLD,
    SPLIT_ORDER,
    DuplicatePair,
    count_by_kind,
    find_duplicates,
    held_out_twins,
)
from hf_finetune.probing.feature_cache import image_keys
from hf_finetune.probing.features import SplitFeatures
from hf_finetune.probing.linear_probe import LinearProbe
from hf_finetune.probing.suspects import (
    Suspect,
    find_suspects,
    out_of_sample_probabilities,
)

logger = logging.getLogger(__name__)

AUDIT_VERSION = 1
RECORDED_PAIRS = 100  # pairs listed in data_audit.json (all are counted)
RECORDED_SUSPECTS = 50  # suspects listed in data_audit.json (all are counted)
GRAYSCALE_SAMPLE = 100  # RGB images per split decoded to tell RGB-encoded grayscale apart
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


@dataclass
class DataAudit:
    """What `audit_data` found.

    Attributes:
        labels (`list[str]`): class names.
        counts (`dict`): images per class in each split.
        images (`dict`): per split, the size and mode distribution and the grayscale share.
        pairs (`list[DuplicatePair]`): exact and near duplicate pairs, most similar first.
        crowded (`dict[str, list[int]]`): featureless images (too many look-alikes to be anyone's copy), by split.
        suspects (`list[Suspect]`): flagged labels, most suspect first.
        threshold (`float`): the near-duplicate threshold used.
        folds (`int`): cross-validation folds of the suspect-label probe (0: too few images, not run).
        paths (`dict[str, list]`): every image's source path (None for in-memory bytes), by split.
        seconds (`float`): wall time of the audit (feature pass excluded).
        features (`dict`): what feature pass it read (`SplitFeatures.summary`).
    """

    labels: list[str]
    counts: dict[str, dict[str, int]]
    images: dict[str, dict[str, Any]]
    pairs: list[DuplicatePair]
    crowded: dict[str, list[int]]
    suspects: list[Suspect]
    threshold: float
    folds: int
    paths: dict[str, list[str | None]]
    seconds: float = 0.0
    features: dict[str, Any] = field(default_factory=dict)

    @property
    def twins(self) -> dict[str, list[int]]:
        """Validation / test rows with a twin in an earlier split (`duplicates.held_out_twins`)."""
        return held_out_twins(self.pairs)

    def summary(self) -> dict[str, Any]:
        """The compact record (`run_config.json` -> `data_audit`, the card): counts, no lists of pairs."""
        twins = self.twins
        return {
            "near_duplicate_threshold": self.threshold,
            "pairs_by_kind": count_by_kind(self.pairs),
            "test_with_twin": len(twins["test"]),
            "validation_with_twin": len(twins["validation"]),
            "crowded_images": {split: len(rows) for split, rows in self.crowded.items() if rows},
            "suspect_labels": dict(Counter(s.split for s in self.suspects)),
            "suspect_probe_folds": self.folds,
            "grayscale_share": {split: info["grayscale_share"] for split, info in self.images.items()},
            "seconds": round(self.seconds, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        """The whole record (`data_audit.json`)."""
        cross = [p for p in self.pairs if p.cross_split]
        within = [p for p in self.pairs if not p.cross_split]
        return {
            "version": AUDIT_VERSION,
            "labels": self.labels,
            "counts": self.counts,
            "images": self.images,
            "summary": self.summary(),
            "held_out_twins": self.twins,
            "crowded_images": self.crowded,
            "cross_split_pairs": [p.to_dict(self.paths) for p in cross[:RECORDED_PAIRS]],
            "within_split_pairs": [p.to_dict(self.paths) for p in within[:RECORDED_PAIRS]],
            "suspects": [self.suspect_record(s) for s in self.suspects[:RECORDED_SUSPECTS]],
            "features": self.features,
        }

    def suspect_record(self, suspect: Suspect) -> dict[str, Any]:
        """One suspect as `data_audit.json` lists it (class names, source path)."""
        return suspect.to_dict(self.labels, self.paths[suspect.split][suspect.row])


def _raw_images(split: Any) -> list[dict[str, Any]]:
    """The undecoded image values ({"path", "bytes"}) of a split."""
    import datasets

    raw = split.cast_column("image", datasets.Image(decode=False))
    raw.reset_format()
    return list(raw["image"])


def describe_images(refs: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Size and mode distribution of a split's images (headers only) and its grayscale share: grayscale modes, plus
    RGB images whose channels agree, judged on a seeded sample of `GRAYSCALE_SAMPLE` decoded RGB images."""
    sizes, modes, row_modes = Counter(), Counter(), []
    for ref in refs:
        with open_image_header(ref) as image:
            sizes[f"{image.width}x{image.height}"] += 1
            modes[image.mode] += 1
            row_modes.append(image.mode)
    colour_rows = [i for i, mode in enumerate(row_modes) if mode not in GRAY_MODES]
    gray = len(refs) - len(colour_rows)
    rng = np.random.default_rng(seed)
    sample = sorted(rng.choice(colour_rows, size=min(GRAYSCALE_SAMPLE, len(colour_rows)), replace=False).tolist()) if colour_rows else []
    encoded_gray = sum(channels_agree(open_image(refs[i])) for i in sample)
    # The sample's share of RGB-encoded grayscale, extended to every colour-mode image.
    share = (gray + (encoded_gray / len(sample) * len(colour_rows) if sample else 0.0)) / max(len(refs), 1)
    widths = [int(s.split("x")[0]) for s in sizes.elements()]
    heights = [int(s.split("x")[1]) for s in sizes.elements()]
    return {
        "num_images": len(refs),
        "sizes": dict(sizes.most_common(10)),
        "distinct_sizes": len(sizes),
        "width": _spread(widths),
        "height": _spread(heights),
        "modes": dict(modes.most_common()),
        "grayscale_share": round(float(share), 4),
    }


def channels_agree(image: Any) -> bool:
    """An RGB-encoded grayscale image: the channels differ by at most 3 levels anywhere (on a 32x32 thumbnail)."""
    small = np.asarray(image.convert("RGB").resize((32, 32)), dtype=np.int16)
    return bool(np.abs(small - small.mean(axis=2, keepdims=True)).max() <= 3)


def _spread(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    return {"min": int(min(values)), "median": int(np.median(values)), "max": int(max(values))}


def audit_data(
    splits: Any,
    features: SplitFeatures,
    *,
    seed: int = 0,
    threshold: float = NEAR_DUPLICATE_THRESHOLD,
    probe: LinearProbe | None = None,
) -> DataAudit:
    """Audits a run's splits on their cached head features.

    Args:
        splits (`DataSplits`): the run's splits.
        features (`SplitFeatures`): their cached head features (`compute_split_features`), rows in split order.
        seed (`int`, defaults to 0): cross-validation folds and sampling; the audit is deterministic for a seed.
        threshold (`float`, defaults to `NEAR_DUPLICATE_THRESHOLD`): `--near-duplicate-threshold`.
        probe (`LinearProbe`, *optional*): the run's probe on these features (its `C` is reused), else fitted.

    Returns:
        `DataAudit`.
    """
    start = time.perf_counter()
    refs = {name: _raw_images(getattr(splits, name)) for name in SPLIT_ORDER}
    keys = {name: image_keys(getattr(splits, name)) for name in SPLIT_ORDER}
    vectors = {name: getattr(features, name).features for name in SPLIT_ORDER}
    pairs, crowded = find_duplicates(keys, vectors, threshold)
    probabilities, folds = out_of_sample_probabilities(features, len(splits.labels), seed, probe)
    suspects = find_suspects(probabilities, features) if probabilities else []
    audit = DataAudit(
        labels=list(splits.labels),
        counts=splits.counts(),
        images={name: describe_images(refs[name], seed) for name in SPLIT_ORDER},
        pairs=pairs,
        crowded=crowded,
        suspects=suspects,
        threshold=threshold,
        folds=folds,
        paths={name: [ref.get("path") for ref in refs[name]] for name in SPLIT_ORDER},
        features=features.summary(),
    )
    audit.seconds = time.perf_counter() - start
    _log(audit)
    return audit


def _log(audit: DataAudit) -> None:
    summary = audit.summary()
    logger.info(
        "Data audit (%.1fs): duplicate pairs %s; suspect labels %s",
        audit.seconds, summary["pairs_by_kind"] or "none", summary["suspect_labels"] or "none",
    )
    if summary["test_with_twin"]:
        logger.warning(
            "%d test image(s) have an exact or near twin (centred cosine >= %.2f) in train or validation: the test "
            "score may be inflated (test_report.json -> leakage gives it with and without them). `--dedupe` drops "
            "them before training.", summary["test_with_twin"], audit.threshold,
        )


def write_data_audit(audit: DataAudit, splits: Any, output_dir: str) -> str:
    """Writes `data_audit.json` and the galleries `suspect_labels.png` and `duplicate_pairs.png`; returns the JSON's
    path."""
    os.makedirs(output_dir, exist_ok=True)
    record = audit.to_dict()
    path = os.path.join(output_dir, DATA_AUDIT_FILE)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)

    def image_of(split: str, row: int) -> Any:
        return to_rgb(open_image(_raw_images(getattr(splits, split).select([row]))[0]))

    plot_suspect_labels(record["suspects"], image_of, os.path.join(output_dir, SUSPECT_LABELS_PLOT))
    plot_duplicate_pairs(record["cross_split_pairs"], image_of, os.path.join(output_dir, DUPLICATE_PAIRS_PLOT))
    return path


def filter_splits(splits: Any, audit: DataAudit, dedupe: bool = False, drop_suspects: int = 0) -> tuple[Any, dict[str, Any]]:
    """The splits without the held-out copy of every cross-split pair (`dedupe`) and without the `drop_suspects`
    most suspect train / validation labels; and the record of what was dropped.

    Args:
        splits (`DataSplits`): the audited splits (not changed).
        audit (`DataAudit`): their audit.
        dedupe (`bool`, defaults to `False`): `--dedupe`.
        drop_suspects (`int`, defaults to 0): `--drop-suspect-labels`.

    Returns:
        `(DataSplits, actions)`: new splits (the same object when nothing is dropped) and `{action: [dropped]}`.
    """
    drop: dict[str, set[int]] = {name: set() for name in SPLIT_ORDER}
    actions: dict[str, Any] = {}
    if dedupe:
        twins = audit.twins
        for name in ("validation", "test"):
            drop[name].update(twins[name])
        actions["dedupe"] = [{"split": n, "row": r, "path": audit.paths[n][r]} for n in ("validation", "test") for r in twins[n]]
    if drop_suspects:
        chosen = [s for s in audit.suspects if s.split != "test"][:drop_suspects]
        for suspect in chosen:
            drop[suspect.split].add(suspect.row)
        actions["drop_suspect_labels"] = [audit.suspect_record(s) for s in chosen]
    if not any(drop.values()):
        return splits, actions
    kept = {
        name: getattr(splits, name).select([r for r in range(len(getattr(splits, name))) if r not in drop[name]])
        for name in SPLIT_ORDER
    }
    filtered = dataclasses.replace(splits, **kept, provenance=dict(splits.provenance))
    filtered.provenance["counts"] = filtered.counts()
    filtered.provenance["audit_dropped"] = {name: len(rows) for name, rows in drop.items() if rows}
    logger.info("Data audit: dropped before training %s", {name: len(rows) for name, rows in drop.items() if rows})
    return filtered, actions


def leakage_effect(test_twins: list[int], logits: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """The test metrics with and without the test images that have a twin in train or validation.

    Returns:
        `{"leakage": {...}}` (for `test_report.json`), or `{}` when no test image has a twin.
    """
    if not len(test_twins) or not len(labels):
        return {}
    predictions = logits.argmax(-1)
    keep = np.ones(len(labels), dtype=bool)
    keep[np.asarray(test_twins, dtype=np.int64)] = False
    everything = classification_report(labels, predictions, label_names)
    without = classification_report(labels[keep], predictions[keep], label_names) if keep.any() else None
    effect = {
        "test_with_twin": int((~keep).sum()),
        "twin_accuracy": round(float((predictions[~keep] == labels[~keep]).mean()), 4),
        "accuracy": {"all": everything["accuracy"], "without_twins": without["accuracy"] if without else None},
        "macro_f1": {"all": everything["macro_f1"], "without_twins": without["macro_f1"] if without else None},
    }
    if without:
        logger.warning(
            "Leakage: %d of %d test images have a twin in train/validation; test accuracy %.4f with them, %.4f "
            "without (macro-F1 %.4f vs %.4f).", effect["test_with_twin"], len(labels), everything["accuracy"],
            without["accuracy"], everything["macro_f1"], without["macro_f1"],
        )
    return {"leakage": effect}

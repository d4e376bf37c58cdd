"""Exact and near duplicates among a run's images, within a split and, above all, across splits.

Exact duplicates share the content hash of their encoded bytes (`feature_cache.image_keys`, the hash the feature
cache already keys its vectors by). Near duplicates are pairs whose cached head features have a cosine similarity
of at least a threshold, measured after centring the features on their mean: pretrained CNN features are
non-negative and all point roughly the same way, so raw cosine similarities of unrelated images are already high,
while centred ones spread from about 0 (unrelated) to 1 (the same picture resized, re-encoded or flipped).

A pair across splits (train-test, train-validation, validation-test) is a leak: the held-out copy measures memory,
not generalisation. `held_out_twins` lists those copies; `--dedupe` drops them before training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from hf_finetune.config.audit import NEAR_DUPLICATE_THRESHOLD

logger = logging.getLogger(__name__)

SPLIT_ORDER = ("train", "validation", "test")
# Near neighbours from which an image counts as crowded (featureless: like many images, a copy of none). A photo
# and its burst or augmented copies make groups of 2-4.
MAX_NEAR_TWINS = 3
# Similarities computed at once (float32): rows per block = this // images, so a block stays near 64 MB.
BLOCK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class DuplicatePair:
    """Two images that are the same picture (exact) or nearly so.

    Attributes:
        first (`tuple[str, int]`): (split, row) of the image in the earlier split (train < validation < test).
        second (`tuple[str, int]`): (split, row) of the other image.
        similarity (`float`): centred cosine similarity of their features (1.0 for exact duplicates).
        exact (`bool`): the encoded bytes are identical.
    """

    first: tuple[str, int]
    second: tuple[str, int]
    similarity: float
    exact: bool

    @property
    def kind(self) -> str:
        """`train-test`, `train-validation`, `validation-test`, or `within-<split>`."""
        if self.first[0] == self.second[0]:
            return f"within-{self.first[0]}"
        return f"{self.first[0]}-{self.second[0]}"

    @property
    def cross_split(self) -> bool:
        return self.first[0] != self.second[0]

    def to_dict(self, paths: dict[str, list[str | None]] | None = None) -> dict[str, Any]:
        def side(split: str, row: int) -> dict[str, Any]:
            entry: dict[str, Any] = {"split": split, "row": row}
            if paths is not None and paths[split][row]:
                entry["path"] = paths[split][row]
            return entry

        return {
            "kind": self.kind, "similarity": round(self.similarity, 4), "exact": self.exact,
            "first": side(*self.first), "second": side(*self.second),
        }


def _ordered(a: tuple[str, int], b: tuple[str, int]) -> tuple[tuple[str, int], tuple[str, int]]:
    rank = {name: i for i, name in enumerate(SPLIT_ORDER)}
    return (a, b) if (rank[a[0]], a[1]) <= (rank[b[0]], b[1]) else (b, a)


def exact_duplicate_pairs(keys_by_split: dict[str, list[str]]) -> list[DuplicatePair]:
    """Pairs of images with identical bytes: every other member of a group of equal hashes is paired with the
    group's first member (train first), so each copy appears in one pair and a held-out copy of a train image is
    paired with a train image."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for split in SPLIT_ORDER:
        for row, key in enumerate(keys_by_split.get(split, [])):
            groups.setdefault(key, []).append((split, row))
    pairs = []
    for members in groups.values():
        for other in members[1:]:
            pairs.append(DuplicatePair(*_ordered(members[0], other), similarity=1.0, exact=True))
    return pairs


def centred_unit_vectors(features_by_split: dict[str, np.ndarray]) -> np.ndarray:
    """Every split's features stacked (train, validation, test), centred on their mean and scaled to unit length."""
    stacked = np.concatenate([np.asarray(features_by_split[s], dtype=np.float32) for s in SPLIT_ORDER if s in features_by_split])
    centred = stacked - stacked.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return centred / np.maximum(norms, 1e-12)


def similar_index_pairs(
    unit: np.ndarray, threshold: float, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Near pairs among the rows of `unit`, with memory linear in the rows however many of them look alike.

    Each block of rows is compared with every row, so a row's near neighbours (dot product >= `threshold`, itself
    and rows of its own `groups` id, i.e. byte-identical copies, not counted) are all known once its block is done.
    A row with more than `MAX_NEAR_TWINS` of them is crowded and its pairs are never stored: a dataset of
    featureless images would otherwise store a pair for most of the n^2 / 2 combinations.

    Args:
        unit (`np.ndarray`): `[N, D]` unit vectors (`centred_unit_vectors`).
        threshold (`float`): the near-duplicate similarity.
        groups (`np.ndarray`, *optional*): `[N]` int ids, equal for rows with the same content hash.

    Returns:
        `(i, j, similarity, crowded)`: every pair i < j of rows that are near, neither of them crowded, and not in
        the same group; and the `[N]` boolean crowded mask.
    """
    count = len(unit)
    groups = np.arange(count) if groups is None else np.asarray(groups)
    crowded = np.zeros(count, dtype=bool)
    found_i, found_j, found_s = [], [], []
    step = max(1, BLOCK_ELEMENTS // max(count, 1))
    for start in range(0, count, step):
        rows = np.arange(start, min(start + step, count))
        block = unit[rows] @ unit.T
        near = (block >= threshold) & (groups[None, :] != groups[rows, None])  # also drops each row itself
        crowded[rows] = near.sum(axis=1) > MAX_NEAR_TWINS
        near[crowded[rows]] = False
        upto = int(rows[-1]) + 1
        near[:, :upto] &= np.arange(upto)[None, :] > rows[:, None]  # the upper triangle: each pair once
        local, cols = np.nonzero(near)
        found_i.append(rows[local])
        found_j.append(cols)
        found_s.append(block[local, cols])
    if not found_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32), crowded
    i, j, sims = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)
    keep = ~crowded[j]  # j's own block may have come after i's
    return i[keep], j[keep], sims[keep], crowded


def find_duplicates(
    keys_by_split: dict[str, list[str]], features_by_split: dict[str, np.ndarray], threshold: float = NEAR_DUPLICATE_THRESHOLD
) -> tuple[list[DuplicatePair], dict[str, list[int]]]:
    """Exact duplicates (equal content hashes) and near duplicates (centred cosine similarity >= `threshold`).

    An image with more than `MAX_NEAR_TWINS` near neighbours is "crowded": a featureless image (open water, a
    washed-out X-ray) that looks like dozens of others rather than a copy of one. Its near pairs are left out and
    the image listed instead; its exact duplicates are kept.

    Args:
        keys_by_split (`dict[str, list[str]]`): one content hash per image, by split (`image_keys`).
        features_by_split (`dict[str, np.ndarray]`): the cached head features, by split, rows as in `keys_by_split`.
        threshold (`float`, defaults to `NEAR_DUPLICATE_THRESHOLD`): `--near-duplicate-threshold`.

    Returns:
        `(pairs, crowded)`: the pairs, most similar first (exact ones first), ties in split and row order
        (deterministic); and the crowded images' rows by split.
    """
    pairs = {(p.first, p.second): p for p in exact_duplicate_pairs(keys_by_split)}
    where = [(s, r) for s in SPLIT_ORDER if s in features_by_split for r in range(len(features_by_split[s]))]
    crowded: set[tuple[str, int]] = set()
    if where:
        # Equal bytes: an exact pair already, never a near one.
        group_ids: dict[str, int] = {}
        groups = np.asarray([group_ids.setdefault(keys_by_split[s][r], len(group_ids)) for s, r in where])
        rows_i, rows_j, sims, crowded_rows = similar_index_pairs(centred_unit_vectors(features_by_split), threshold, groups)
        crowded = {where[i] for i in np.flatnonzero(crowded_rows).tolist()}
        for i, j, sim in zip(rows_i.tolist(), rows_j.tolist(), sims.tolist()):
            a, b = _ordered(where[i], where[j])
            pairs[(a, b)] = DuplicatePair(a, b, similarity=min(float(sim), 1.0), exact=False)
    rank = {name: i for i, name in enumerate(SPLIT_ORDER)}
    ordered = sorted(
        pairs.values(),
        key=lambda p: (not p.exact, -round(p.similarity, 6), rank[p.first[0]], p.first[1], rank[p.second[0]], p.second[1]),
    )
    return ordered, {split: sorted(r for s, r in crowded if s == split) for split in SPLIT_ORDER}


def held_out_twins(pairs: list[DuplicatePair]) -> dict[str, list[int]]:
    """Rows of the validation and test splits that have a twin in an earlier split (a validation image with one in
    train; a test image with one in train or validation): the copies `--dedupe` drops, sorted."""
    twins: dict[str, set[int]] = {"validation": set(), "test": set()}
    for pair in pairs:
        if pair.cross_split:
            twins[pair.second[0]].add(pair.second[1])
    return {split: sorted(rows) for split, rows in twins.items()}


def count_by_kind(pairs: list[DuplicatePair]) -> dict[str, dict[str, int]]:
    """`{kind: {"exact": n, "near": m}}` over every pair."""
    counts: dict[str, dict[str, int]] = {}
    for pair in pairs:
        entry = counts.setdefault(pair.kind, {"exact": 0, "near": 0})
        entry["exact" if pair.exact else "near"] += 1
    return counts

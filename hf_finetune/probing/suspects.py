"""Suspect labels: images whose given label the frozen features contradict, confident-learning style.

Every train and validation image gets class probabilities from the linear probe fold that did not see it
(`linear_probe.out_of_fold_logits`, temperature-scaled like the probe), and every test image from the probe fitted on
train + validation. Following confident learning (Northcutt et al., 2021), class k's confidence threshold is the
mean probability of k over the images labelled k; an image is flagged when the most probable class among those above
their threshold is not its given label, and ranked by the margin `p(suggested) - p(given)`. Flagged images are
candidates to look at, not verdicts: a weak backbone, a hard class or a genuinely ambiguous image flags too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from hf_finetune.probing.features import FeatureSet, SplitFeatures
from hf_finetune.probing.linear_probe import (
    CV_FOLDS,
    LinearProbe,
    fit_linear_probe,
    out_of_fold_logits,
)

logger = logging.getLogger(__name__)

# The `C` grid of a probe fitted for the audit alone (no run's probe to reuse): the well-regularised end of
# `linear_probe.CV_C_GRID`, whose fits converge fast (a large C on 1,000+ images x 1,280 features can take minutes on
# two CPU cores) and whose probabilities are the less overconfident.
SUSPECT_C_GRID: tuple[float, ...] = (1e-3, 0.01, 0.1, 1.0)


@dataclass(frozen=True)
class Suspect:
    """One image whose label the features contradict.

    Attributes:
        split (`str`): its split. row (`int`): its row in that split.
        given (`int`): the label it carries. suggested (`int`): the class the probe finds most likely.
        given_probability (`float`), suggested_probability (`float`): their out-of-sample probabilities.
    """

    split: str
    row: int
    given: int
    suggested: int
    given_probability: float
    suggested_probability: float

    @property
    def score(self) -> float:
        """How strongly the features contradict the label: `p(suggested) - p(given)`, in (-1, 1]."""
        return self.suggested_probability - self.given_probability

    def to_dict(self, labels: list[str], path: str | None = None) -> dict[str, Any]:
        entry = {
            "split": self.split, "row": self.row, "given": labels[self.given], "suggested": labels[self.suggested],
            "given_probability": round(self.given_probability, 4),
            "suggested_probability": round(self.suggested_probability, 4), "score": round(self.score, 4),
        }
        return {**entry, "path": path} if path else entry


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def class_thresholds(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per class k, the mean probability of k over the images labelled k (1.0, never reached, for absent classes)."""
    thresholds = np.ones(probabilities.shape[1])
    for k in range(probabilities.shape[1]):
        mask = labels == k
        if mask.any():
            thresholds[k] = float(probabilities[mask, k].mean())
    return thresholds


def rank_suspects(
    probabilities: np.ndarray, labels: np.ndarray, split: str = "train", thresholds: np.ndarray | None = None
) -> list[Suspect]:
    """The flagged images of one set of out-of-sample probabilities, most suspect first (ties: row order).

    Args:
        probabilities (`np.ndarray`): `[N, C]` out-of-sample class probabilities.
        labels (`np.ndarray`): `[N]` given labels.
        split (`str`, defaults to `"train"`): recorded in each `Suspect`.
        thresholds (`np.ndarray`, *optional*): per-class thresholds (default: `class_thresholds` of these).
    """
    thresholds = class_thresholds(probabilities, labels) if thresholds is None else thresholds
    above = probabilities >= thresholds[None, :]
    confident = np.where(above, probabilities, -1.0).argmax(axis=1)
    flagged = above.any(axis=1) & (confident != labels)
    suspects = [
        Suspect(split, int(i), int(labels[i]), int(confident[i]), float(probabilities[i, labels[i]]), float(probabilities[i, confident[i]]))
        for i in np.flatnonzero(flagged)
    ]
    return sorted(suspects, key=lambda s: (-round(s.score, 6), s.row))


def out_of_sample_probabilities(
    features: SplitFeatures, num_labels: int, seed: int = 0, probe: LinearProbe | None = None
) -> tuple[dict[str, np.ndarray], int]:
    """Class probabilities of every image from a probe that did not see it: train and validation out of fold,
    test from the fit on train + validation.

    Args:
        features (`SplitFeatures`): the cached head features.
        num_labels (`int`): number of classes.
        seed (`int`, defaults to 0): folds and solver.
        probe (`LinearProbe`, *optional*): the run's probe (its `C` and temperature are reused); fitted on
            `SUSPECT_C_GRID` when omitted.

    Returns:
        `({split: [N, C] probabilities}, folds)`; `({}, 0)` when a class has fewer than 2 train + validation images.
    """
    pooled = FeatureSet(
        np.concatenate([features.train.features, features.validation.features]),
        np.concatenate([features.train.labels, features.validation.labels]),
    )
    counts = np.bincount(pooled.labels, minlength=num_labels)
    folds = min(CV_FOLDS, int(counts[counts > 0].min())) if len(pooled) else 0
    if folds < 2:
        return {}, 0
    if probe is None:
        probe = fit_linear_probe(features.train, features.validation, num_labels, c_grid=SUSPECT_C_GRID, seed=seed)
    oof = out_of_fold_logits(pooled, num_labels, probe.C, folds, seed, None) / probe.temperature
    probabilities = softmax(oof)
    n_train = len(features.train)
    out = {"train": probabilities[:n_train], "validation": probabilities[n_train:]}
    if len(features.test):
        out["test"] = softmax(probe.logits(features.test.features, full=True).astype(np.float64))
    return out, folds


def find_suspects(probabilities: dict[str, np.ndarray], features: SplitFeatures) -> list[Suspect]:
    """Flagged images of every split, most suspect first. The thresholds come from train + validation (the test
    split is judged against them, never shapes them)."""
    pooled_probabilities = np.concatenate([probabilities["train"], probabilities["validation"]])
    pooled_labels = np.concatenate([features.train.labels, features.validation.labels])
    thresholds = class_thresholds(pooled_probabilities, pooled_labels)
    suspects: list[Suspect] = []
    for split, probs in probabilities.items():
        suspects += rank_suspects(probs, getattr(features, split).labels, split, thresholds)
    order = {"train": 0, "validation": 1, "test": 2}
    return sorted(suspects, key=lambda s: (-round(s.score, 6), order[s.split], s.row))

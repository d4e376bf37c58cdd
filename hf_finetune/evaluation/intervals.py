"""Confidence intervals of a test metric measured once, on one test split.

`bootstrap_macro_f1` resamples the test images (with replacement) from the confusion matrix's (true, predicted)
cells and takes the percentile interval of macro-F1 over the resamples; it says how much the figure owes to which
images happened to land in the test split. (The t-interval over k folds is `evaluation.kfold.t_interval`.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95


def macro_f1_from_confusion(matrix: np.ndarray) -> float:
    """Macro-F1 over the classes that occur (as a true or a predicted label), as `metrics.classification_report`."""
    matrix = np.asarray(matrix, dtype=np.float64)
    true_positive = np.diag(matrix)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    seen = (support + predicted) > 0
    if not seen.any():
        return 0.0
    denominator = support + predicted
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    return float(f1[seen].mean())


def paired_bootstrap_macro_f1(
    labels: np.ndarray, predictions: Sequence[np.ndarray], num_classes: int, samples: int, seed: int
) -> np.ndarray:
    """Macro-F1 of each model's `predictions` on the same `samples` resamples (with replacement) of the images:
    an array models x samples whose rows differ only by the models, so row differences measure how much one model's
    lead owes to which images were drawn."""
    labels = np.asarray(labels, dtype=np.int64)
    index = np.random.default_rng(seed).integers(0, len(labels), size=(samples, len(labels)))
    scores = np.empty((len(predictions), samples))
    for m, predicted in enumerate(predictions):
        cells = labels * num_classes + np.asarray(predicted, dtype=np.int64)
        for s, rows in enumerate(index):
            matrix = np.bincount(cells[rows], minlength=num_classes * num_classes).reshape(num_classes, num_classes)
            scores[m, s] = macro_f1_from_confusion(matrix)
    return scores


def bootstrap_macro_f1(
    confusion_matrix: Sequence[Sequence[int]], samples: int = BOOTSTRAP_SAMPLES, confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, float]:
    """Percentile bootstrap interval of macro-F1 from a confusion matrix (rows = true labels).

    Returns:
        `dict` with `value` (the measured macro-F1), `low`, `high`, `samples`.
    """
    matrix = np.asarray(confusion_matrix, dtype=np.int64)
    total = int(matrix.sum())
    value = macro_f1_from_confusion(matrix)
    if total == 0:
        return {"value": value, "low": 0.0, "high": 1.0, "samples": 0}
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(total, matrix.ravel() / total, size=samples).reshape(samples, *matrix.shape)
    scores = np.array([macro_f1_from_confusion(draw) for draw in draws])
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail])
    return {"value": value, "low": float(low), "high": float(high), "samples": samples}

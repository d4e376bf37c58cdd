"""Metrics: accuracy and macro-F1 for model selection, and the one-time test report.

scikit-learn computes them (evaluate's `load()` fetches metric scripts from the Hub, which an
offline machine cannot do).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from hf_finetune.config.files import CONFUSION_MATRIX_FILE, TEST_REPORT_FILE

logger = logging.getLogger(__name__)

# Wall-clock fields of a report: everything else is a function of the data, the code and --seed.
TIMING_FIELDS = frozenset({"seconds", "feature_seconds"})


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    """`Trainer.compute_metrics`: accuracy and macro-F1 from logits."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    predictions = np.asarray(logits).argmax(axis=-1)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
    }


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support keyed by label name, and the confusion matrix.

    Args:
        y_true (`np.ndarray`): true label ids.
        y_pred (`np.ndarray`): predicted label ids.
        labels (`list[str]`): label names by id.

    Returns:
        `dict` with keys `accuracy`, `macro_f1`, `per_class`, `confusion_matrix` (rows = true labels), `labels`,
        `num_samples`.
    """
    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    # Macro-F1 over the classes the split holds or the model predicted: a class with no test image (e.g. a
    # single-image class kept in train only) and no prediction has no F1 to average, not an F1 of 0.
    seen = sorted(set(np.asarray(y_true).tolist()) | set(np.asarray(y_pred).tolist()))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=seen, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
        "labels": list(labels),
        "num_samples": int(len(y_true)),
    }


def save_confusion_matrix(matrix: list[list[int]], labels: list[str], path: str, title: str = "Test confusion matrix") -> None:
    """Writes the confusion matrix as a PNG: rows = true labels, each cell its count and its share of the row (the
    recall of the diagonal), coloured by that share so small classes read as clearly as large ones; the title gives
    n and the accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    array = np.asarray(matrix)
    totals = array.sum(axis=1, keepdims=True) if array.size else array
    shares = np.divide(array, totals, out=np.zeros(array.shape, dtype=float), where=totals > 0)
    size = max(4.5, 0.7 * len(labels) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = int(array.sum())
    accuracy = f", accuracy {np.trace(array) / total:.1%}" if total else ""
    # Three short lines: a small matrix's axes are narrower than one long title line (tight_layout does not wrap).
    ax.set_title(f"{title}\nn = {total}{accuracy}\nrow % = share of the true class", fontsize=10)
    for i in range(array.shape[0]):
        for j in range(array.shape[1]):
            colour = "white" if shares[i, j] > 0.5 else "black"
            ax.text(j, i, f"{array[i, j]}\n{shares[i, j]:.0%}", ha="center", va="center", color=colour, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_test_report(report: dict[str, Any], output_dir: str) -> str:
    """Writes `test_report.json` and `confusion_matrix.png`; returns the report path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, TEST_REPORT_FILE)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    save_confusion_matrix(report["confusion_matrix"], report["labels"], os.path.join(output_dir, CONFUSION_MATRIX_FILE))
    return path


def without_timing(report: Any) -> Any:
    """The report without its wall-clock fields (`TIMING_FIELDS`, at any depth): equal for equal seeds on CPU."""
    if isinstance(report, dict):
        return {key: without_timing(value) for key, value in report.items() if key not in TIMING_FIELDS}
    if isinstance(report, list):
        return [without_timing(value) for value in report]
    return report

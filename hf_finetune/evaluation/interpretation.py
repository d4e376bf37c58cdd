"""Interpretation of a classifier's mistakes, after fastai's `ClassificationInterpretation`.

`most_confused` lists the (true, predicted) class pairs the confusion matrix counts most often off its diagonal;
`top_losses` lists the misclassified images sorted by their loss (the ones the model got most confidently wrong),
with the true class, the predicted class and its probability; `plot_top_losses` draws them as a gallery.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from hf_finetune.evaluation.calibration import softmax

logger = logging.getLogger(__name__)

TOP_LOSSES = 16  # images in the gallery: enough to see a pattern, few enough to look at each one


def most_confused(confusion_matrix: Sequence[Sequence[int]], labels: Sequence[str], top: int = 10) -> list[dict[str, Any]]:
    """The off-diagonal cells of a confusion matrix (rows = true class), largest count first.

    Args:
        confusion_matrix (`list[list[int]]`): counts, rows = true labels, columns = predicted labels.
        labels (`list[str]`): label names by id.
        top (`int`, defaults to 10): at most this many pairs.

    Returns:
        `list[dict]` with `true`, `predicted`, `count` (pairs with count 0 left out; ties in label order).
    """
    matrix = np.asarray(confusion_matrix)
    pairs = [
        {"true": labels[i], "predicted": labels[j], "count": int(matrix[i, j])}
        for i in range(matrix.shape[0]) for j in range(matrix.shape[1]) if i != j and matrix[i, j] > 0
    ]
    return sorted(pairs, key=lambda pair: -pair["count"])[:top]


def top_losses(
    logits: np.ndarray, labels: np.ndarray, label_names: Sequence[str], k: int = TOP_LOSSES,
    sources: Sequence[str | None] | None = None,
) -> list[dict[str, Any]]:
    """The misclassified images with the highest cross-entropy loss, highest first.

    Args:
        logits (`np.ndarray`): `[N, C]` logits of the split.
        labels (`np.ndarray`): `[N]` true class ids.
        label_names (`list[str]`): label names by id.
        k (`int`, defaults to 16): at most this many images.
        sources (`list[str | None]`, *optional*): where each image came from (a file path), recorded with it.

    Returns:
        `list[dict]` with `index` (row in the split), `source`, `true`, `predicted`, `probability` (of the predicted
        class), `true_probability` and `loss`.
    """
    labels = np.asarray(labels)
    probabilities = softmax(logits)
    predicted = probabilities.argmax(axis=1) if len(labels) else np.zeros(0, dtype=int)
    true_probability = probabilities[np.arange(len(labels)), labels] if len(labels) else np.zeros(0)
    losses = -np.log(np.clip(true_probability, 1e-300, None))
    wrong = np.flatnonzero(predicted != labels)
    order = wrong[np.argsort(-losses[wrong], kind="stable")][:k]
    return [
        {
            "index": int(i),
            "source": sources[i] if sources is not None else None,
            "true": label_names[int(labels[i])],
            "predicted": label_names[int(predicted[i])],
            "probability": float(probabilities[i, predicted[i]]),
            "true_probability": float(true_probability[i]),
            "loss": float(losses[i]),
        }
        for i in order
    ]


def plot_top_losses(images: Sequence[Any], entries: Sequence[dict[str, Any]], path: str, columns: int = 4) -> str:
    """Writes the top-losses gallery: each image titled true / predicted / probability of the prediction / loss.

    Args:
        images (`list[PIL.Image.Image]`): the images of `entries`, in the same order.
        entries (`list[dict]`): `top_losses`'s records.
        path (`str`): the PNG to write.
        columns (`int`, defaults to 4): images per row.

    Returns:
        `str`: `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(len(entries), 1)
    columns = min(columns, count)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not entries:
        axes[0, 0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    for ax, image, entry in zip(axes.flat, images, entries):
        ax.imshow(image)
        ax.set_title(
            f"true: {entry['true']}\npred: {entry['predicted']} ({entry['probability']:.2f})\nloss {entry['loss']:.2f}",
            fontsize=8,
        )
    fig.suptitle("Top losses: most confidently wrong (true / predicted (probability) / loss)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

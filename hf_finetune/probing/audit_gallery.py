"""The data audit's galleries: the most suspect labels (`suspect_labels.png`) and the closest cross-split pairs
(`duplicate_pairs.png`), each image titled with what the audit found."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

GALLERY_SUSPECTS = 16  # images in suspect_labels.png
GALLERY_PAIRS = 8  # pairs in duplicate_pairs.png


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_suspect_labels(entries: Sequence[dict[str, Any]], image_of: Callable[[str, int], Any], path: str, columns: int = 4) -> str:
    """Writes the suspect-label gallery: each image titled given label / suggested class (probabilities).

    Args:
        entries (`list[dict]`): `Suspect.to_dict` records, most suspect first (the first `GALLERY_SUSPECTS` shown).
        image_of (`Callable[[str, int], PIL.Image.Image]`): the RGB image of (split, row).
        path (`str`): the PNG to write.
        columns (`int`, defaults to 4): images per row.
    """
    plt = _pyplot()
    shown = list(entries[:GALLERY_SUSPECTS])
    columns = min(columns, max(len(shown), 1))
    rows = -(-max(len(shown), 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not shown:
        axes[0, 0].text(0.5, 0.5, "no suspect labels", ha="center", va="center")
    for ax, entry in zip(axes.flat, shown):
        ax.imshow(image_of(entry["split"], entry["row"]))
        ax.set_title(
            f"{entry['split']} #{entry['row']}\ngiven: {entry['given']} ({entry['given_probability']:.2f})\n"
            f"features say: {entry['suggested']} ({entry['suggested_probability']:.2f})",
            fontsize=8,
        )
    fig.suptitle("Suspect labels: the given label is unlikely while another class is confident", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_duplicate_pairs(pairs: Sequence[dict[str, Any]], image_of: Callable[[str, int], Any], path: str) -> str:
    """Writes the duplicate-pair gallery: one row per pair (the earlier split's image left), titled with the kind
    and the similarity.

    Args:
        pairs (`list[dict]`): `DuplicatePair.to_dict` records, most similar first (the first `GALLERY_PAIRS` shown).
        image_of (`Callable[[str, int], PIL.Image.Image]`): the RGB image of (split, row).
        path (`str`): the PNG to write.
    """
    plt = _pyplot()
    shown = list(pairs[:GALLERY_PAIRS])
    rows = max(len(shown), 1)
    fig, axes = plt.subplots(rows, 2, figsize=(5, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not shown:
        axes[0, 0].text(0.5, 0.5, "no duplicate pairs", ha="center", va="center")
    for (left, right), pair in zip(axes, shown):
        left.imshow(image_of(pair["first"]["split"], pair["first"]["row"]))
        right.imshow(image_of(pair["second"]["split"], pair["second"]["row"]))
        what = "exact" if pair["exact"] else f"cos {pair['similarity']:.3f}"
        left.set_title(f"{pair['kind']}: {what}\n{pair['first']['split']} #{pair['first']['row']}", fontsize=8)
        right.set_title(f"\n{pair['second']['split']} #{pair['second']['row']}", fontsize=8)
    fig.suptitle("Duplicate pairs across splits (closest first)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

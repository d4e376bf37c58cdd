"""The model card's data-audit section, from `data_audit.json` and `test_report.json` -> `leakage`: images per
split (sizes, modes, grayscale share), duplicates within and across splits, what was dropped before training, and
the most suspect labels. `None` when the run has no audit (`--audit off`, older runs): the template leaves it out."""

from __future__ import annotations

import json
import os
from typing import Any

from hf_finetune.config.files import (
    DATA_AUDIT_FILE,
    DUPLICATE_PAIRS_PLOT,
    SUSPECT_LABELS_PLOT,
)

CARD_SUSPECTS = 8  # rows of the suspect-label table on the card (the gallery shows more)


def _pairs_text(pairs_by_kind: dict[str, dict[str, int]]) -> str:
    if not pairs_by_kind:
        return "none found"
    return ", ".join(f"{kind}: {n['exact']} exact, {n['near']} near" for kind, n in sorted(pairs_by_kind.items()))


def _image_rows(images: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for split, info in images.items():
        sizes = ", ".join(f"{size} ({count})" for size, count in list(info.get("sizes", {}).items())[:3])
        more = info.get("distinct_sizes", 0) - min(3, len(info.get("sizes", {})))
        rows.append({
            "split": split, "images": info.get("num_images", 0), "sizes": sizes + (f", +{more} more" if more > 0 else ""),
            "modes": ", ".join(f"{mode} {count}" for mode, count in info.get("modes", {}).items()),
            "grayscale": f"{info.get('grayscale_share', 0.0):.0%}",
        })
    return rows


def _leakage(report: dict[str, Any]) -> dict[str, str] | None:
    leakage = report.get("leakage")
    if not leakage or leakage["accuracy"]["without_twins"] is None:
        return None
    return {
        "accuracy_all": f"{leakage['accuracy']['all']:.4f}", "accuracy_without": f"{leakage['accuracy']['without_twins']:.4f}",
        "macro_f1_all": f"{leakage['macro_f1']['all']:.4f}", "macro_f1_without": f"{leakage['macro_f1']['without_twins']:.4f}",
    }


def audit_context(output_dir: str, config: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """Template variable `audit` (None without `data_audit.json`)."""
    path = os.path.join(output_dir, DATA_AUDIT_FILE)
    if not os.path.isfile(path):
        return {"audit": None}
    with open(path) as f:
        audit = json.load(f)
    summary = audit.get("summary", {})
    dropped = (config.get("data_audit") or {}).get("dropped") or {}
    suspects = [
        {**entry, "source": os.path.basename(entry["path"]) if entry.get("path") else f"{entry['split']} #{entry['row']}",
         "given_probability": f"{entry['given_probability']:.2f}", "suggested_probability": f"{entry['suggested_probability']:.2f}"}
        for entry in audit.get("suspects", [])[:CARD_SUSPECTS]
    ]

    def present(name: str) -> str | None:
        return name if os.path.isfile(os.path.join(output_dir, name)) else None

    return {
        "audit": {
            "threshold": summary.get("near_duplicate_threshold"),
            "images": _image_rows(audit.get("images", {})),
            "pairs": _pairs_text(summary.get("pairs_by_kind", {})),
            "test_with_twin": summary.get("test_with_twin", 0),
            "crowded": sum((summary.get("crowded_images") or {}).values()),
            "leakage": _leakage(report),
            "dropped": {action: count for action, count in dropped.items() if count},
            "suspect_counts": summary.get("suspect_labels", {}),
            "suspects": suspects,
            "suspect_image": present(SUSPECT_LABELS_PLOT) if suspects else None,
            "pairs_image": present(DUPLICATE_PAIRS_PLOT) if audit.get("cross_split_pairs") else None,
        }
    }

"""The model card's after-training sections, from the run's records: calibration (`test_report.json` →
`calibration`), mistakes (`top_losses.json`), test-time augmentation (`test_report.json` → `tta`) and the ONNX
export (`onnx/export_report.json`, written by `python -m hf_finetune export`). Each is `None` when its record is
absent (older runs, no export yet), and the template leaves the section out."""

from __future__ import annotations

import json
import os
from typing import Any

from hf_finetune.config.files import (
    ONNX_DIR,
    ONNX_MODEL_FILE,
    ONNX_REPORT_FILE,
    RELIABILITY_PLOT,
    TOP_LOSSES_JSON,
    TOP_LOSSES_PLOT,
)

CARD_TOP_LOSSES = 8  # rows of the top-losses table on the card (the gallery shows all)


def _load(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _calibration(report: dict[str, Any]) -> dict[str, Any] | None:
    calibration = report.get("calibration")
    if not calibration:
        return None
    return {
        "temperature": f"{calibration['temperature']:.3f}",
        "applied": calibration.get("applied", False),
        "test_before": f"{calibration['test']['before']['ece']:.4f}",
        "test_after": f"{calibration['test']['after']['ece']:.4f}",
        "validation_nll_before": f"{calibration['validation']['before']['nll']:.4f}",
        "validation_nll_after": f"{calibration['validation']['after']['nll']:.4f}",
        "image": RELIABILITY_PLOT,
    }


def _mistakes(output_dir: str, report: dict[str, Any]) -> dict[str, Any] | None:
    interpretation = report.get("interpretation")
    if not interpretation:
        return None
    details = _load(os.path.join(output_dir, TOP_LOSSES_JSON)) or {}
    rows = [
        {**entry, "source": os.path.basename(entry["source"]) if entry.get("source") else f"#{entry['index']}",
         "probability": f"{entry['probability']:.3f}", "loss": f"{entry['loss']:.3f}"}
        for entry in details.get("top_losses", [])[:CARD_TOP_LOSSES]
    ]
    return {**interpretation, "top_losses": rows, "image": TOP_LOSSES_PLOT if os.path.isfile(os.path.join(output_dir, TOP_LOSSES_PLOT)) else None}


def _ema(record: Any) -> dict[str, Any] | None:
    """`--ema`: the moving average beside the raw weights on validation, and which was kept."""
    if not isinstance(record, dict) or "chosen" not in record:
        return None
    best = record.get("best") or {}
    averaged = record.get("averaged") or {}
    return {"decay": f"{record['decay']:g}", "chosen": "moving average" if record["chosen"] == "ema" else "raw weights",
            "reason": record.get("reason", ""), "raw": f"{record['raw']['validation_macro_f1']:.4f}",
            "averaged": f"{averaged['validation_macro_f1']:.4f}" if averaged else "not evaluated",
            "best_epoch": f"{best['epoch']:g}" if best.get("epoch") is not None else "-"}


def after_training_context(output_dir: str, report: dict[str, Any], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Template variables `calibration`, `mistakes`, `tta`, `onnx`, `ema` (each `None` when not recorded)."""
    tta = report.get("tta")
    onnx = _load(os.path.join(output_dir, ONNX_DIR, ONNX_REPORT_FILE))
    return {
        "calibration": _calibration(report),
        "mistakes": _mistakes(output_dir, report),
        "tta": {**tta, "accuracy": f"{tta['accuracy']:.4f}", "macro_f1": f"{tta['macro_f1']:.4f}"} if tta else None,
        "ema": _ema((config or {}).get("ema")),
        "onnx": {**onnx, "file": f"{ONNX_DIR}/{ONNX_MODEL_FILE}", "max_abs_diff": f"{onnx['max_abs_diff']:.1e}"} if onnx else None,
    }

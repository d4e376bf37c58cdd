"""Side by side: several finished runs, `python -m hf_finetune compare RUN_DIR...`.

One row per run from its records (`run_config.json`, `test_report.json`; a `--kfold` folder from its
`kfold_report.json` and the first fold's config): model, dataset, strategy, test accuracy (95% Wilson interval) and
macro-F1 (95% bootstrap interval over the test images; the t-interval over folds for k-fold), the linear-probe
baseline, wall time and date. `plot_comparison` draws macro-F1 against wall time with the intervals, so the
trade-off between backbones is one picture.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from hf_finetune.config.files import (
    KFOLD_REPORT_FILE,
    RUN_CONFIG_FILE,
    TEST_REPORT_FILE,
)
from hf_finetune.evaluation.intervals import bootstrap_macro_f1
from hf_finetune.sharing.model_card import wilson_interval

logger = logging.getLogger(__name__)

COMPARE_CSV = "compare_runs.csv"
COMPARE_PLOT = "compare_runs.png"
COLUMNS = (
    "run", "model", "dataset", "strategy", "test_accuracy", "accuracy_low", "accuracy_high", "test_macro_f1",
    "macro_f1_low", "macro_f1_high", "interval", "baseline_macro_f1", "wall_seconds", "date",
)


def _read(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def _name(ref: str | None) -> str:
    return os.path.basename(str(ref or "").rstrip("/")) or "?"


def _strategy(config: dict[str, Any]) -> str:
    finetune = config.get("finetune", {})
    parts = [str(finetune.get("strategy", "?"))]
    if finetune.get("peft") not in (None, "none"):
        parts.append(str(finetune["peft"]))
    if config.get("truncation"):
        parts.append(f"cut after {config['truncation'].get('after')}")
    return " + ".join(parts)


def _date(config: dict[str, Any], fallback: str) -> str:
    finished = (config.get("timing") or {}).get("finished_at")
    if finished:
        return str(finished)[:10]
    return datetime.fromtimestamp(os.path.getmtime(fallback), tz=timezone.utc).date().isoformat()


def run_row(run_dir: str) -> dict[str, Any]:
    """The comparison row of one finished run (or `--kfold` folder).

    Raises:
        `ValueError`: `run_dir` holds no finished run.
    """
    kfold_path = os.path.join(run_dir, KFOLD_REPORT_FILE)
    if os.path.isfile(kfold_path) and not os.path.isfile(os.path.join(run_dir, TEST_REPORT_FILE)):
        return _kfold_row(run_dir, _read(kfold_path))
    config_path, report_path = os.path.join(run_dir, RUN_CONFIG_FILE), os.path.join(run_dir, TEST_REPORT_FILE)
    if not (os.path.isfile(config_path) and os.path.isfile(report_path)):
        raise ValueError(
            f"RUN_DIR `{run_dir}` holds no finished run ({RUN_CONFIG_FILE} and {TEST_REPORT_FILE}, or "
            f"{KFOLD_REPORT_FILE}): pass --output-dir folders of finished runs."
        )
    config, report = _read(config_path), _read(report_path)
    total = int(report["num_samples"])
    correct = sum(report["confusion_matrix"][i][i] for i in range(len(report["labels"])))
    accuracy_low, accuracy_high = wilson_interval(correct, total)
    f1 = bootstrap_macro_f1(report["confusion_matrix"])
    baseline = report.get("baseline") or {}
    return {
        "run": run_dir, "model": _name(config["model"]["model"]), "dataset": _name(config["data"]["dataset"]),
        "strategy": _strategy(config), "test_accuracy": report["accuracy"], "accuracy_low": accuracy_low,
        "accuracy_high": accuracy_high, "test_macro_f1": report["macro_f1"], "macro_f1_low": f1["low"],
        "macro_f1_high": f1["high"], "interval": f"bootstrap over {total} test images",
        "baseline_macro_f1": baseline.get("macro_f1"), "wall_seconds": (config.get("timing") or {}).get("seconds"),
        "date": _date(config, report_path),
    }


def _kfold_row(run_dir: str, summary: dict[str, Any]) -> dict[str, Any]:
    folds = summary.get("folds") or []
    first = folds[0].get("output_dir") if folds else None
    config_path = os.path.join(first, RUN_CONFIG_FILE) if first else ""
    config = _read(config_path) if config_path and os.path.isfile(config_path) else {"model": {}, "data": {}}
    configs = [os.path.join(f.get("output_dir", ""), RUN_CONFIG_FILE) for f in folds]
    seconds = [(_read(p).get("timing") or {}).get("seconds") for p in configs if os.path.isfile(p)]
    f1, accuracy = summary["test_macro_f1"], summary["test_accuracy"]
    baseline = summary.get("baseline_macro_f1") or {}
    return {
        "run": run_dir, "model": _name(config["model"].get("model")), "dataset": _name(config["data"].get("dataset")),
        "strategy": f"{_strategy(config)} ({summary.get('k')}-fold)", "test_accuracy": accuracy["mean"],
        "accuracy_low": accuracy["low"], "accuracy_high": accuracy["high"], "test_macro_f1": f1["mean"],
        "macro_f1_low": f1["low"], "macro_f1_high": f1["high"], "interval": f"t-interval over {summary.get('k')} folds",
        "baseline_macro_f1": baseline.get("mean"),
        "wall_seconds": sum(seconds) if seconds and None not in seconds else None,
        "date": _date(config, os.path.join(run_dir, KFOLD_REPORT_FILE)),
    }


def compare_runs(run_dirs: Sequence[str]) -> list[dict[str, Any]]:
    """One row per run directory (see `run_row`), best test macro-F1 first."""
    rows = [run_row(run_dir) for run_dir in run_dirs]
    return sorted(rows, key=lambda row: -row["test_macro_f1"])


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table (what `compare` prints)."""
    lines = [
        "| run | model | dataset | strategy | test accuracy (95% CI) | test macro-F1 (95% CI) | baseline macro-F1 | wall time | date |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        wall = f"{r['wall_seconds']:.0f} s" if r["wall_seconds"] is not None else "–"
        lines.append(
            f"| {_name(r['run'])} | {r['model']} | {r['dataset']} | {r['strategy']} | {r['test_accuracy']:.4f} "
            f"({r['accuracy_low']:.3f}–{r['accuracy_high']:.3f}) | {r['test_macro_f1']:.4f} ({r['macro_f1_low']:.3f}–"
            f"{r['macro_f1_high']:.3f}) | {_cell(r['baseline_macro_f1'])} | {wall} | {r['date']} |"
        )
    return "\n".join(lines)


def write_comparison(rows: Sequence[dict[str, Any]], output_dir: str) -> tuple[str, str]:
    """Writes `compare_runs.csv` and `compare_runs.png` into `output_dir`; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    csv_path = os.path.join(output_dir, COMPARE_CSV)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({key: row.get(key) for key in COLUMNS} for row in rows)
    return csv_path, plot_comparison(rows, os.path.join(output_dir, COMPARE_PLOT))


def plot_comparison(rows: Sequence[dict[str, Any]], path: str) -> str:
    """Test macro-F1 (with its interval) against wall time, one labelled point per run. Runs without a recorded
    wall time sit at 0 s. Returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        x = row["wall_seconds"] or 0.0
        y = row["test_macro_f1"]
        ax.errorbar([x], [y], yerr=[[max(0.0, y - row["macro_f1_low"])], [max(0.0, row["macro_f1_high"] - y)]], marker="o", capsize=4)
        ax.annotate(f"{row['model']}\n{row['strategy']}", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7)
    ax.set_xlabel("wall time (s): training + feature pass")
    ax.set_ylabel("test macro-F1 (95% interval)")
    ax.set_title("Runs compared: macro-F1 vs wall time")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

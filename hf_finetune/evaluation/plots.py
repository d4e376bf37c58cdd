"""Plots of what a run did, drawn from its records (`schedule.json`, `run_config.json`), never from live objects.

`plot_lr_schedule`: the LR of every parameter group over training steps (one line per stage), unfreeze events marked.
`plot_training_curves`: train/validation loss and validation accuracy / macro-F1 per epoch.
`plot_stage_probe`: the stage probe's CV macro-F1 per backbone stage (`stage_probe.json`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def stage_lr_history(lr_history: dict[str, Any]) -> dict[str, list[float]]:
    """Per-stage LR curves from `schedule.json`'s `lr_history`, head first as in the optimizer.

    A stage's decay and no-decay groups share one LR; the first group seen stands for the stage.
    """
    curves: dict[str, list[float]] = {}
    for group, values in lr_history.get("groups", {}).items():
        curves.setdefault(group.split("/")[0], values)
    return curves


def plot_lr_schedule(schedule: dict[str, Any], freeze_events: list[dict[str, Any]], path: str) -> str:
    """Writes the per-stage LR schedule over training steps, with unfreeze events as dashed vertical lines.

    Args:
        schedule (`dict`): the content of `schedule.json` (`lr_history` with `step` and `groups`).
        freeze_events (`list[dict]`): `run_config.json`'s `freeze_events` (`step`, `epoch`, `unfrozen`, `reason`).
        path (`str`): the PNG to write.

    Returns:
        `str`: `path`.
    """
    plt = _pyplot()
    history = schedule.get("lr_history", {})
    steps = np.asarray(history.get("step", []), dtype=float)
    curves = stage_lr_history(history)
    fig, ax = plt.subplots(figsize=(9, 5))
    ordered = list(reversed(curves))  # input -> output, head last
    # Qualitative colours: neighbouring stages must be told apart (a sequential map gave four near-identical greens).
    palette = plt.cm.tab20.colors if len(ordered) > 10 else plt.cm.tab10.colors
    colours = [palette[i % len(palette)] for i in range(max(len(ordered), 1))]
    plotted = False
    for colour, stage in zip(colours, ordered):
        values = np.asarray(curves[stage], dtype=float)
        values = np.where(values > 0, values, np.nan)  # frozen: no LR, a gap on the log axis
        if len(values) == len(steps) and np.isfinite(values).any():
            style = {"color": "black", "linewidth": 2.0} if stage == "head" else {"color": colour, "linewidth": 1.2}
            ax.plot(steps, values, label=stage, **style)
            plotted = True
    for event in freeze_events:
        if not event.get("unfrozen"):
            continue
        # The event's step is the number of steps done when it happened: between that step and the next one.
        x = event["step"] + 0.5
        ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
        label = ", ".join(event["unfrozen"])
        ax.annotate(  # inside the axes, right of the line: never clipped by the figure's edge
            f"unfreeze {label}", xy=(x, 0.98), xycoords=("data", "axes fraction"), xytext=(2, 0),
            textcoords="offset points", rotation=90, va="top", ha="left", fontsize=7, color="dimgrey",
        )
    if plotted:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("learning rate (log scale; gaps = frozen)")
    ax.set_title("Learning rate per parameter group")
    if plotted:
        ax.legend(fontsize=7, loc="lower left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training_curves(
    schedule: dict[str, Any],
    path: str,
    freeze_events: list[dict[str, Any]] | None = None,
    best_step: int | None = None,
    baseline_macro_f1: float | None = None,
) -> str:
    """Writes train/validation loss and validation accuracy / macro-F1 per epoch (numbered from 1, as the logs do),
    with the unfreeze events, the best checkpoint and the linear-probe baseline marked.

    Args:
        schedule (`dict`): the content of `schedule.json` (`epochs` records; their `epoch` counts from 0).
        path (`str`): the PNG to write.
        freeze_events (`list[dict]`, *optional*): `run_config.json`'s `freeze_events`; an event at 0-based epoch e
            happened between epochs e and e + 1 (1-based).
        best_step (`int`, *optional*): the step of the best checkpoint (`checkpoint-N`); its epoch is circled.
        baseline_macro_f1 (`float`, *optional*): the linear probe's test macro-F1, drawn as a horizontal line.

    Returns:
        `str`: `path`.
    """
    plt = _pyplot()
    records = schedule.get("epochs", [])
    epochs = [record["epoch"] + 1 for record in records]

    def series(get) -> list[float]:
        return [float(get(record)) if get(record) is not None else np.nan for record in records]

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(epochs, series(lambda r: r.get("train_loss")), marker="o", color="tab:blue", label="train loss")
    left.plot(epochs, series(lambda r: r.get("validation", {}).get("loss")), marker="s", color="tab:orange", label="validation loss")
    left.set_ylabel("loss")
    accuracy = series(lambda r: r.get("validation", {}).get("accuracy"))
    macro_f1 = series(lambda r: r.get("validation", {}).get("macro_f1"))
    right.plot(epochs, accuracy, marker="o", linestyle="--", color="tab:green", label="validation accuracy")
    right.plot(epochs, macro_f1, marker="s", color="tab:purple", label="validation macro-F1")
    if baseline_macro_f1 is not None:
        right.axhline(baseline_macro_f1, color="tab:red", linestyle=":", label=f"linear probe (test macro-F1 {baseline_macro_f1:.3f})")
    best = next((epoch for epoch, r in zip(epochs, records) if best_step is not None and r.get("last_step") == best_step), None)
    if best is not None and np.isfinite(macro_f1[epochs.index(best)]):
        right.plot([best], [macro_f1[epochs.index(best)]], marker="o", markersize=14, markerfacecolor="none",
                   markeredgecolor="black", linestyle="none", label=f"best checkpoint (epoch {best})")
    # Scaled to the data (not 0-1): 0.92 vs 0.95 must be visible.
    values = [v for v in [*accuracy, *macro_f1, baseline_macro_f1] if v is not None and np.isfinite(v)]
    if values:
        pad = max(0.02, 0.1 * (max(values) - min(values)))
        right.set_ylim(max(0.0, min(values) - pad), min(1.0, max(values) + pad) + 0.005)
    right.legend(loc="best", fontsize=8)
    left.legend(loc="best", fontsize=8)
    for event in freeze_events or []:
        if event.get("unfrozen") and event.get("epoch", 0) > 0:
            for ax in (left, right):
                ax.axvline(event["epoch"] + 0.5, color="grey", linestyle="--", linewidth=0.8)
            left.annotate(f"unfreeze {', '.join(event['unfrozen'])}", xy=(event["epoch"] + 0.5, 0.98), xytext=(2, 0),
                          xycoords=("data", "axes fraction"), textcoords="offset points", rotation=90, va="top",
                          ha="left", fontsize=7, color="dimgrey")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if epochs:
            ax.set_xticks(epochs)
    fig.suptitle("Training and validation curves (dashed lines: unfreeze steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_stage_probe(payload: dict[str, Any], path: str) -> str:
    """Writes the stage probe curve: CV macro-F1 (mean, std bars) per backbone stage, input to output; the best stage
    is starred.

    Args:
        payload (`dict`): the content of `stage_probe.json` (`stages` with `name`, `macro_f1_mean`, `macro_f1_std`;
            `best`).
        path (`str`): the PNG to write.

    Returns:
        `str`: `path`.
    """
    plt = _pyplot()
    stages = payload.get("stages", [])
    x = np.arange(len(stages))
    means = np.asarray([s["macro_f1_mean"] for s in stages], dtype=float)
    stds = np.asarray([s["macro_f1_std"] for s in stages], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(stages) + 2), 4.5))
    ax.errorbar(x, means, yerr=stds, marker="o", capsize=4, color="tab:blue", label="CV macro-F1 (mean ± std over folds)")
    best = next((i for i, s in enumerate(stages) if s["name"] == payload.get("best")), None)
    if best is not None:
        ax.plot([best], [means[best]], marker="*", markersize=18, color="tab:orange", linestyle="none", label=f"best: {stages[best]['name']}")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{s['name']}\n({s['feature_dim']})" for s in stages], rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("backbone stage, input → output (pooled feature size)")
    ax.set_ylabel("linear-probe macro-F1")
    title = "Linear probe per backbone stage"
    if payload.get("model"):
        title += f"\n{os.path.basename(str(payload['model']).rstrip('/'))} on {os.path.basename(str(payload.get('dataset', '')).rstrip('/'))}"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

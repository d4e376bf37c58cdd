"""Calibration: how far the model's confidence matches its accuracy, and temperature scaling to fix it.

`expected_calibration_error` bins predictions by their top-1 probability and averages |accuracy - confidence| over
the bins, weighted by their counts (Guo et al., 2017, "On Calibration of Modern Neural Networks"); the bins themselves
(`reliability_bins`) draw the reliability diagram (`plot_reliability_diagram`). `fit_temperature` finds the single
T > 0 minimising the validation NLL of softmax(logits / T); it never changes an argmax. `fold_temperature` divides the
weights and biases of the head's final linear layer(s) by T, so the saved model itself returns calibrated
probabilities (`pipeline("image-classification")` needs no extra code).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hf_finetune.backbones.stages import StageMap
from hf_finetune.backbones.taps import head_linear_layers

logger = logging.getLogger(__name__)

# 15 equal-width bins, as in Guo et al. and most papers that report ECE.
ECE_BINS = 15
# T is searched on a log scale within these bounds: beyond them the model is constant or a one-hot argmax.
TEMPERATURE_BOUNDS = (0.05, 20.0)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of `[N, C]` logits, in float64 (stable for large logits)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of softmax(logits / temperature) against `labels`."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), np.asarray(labels)].mean()) if len(labels) else 0.0


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Equal-width bins of the top-1 probability: `low`, `high`, `count`, mean `confidence` and `accuracy` per bin
    (empty bins have `count` 0 and no confidence / accuracy)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1) if len(probabilities) else np.zeros(0)
    correct = (probabilities.argmax(axis=1) == np.asarray(labels)) if len(probabilities) else np.zeros(0, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 (impossible after softmax) would go to bin 0.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for i in range(bins):
        members = index == i
        count = int(members.sum())
        rows.append({
            "low": float(edges[i]), "high": float(edges[i + 1]), "count": count,
            "confidence": float(confidence[members].mean()) if count else None,
            "accuracy": float(correct[members].mean()) if count else None,
        })
    return rows


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean of |accuracy - confidence| over equal-width top-1 probability bins (0 = calibrated).

    Args:
        probabilities (`np.ndarray`): `[N, C]` class probabilities.
        labels (`np.ndarray`): `[N]` true class ids.
        bins (`int`, defaults to 15): number of bins.
    """
    rows = reliability_bins(probabilities, labels, bins)
    total = sum(row["count"] for row in rows)
    if not total:
        return 0.0
    return float(sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in rows if row["count"]) / total)


# Validation images per class from which `--calibrate`'s default fits a temperature on a trained network. At 40
# per class (eurosat) T lowered the test ECE of a fine-tune 2-3x; at ~18 (hymenoptera) it made it slightly worse
# (docs/benchmarks.md, issue 16).
MIN_CALIBRATION_IMAGES_PER_CLASS = 20


def calibration_decision(requested: bool | None, trained: bool, validation_counts: Sequence[int]) -> tuple[bool, str]:
    """Whether to fold a temperature into the saved model, and why: `--calibrate` when given; else on for a trained
    network whose validation split has at least `MIN_CALIBRATION_IMAGES_PER_CLASS` images of every class, off for the
    linear probe (its head already carries a temperature fitted out of fold) and for smaller validation splits."""
    if requested is not None:
        return requested, f"--calibrate {str(requested).lower()}"
    if not trained:
        return False, "default: off for the linear probe, whose head already carries a temperature fitted out of fold"
    fewest = min(validation_counts, default=0)
    if fewest < MIN_CALIBRATION_IMAGES_PER_CLASS:
        return False, (
            f"default: off, the validation split has {fewest} image(s) of its smallest class (a temperature needs "
            f"{MIN_CALIBRATION_IMAGES_PER_CLASS}+ per class to lower the test ECE)"
        )
    return True, f"default: on, a trained network and {fewest}+ validation images per class"


# |ln T| below which the default leaves the model alone: T within ~5% of 1 moves the test ECE by less than the
# split-to-split noise (eurosat seed 1: T = 1.03, test ECE 0.029 -> 0.032), while the labels-smoothed fine-tunes that
# need it come out near T = 0.75 (seed 0: ECE 0.074 -> 0.027).
NEGLIGIBLE_LOG_TEMPERATURE = 0.05


def negligible(temperature: float) -> bool:
    """True for a fitted temperature the default does not fold into the model (see `NEGLIGIBLE_LOG_TEMPERATURE`)."""
    return abs(math.log(temperature)) < NEGLIGIBLE_LOG_TEMPERATURE


def choose_temperature(
    requested: bool | None, trained: bool, logits: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[float, str]:
    """The temperature to fold into the saved model (1.0: none) and why (`calibration_decision`); the default also
    leaves out a fitted T that is `negligible`.

    Args:
        requested (`bool`, *optional*): `--calibrate` (None: the default decides).
        trained (`bool`): whether a network was trained (False: the linear probe is the model).
        logits, labels (`np.ndarray`): the validation split's, where T is fitted.
        num_classes (`int`): classes of the run (a class without validation images counts as 0).
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()
    calibrate, decision = calibration_decision(requested, trained, counts)
    if not calibrate:
        return 1.0, decision
    temperature = fit_temperature(logits, labels)
    if requested is None and temperature != 1.0 and negligible(temperature):
        return 1.0, f"{decision}; T = {temperature:.3f} is within 5% of 1, so the model is left as it is"
    return temperature, decision


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on held-out data (the validation split).

    A bounded 1-D search over log T; the result is 1.0 when no T lowers the NLL (so it never makes it worse) and when
    the minimum lies on a bound of `TEMPERATURE_BOUNDS` (e.g. a validation split classified perfectly, whose NLL
    only falls as T -> 0).
    """
    from scipy.optimize import minimize_scalar

    if len(labels) == 0:
        return 1.0
    if (np.asarray(logits).argmax(axis=1) == np.asarray(labels)).all():
        # Every image right: the NLL only falls as T -> 0, so the split cannot say how confident to be.
        logger.info("Temperature scaling skipped: the model classifies every validation image correctly.")
        return 1.0
    low, high = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, math.exp(log_t)), bounds=(low, high), method="bounded",
        options={"xatol": 1e-4},
    )
    temperature = float(math.exp(result.x))
    if min(abs(result.x - low), abs(high - result.x)) < 0.05:
        # The NLL keeps falling towards a bound: a validation split the model separates perfectly (T -> 0) or where it
        # is no better than chance (T -> inf) says nothing about the right temperature.
        logger.warning("Temperature scaling skipped: the validation NLL has no minimum inside T in %s.", TEMPERATURE_BOUNDS)
        return 1.0
    if negative_log_likelihood(logits, labels, temperature) >= negative_log_likelihood(logits, labels, 1.0):
        return 1.0
    return temperature


def fold_temperature(model: torch.nn.Module, temperature: float, stage_map: StageMap | None = None) -> list[str]:
    """Divides the weights and biases of the head's final linear layer(s) by `temperature`, in place, so the model's
    logits become logits / T: calibrated probabilities straight from the saved model, the same argmax.

    A LoRA (peft) model is folded in its base model: the head is a module peft saves in full, so both of its copies
    (the trained one and the original) are found and scaled, and merging keeps the folded head.

    Args:
        model (`torch.nn.Module`): the classifier (or a peft model around it).
        temperature (`float`): T > 0 from `fit_temperature`.
        stage_map (`StageMap`, *optional*): the model's stages (discovered if omitted).

    Returns:
        `list[str]`: the names of the layers folded.
    """
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"The temperature must be a positive number, got {temperature}.")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = head_linear_layers(base, stage_map)
    with torch.no_grad():
        for _, layer in layers:
            layer.weight.div_(temperature)
            if layer.bias is not None:
                layer.bias.div_(temperature)
    return [name for name, _ in layers]


def calibration_report(
    validation_logits: np.ndarray, validation_labels: np.ndarray, test_logits: np.ndarray, test_labels: np.ndarray,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """ECE and NLL before and after dividing the logits by `temperature`, on validation (where T was fitted) and
    test, with the test split's reliability bins before and after."""
    def measure(logits: np.ndarray, labels: np.ndarray, t: float) -> dict[str, float]:
        return {
            "ece": expected_calibration_error(softmax(np.asarray(logits) / t), labels),
            "nll": negative_log_likelihood(logits, labels, t),
        }

    return {
        "temperature": float(temperature),
        "bins": ECE_BINS,
        "validation": {"before": measure(validation_logits, validation_labels, 1.0), "after": measure(validation_logits, validation_labels, temperature)},
        "test": {"before": measure(test_logits, test_labels, 1.0), "after": measure(test_logits, test_labels, temperature)},
        "reliability": {  # the test split's non-empty bins
            "before": [row for row in reliability_bins(softmax(test_logits), test_labels) if row["count"]],
            "after": [row for row in reliability_bins(softmax(np.asarray(test_logits) / temperature), test_labels) if row["count"]],
        },
    }


def plot_reliability_diagram(calibration: dict[str, Any], path: str, split: str = "test") -> str:
    """Writes the reliability diagram of `calibration_report`'s bins: accuracy per confidence bin before (and, when
    T != 1, after) temperature scaling, with the diagonal of perfect calibration. Returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    curves = [("before", "tab:red", "T = 1")]
    if calibration["temperature"] != 1.0:
        curves.append(("after", "tab:blue", f"T = {calibration['temperature']:.2f}"))
    for key, colour, name in curves:
        rows = [row for row in calibration["reliability"][key] if row["count"]]
        ece = calibration[split][key]["ece"]
        ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker="o", color=colour,
                label=f"{name} (ECE {ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram ({split} split)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

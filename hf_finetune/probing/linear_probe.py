"""The frozen-feature baseline: a linear classifier on cached backbone features.

`fit_linear_probe` trains an L2-regularised logistic regression (scikit-learn, lbfgs) on centred, globally scaled
train features, picking the inverse regularisation strength `C` on the validation split (macro-F1). The result is an
ordinary linear map (standardisation folded in), so it can be written into the model's own head
(`write_probe_into_head`): the `linear_probe` strategy then saves and reloads as a normal classifier, and
`head_then_unfreeze` / `top_k` / `full` can start from a fitted head instead of a random one (LP-FT).
`baseline_report` scores the probe like a fine-tuned model (the baseline every run is compared with); the stage probe
reuses the `C` search (`search_c`, `best_c`).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score

from hf_finetune.backbones.taps import head_linear_layers
from hf_finetune.evaluation.metrics import classification_report
from hf_finetune.probing.features import FeatureSet, SplitFeatures

logger = logging.getLogger(__name__)

# Inverse L2 strengths tried on the validation split: from heavily regularised to nearly unregularised.
PROBE_C_GRID: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)


@dataclass
class LinearProbe:
    """A fitted linear classifier on raw (unstandardised) features: `logits = features @ weight.T + bias`.

    Attributes:
        weight (`np.ndarray`): `[num_labels, feature_dim]`.
        bias (`np.ndarray`): `[num_labels]`.
        C (`float`): the chosen inverse regularisation strength.
        validation_macro_f1 (`float`): macro-F1 of the chosen `C` on the validation split.
        candidates (`dict[float, float]`): validation macro-F1 of every `C` tried.
        seconds (`float`): fitting time (the C search included).
    """

    weight: np.ndarray
    bias: np.ndarray
    C: float
    validation_macro_f1: float
    candidates: dict[float, float]
    seconds: float

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weight.T + self.bias

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.logits(features).argmax(axis=1)


def _standardiser(features: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-feature mean and ONE global scale (root mean variance).

    A per-feature scale would divide near-constant features (dead units: common on a domain far from the
    pretraining data) by a tiny std; folded into the head, such weights explode as soon as fine-tuning moves
    those features. One global scale keeps the solver well conditioned and the head's weights bounded.
    """
    mean = features.mean(axis=0)
    scale = float(np.sqrt(features.var(axis=0).mean()))
    return mean, scale if scale > 1e-12 else 1.0


def _fit_logistic(x: np.ndarray, y: np.ndarray, num_labels: int, C: float, seed: int, class_weight: Any) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on standardised features -> (weight [K, D], bias [K])."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    present = np.unique(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the validation split judges the fit, not the tolerance
        clf = LogisticRegression(C=C, max_iter=300, random_state=seed, class_weight=class_weight).fit(x, y)
    weight = np.zeros((num_labels, x.shape[1]), dtype=np.float64)
    bias = np.full(num_labels, -1e4, dtype=np.float64)  # classes absent from train are never predicted
    if len(present) == 2:  # binary: sklearn fits one vector for the second class against the first
        weight[present[1]], bias[present[1]] = clf.coef_[0], clf.intercept_[0]
        bias[present[0]] = 0.0
    else:
        weight[present], bias[present] = clf.coef_, clf.intercept_
    return weight, bias


def search_c(
    train: FeatureSet, validation: FeatureSet, num_labels: int, c_grid: tuple[float, ...] = PROBE_C_GRID, seed: int = 0, class_weight: str | None = None
) -> tuple[np.ndarray, float, dict[float, float], dict[float, tuple[np.ndarray, np.ndarray]]]:
    """Standardises on `train` and fits one probe per `C`, quietly (the stage probe calls it per fold and stage).

    Returns:
        `(mean, scale, {C: validation macro-F1}, {C: (weight, bias)})`: the standardisation and, per `C`, the score
        on `validation` and the fit on standardised features.
    """
    if len(np.unique(train.labels)) < 2:
        raise ValueError("The linear probe needs at least 2 classes in the training split.")
    mean, std = _standardiser(train.features)
    x_train = (train.features - mean) / std
    x_val = (validation.features - mean) / std
    candidates: dict[float, float] = {}
    fits = {}
    for C in c_grid:
        weight, bias = _fit_logistic(x_train, train.labels, num_labels, C, seed, class_weight)
        predictions = (x_val @ weight.T + bias).argmax(axis=1)
        candidates[C] = float(f1_score(validation.labels, predictions, average="macro", zero_division=0))
        fits[C] = (weight, bias)
    return mean, std, candidates, fits


def best_c(candidates: dict[float, float]) -> float:
    """The `C` with the best score; ties go to the stronger regularisation (smaller `C`)."""
    return max(candidates, key=lambda C: (round(candidates[C], 6), -C))


def fit_linear_probe(
    train: FeatureSet,
    validation: FeatureSet,
    num_labels: int,
    *,
    c_grid: tuple[float, ...] = PROBE_C_GRID,
    seed: int = 0,
    class_weight: str | None = None,
) -> LinearProbe:
    """Fits the linear probe on `train`, choosing `C` by validation macro-F1 (ties: the stronger regularisation).

    Args:
        train (`FeatureSet`): training features.
        validation (`FeatureSet`): validation features (selects `C`).
        num_labels (`int`): number of classes.
        c_grid (`tuple[float, ...]`, defaults to `PROBE_C_GRID`): inverse regularisation strengths to try.
        seed (`int`, defaults to 0): solver seed.
        class_weight (`str`, *optional*): `"balanced"` to weight classes by inverse frequency.

    Returns:
        `LinearProbe` with the standardisation folded into its weights.
    """
    start = time.perf_counter()
    mean, std, candidates, fits = search_c(train, validation, num_labels, c_grid, seed, class_weight)
    best = best_c(candidates)
    weight, bias = fits[best]
    # Fold the scaling in: w.(x - m)/s + b = (w/s).x + (b - (w/s).m).
    raw_weight = weight / std
    raw_bias = bias - raw_weight @ mean
    probe = LinearProbe(
        weight=raw_weight.astype(np.float32),
        bias=raw_bias.astype(np.float32),
        C=best,
        validation_macro_f1=candidates[best],
        candidates=candidates,
        seconds=time.perf_counter() - start,
    )
    logger.info(
        "Linear probe: C=%g (validation macro-F1 %.4f; tried %s) in %.2fs",
        best, candidates[best], ", ".join(f"{c:g}:{f:.3f}" for c, f in candidates.items()), probe.seconds,
    )
    return probe


def baseline_report(features: SplitFeatures, labels: list[str], *, seed: int = 0, class_weight: str | None = None) -> tuple[dict[str, Any], LinearProbe]:
    """Fits the probe and evaluates it once on the test features.

    Returns:
        `(report, probe)`: the report has the keys of `classification_report` plus `method`, `C`,
        `validation_macro_f1`, `seconds` (probe fitting, C search included) and `feature_seconds` (the feature
        pass, mostly cache reads on a warm cache).
    """
    probe = fit_linear_probe(features.train, features.validation, len(labels), seed=seed, class_weight=class_weight)
    report = classification_report(features.test.labels, probe.predict(features.test.features), labels)
    report.update(
        method="logistic regression on frozen features (C chosen on validation macro-F1)",
        C=probe.C,
        validation_macro_f1=probe.validation_macro_f1,
        seconds=round(probe.seconds, 4),
        feature_seconds=round(features.seconds, 4),
    )
    return report, probe


@torch.no_grad()
def write_probe_into_head(model: torch.nn.Module, probe: LinearProbe) -> list[str]:
    """Copies the probe into the head's final linear layer(s); returns their module names.

    With several head layers (DeiT's class + distillation heads, whose logits are averaged and whose inputs were
    concatenated into the features), layer i gets `n * weight[:, slice_i]` and the full bias, so the average of
    their logits equals the probe's.
    """
    layers = head_linear_layers(model)
    offset = 0
    for _, layer in layers:
        width = layer.in_features
        part = torch.from_numpy(probe.weight[:, offset : offset + width]) * len(layers)
        layer.weight.copy_(part.to(layer.weight))
        if layer.bias is not None:
            layer.bias.copy_(torch.from_numpy(probe.bias).to(layer.bias))
        offset += width
    if offset != probe.weight.shape[1]:
        raise ValueError(f"The probe has {probe.weight.shape[1]} input features but the head layers take {offset}.")
    return [name for name, _ in layers]

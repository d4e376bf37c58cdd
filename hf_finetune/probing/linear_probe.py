"""The frozen-feature baseline: a linear classifier on cached backbone features.

`fit_linear_probe` follows the linear-evaluation protocols of the self-supervised literature and is stricter about
small data: an L2-regularised logistic regression (scikit-learn, lbfgs) on centred, globally scaled features whose
inverse regularisation strength `C` is chosen by stratified k-fold cross-validation over train + validation pooled
(mean out-of-fold macro-F1: far less noisy than one small validation split), then fitted twice with that `C`:
    full    on train + validation: the reported baseline and, for `--strategy linear_probe`, the model itself
    start   on train only: the head a fine-tune starts from (LP-FT), scored on the untouched validation split so that
            model selection can compare it with the fine-tune on equal terms
Each fit is an ordinary linear map (standardisation folded in), written into the model's own head with
`write_probe_into_head`. `baseline_report` scores the full fit like a fine-tuned model; the stage probe reuses the
`C` search (`search_c`, `best_c`).
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
from hf_finetune.evaluation.calibration import fit_temperature
from hf_finetune.evaluation.metrics import classification_report
from hf_finetune.probing.features import FeatureSet, SplitFeatures

logger = logging.getLogger(__name__)

# Inverse L2 strengths tried: from heavily regularised to nearly unregularised.
PROBE_C_GRID: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)
# The probe's own search is wider (scikit-learn's LogisticRegressionCV spans 1e-4 .. 1e4): cross-validation over
# train + validation can afford it and small domain datasets often want strong regularisation.
CV_C_GRID: tuple[float, ...] = (1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 100.0)
CV_FOLDS = 5


@dataclass
class LinearProbe:
    """A fitted linear classifier on raw (unstandardised) features: `logits = features @ weight.T + bias`.

    Attributes:
        weight (`np.ndarray`): `[num_labels, feature_dim]`, fitted on train only (the LP-FT start).
        bias (`np.ndarray`): `[num_labels]`.
        C (`float`): the chosen inverse regularisation strength.
        validation_macro_f1 (`float`): macro-F1 of the train-only fit on the validation split.
        candidates (`dict[float, float]`): the score of every `C` tried (cross-validated, or on validation).
        seconds (`float`): fitting time (the C search included).
        full_weight (`np.ndarray`, *optional*): the fit on train + validation (None when `C` was chosen on
            validation: then validation is not part of any fit).
        full_bias (`np.ndarray`, *optional*): its bias.
        cv_macro_f1 (`float`, *optional*): mean out-of-fold macro-F1 of the chosen `C` over train + validation.
        cv_std (`float`, *optional*): its standard deviation over the folds.
        folds (`int`): cross-validation folds (0 when `C` was chosen on the validation split).
        temperature (`float`): the logit scale the weights were divided by, fitted on the out-of-fold logits of the
            chosen `C` (1.0 without cross-validation). Predictions are unchanged; probabilities are calibrated, and a
            fine-tune starting from this head does not begin with overconfident mistakes on augmented images.
    """

    weight: np.ndarray
    bias: np.ndarray
    C: float
    validation_macro_f1: float
    candidates: dict[float, float]
    seconds: float
    full_weight: np.ndarray | None = None
    full_bias: np.ndarray | None = None
    cv_macro_f1: float | None = None
    cv_std: float | None = None
    folds: int = 0
    temperature: float = 1.0

    def logits(self, features: np.ndarray, full: bool = False) -> np.ndarray:
        """Logits of the train-only fit, or of the train + validation fit (`full`, where there is one)."""
        if full and self.full_weight is not None:
            return features @ self.full_weight.T + self.full_bias
        return features @ self.weight.T + self.bias

    def predict(self, features: np.ndarray, full: bool = False) -> np.ndarray:
        return self.logits(features, full).argmax(axis=1)

    def summary(self) -> dict[str, Any]:
        """What `run_config.json` / `schedule.json` record of the probe."""
        return {
            "C": self.C,
            "selection": f"stratified {self.folds}-fold CV over train + validation" if self.folds else "validation split",
            "cv_macro_f1": None if self.cv_macro_f1 is None else round(self.cv_macro_f1, 4),
            "cv_std": None if self.cv_std is None else round(self.cv_std, 4),
            "validation_macro_f1": self.validation_macro_f1,
            "candidates": {str(c): f for c, f in self.candidates.items()},
            "refit_on_train_and_validation": self.full_weight is not None,
            "temperature": round(self.temperature, 4),
        }


def _standardiser(features: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-feature mean and ONE global scale (root mean variance).

    A per-feature scale would divide near-constant features (dead units: common on a domain far from the
    pretraining data) by a tiny std; folded into the head, such weights explode as soon as fine-tuning moves
    those features. One global scale keeps the solver well conditioned and the head's weights bounded.
    """
    mean = features.mean(axis=0)
    scale = float(np.sqrt(features.var(axis=0).mean()))
    return mean, scale if scale > 1e-12 else 1.0


def _fit_logistic(
    x: np.ndarray, y: np.ndarray, num_labels: int, C: float, seed: int, class_weight: Any, estimator: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on standardised features -> (weight [K, D], bias [K]).

    `estimator`, a `LogisticRegression(warm_start=True)` reused over increasing `C` on the same data, starts each fit
    from the previous solution (a C grid then costs little more than its largest `C`).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    present = np.unique(y)
    clf = estimator if estimator is not None else LogisticRegression(max_iter=300, random_state=seed, class_weight=class_weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the validation split judges the fit, not the tolerance
        clf.set_params(C=C).fit(x, y)
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


def _folded(weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A fit on standardised features as a map on raw ones: w.(x - m)/s + b = (w/s).x + (b - (w/s).m)."""
    raw_weight = weight / scale
    return raw_weight.astype(np.float32), (bias - raw_weight @ mean).astype(np.float32)


def cross_validated_c(
    pooled: FeatureSet, num_labels: int, c_grid: tuple[float, ...], folds: int, seed: int, class_weight: str | None
) -> tuple[dict[float, tuple[float, float]], dict[float, np.ndarray]]:
    """Stratified `folds`-fold CV of every `C` on `pooled` (standardised within each fold on its training part).

    Returns:
        `({C: (mean, std) of the fold macro-F1s}, {C: out-of-fold logits [len(pooled), num_labels]})`.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores: dict[float, list[float]] = {C: [] for C in c_grid}
    logits = {C: np.zeros((len(pooled.labels), num_labels)) for C in c_grid}
    for fit_index, held_index in splitter.split(pooled.features, pooled.labels):
        mean, scale = _standardiser(pooled.features[fit_index])
        x_fit = (pooled.features[fit_index] - mean) / scale
        x_held = (pooled.features[held_index] - mean) / scale
        estimator = LogisticRegression(warm_start=True, max_iter=300, random_state=seed, class_weight=class_weight)
        for C in sorted(c_grid):
            weight, bias = _fit_logistic(x_fit, pooled.labels[fit_index], num_labels, C, seed, class_weight, estimator)
            logits[C][held_index] = x_held @ weight.T + bias
            predictions = logits[C][held_index].argmax(axis=1)
            scores[C].append(float(f1_score(pooled.labels[held_index], predictions, average="macro", zero_division=0)))
    return {C: (float(np.mean(v)), float(np.std(v))) for C, v in scores.items()}, logits


def out_of_fold_logits(
    pooled: FeatureSet, num_labels: int, C: float, folds: int, seed: int, class_weight: str | None
) -> np.ndarray:
    """Logits of every pooled image from the fold fit at `C` that did not see it (the folds of `cross_validated_c`)."""
    return cross_validated_c(pooled, num_labels, (C,), folds, seed, class_weight)[1][C]


def _cv_folds(pooled: FeatureSet, folds: int) -> int:
    """As many folds as the rarest class allows (every fold must hold each class once), at most `folds`."""
    counts = np.bincount(pooled.labels)
    present = counts[counts > 0]  # a class absent from both splits is no constraint on the folds
    return min(folds, int(present.min())) if len(present) else 0


def _train_and_full_fits(
    train: FeatureSet, validation: FeatureSet, pooled: FeatureSet, num_labels: int, C: float, seed: int, class_weight: Any
) -> LinearProbe:
    """The probe at `C` fitted on train (scored on validation) and on train + validation."""
    mean, scale = _standardiser(train.features)
    weight, bias = _folded(*_fit_logistic((train.features - mean) / scale, train.labels, num_labels, C, seed, class_weight), mean, scale)
    predictions = (validation.features @ weight.T + bias).argmax(axis=1)
    validation_macro_f1 = float(f1_score(validation.labels, predictions, average="macro", zero_division=0))
    full_mean, full_scale = _standardiser(pooled.features)
    full_x = (pooled.features - full_mean) / full_scale
    full_weight, full_bias = _folded(*_fit_logistic(full_x, pooled.labels, num_labels, C, seed, class_weight), full_mean, full_scale)
    return LinearProbe(
        weight=weight, bias=bias, C=C, validation_macro_f1=validation_macro_f1, candidates={}, seconds=0.0,
        full_weight=full_weight, full_bias=full_bias,
    )


def fit_linear_probe(
    train: FeatureSet,
    validation: FeatureSet,
    num_labels: int,
    *,
    c_grid: tuple[float, ...] = CV_C_GRID,
    seed: int = 0,
    class_weight: str | None = None,
    folds: int = CV_FOLDS,
) -> LinearProbe:
    """Fits the linear probe: `C` by stratified `folds`-fold CV over train + validation (ties: the stronger
    regularisation), then one fit on train (scored on validation) and one on train + validation.

    With `folds=0`, or when a class has fewer images than 2 folds need, `C` is chosen on the validation split
    instead and there is no train + validation fit.

    Args:
        train (`FeatureSet`): training features.
        validation (`FeatureSet`): validation features.
        num_labels (`int`): number of classes.
        c_grid (`tuple[float, ...]`, defaults to `CV_C_GRID`): inverse regularisation strengths to try.
        seed (`int`, defaults to 0): fold assignment and solver seed.
        class_weight (`str`, *optional*): `"balanced"` to weight classes by inverse frequency.
        folds (`int`, defaults to `CV_FOLDS`): cross-validation folds.

    Returns:
        `LinearProbe` with the standardisation folded into its weights.
    """
    start = time.perf_counter()
    pooled = FeatureSet(np.concatenate([train.features, validation.features]), np.concatenate([train.labels, validation.labels]))
    folds = _cv_folds(pooled, folds) if len(validation.labels) else 0
    if folds < 2:  # too few images of some class to cross-validate: C by the validation split, no refit on it
        mean, std, candidates, fits = search_c(train, validation, num_labels, c_grid, seed, class_weight)
        best = best_c(candidates)
        weight, bias = _folded(*fits[best], mean, std)
        probe = LinearProbe(weight=weight, bias=bias, C=best, validation_macro_f1=candidates[best], candidates=candidates, seconds=0.0)
    else:
        cv, oof_logits = cross_validated_c(pooled, num_labels, c_grid, folds, seed, class_weight)
        candidates = {C: score for C, (score, _) in cv.items()}
        best = best_c(candidates)
        probe = _train_and_full_fits(train, validation, pooled, num_labels, best, seed, class_weight)
        probe.candidates, probe.folds = candidates, folds
        probe.cv_macro_f1, probe.cv_std = cv[best]
        probe.temperature = fit_temperature(oof_logits[best], pooled.labels)
        for name in ("weight", "bias", "full_weight", "full_bias"):
            setattr(probe, name, (getattr(probe, name) / probe.temperature).astype(np.float32))
    probe.seconds = time.perf_counter() - start
    logger.info(
        "Linear probe: C=%g by %s (macro-F1 %.4f; tried %s), temperature %.2f, in %.2fs",
        best, f"{probe.folds}-fold CV over train + validation" if probe.folds else "the validation split",
        candidates[best], ", ".join(f"{c:g}:{f:.3f}" for c, f in candidates.items()), probe.temperature, probe.seconds,
    )
    return probe


def baseline_report(features: SplitFeatures, labels: list[str], *, seed: int = 0, class_weight: str | None = None) -> tuple[dict[str, Any], LinearProbe]:
    """Fits the probe and evaluates its train + validation fit once on the test features.

    Returns:
        `(report, probe)`: the report has the keys of `classification_report` plus `method`, `C`,
        `validation_macro_f1`, `cv_macro_f1`, `cv_std`, `seconds` (probe fitting, C search included) and
        `feature_seconds` (the feature pass, mostly cache reads on a warm cache).
    """
    probe = fit_linear_probe(features.train, features.validation, len(labels), seed=seed, class_weight=class_weight)
    report = classification_report(features.test.labels, probe.predict(features.test.features, full=True), labels)
    selection = f"C by {probe.folds}-fold CV over train + validation, refit on both" if probe.folds else "C chosen on validation macro-F1"
    report.update(
        method=f"logistic regression on frozen features ({selection})",
        C=probe.C,
        validation_macro_f1=probe.validation_macro_f1,
        cv_macro_f1=probe.cv_macro_f1,
        cv_std=probe.cv_std,
        seconds=round(probe.seconds, 4),
        feature_seconds=round(features.seconds, 4),
    )
    return report, probe


@torch.no_grad()
def write_probe_into_head(model: torch.nn.Module, probe: LinearProbe, full: bool = False) -> list[str]:
    """Copies the probe (its train-only fit, or with `full` its train + validation fit) into the head's final linear
    layer(s); returns their module names.

    With several head layers (DeiT's class + distillation heads, whose logits are averaged and whose inputs were
    concatenated into the features), layer i gets `n * weight[:, slice_i]` and the full bias, so the average of
    their logits equals the probe's.
    """
    layers = head_linear_layers(model)
    weight, bias = (probe.full_weight, probe.full_bias) if full and probe.full_weight is not None else (probe.weight, probe.bias)
    offset = 0
    for _, layer in layers:
        width = layer.in_features
        part = torch.from_numpy(weight[:, offset : offset + width]) * len(layers)
        layer.weight.copy_(part.to(layer.weight))
        if layer.bias is not None:
            layer.bias.copy_(torch.from_numpy(bias).to(layer.bias))
        offset += width
    if offset != weight.shape[1]:
        raise ValueError(f"The probe has {weight.shape[1]} input features but the head layers take {offset}.")
    return [name for name, _ in layers]

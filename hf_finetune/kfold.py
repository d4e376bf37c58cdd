"""Stratified k-fold (`--kfold K`): K runs, mean and 95% confidence interval of the test metrics.

Design: the folds are made over train + validation pooled (scikit-learn `StratifiedKFold`, shuffled with
`--seed`); in fold i, fold i is the validation split (checkpoint selection, early stopping, the advisor's
measurements) and the other K-1 folds are the training split. The test split stays held out and identical in
every fold, evaluated once per fold. The interval (Student t, K-1 degrees of freedom) therefore describes how much
the result depends on which images trained and selected the model, not the sampling noise of the test split.

Each fold runs in `<output_dir>/fold-<i>` with its own advisor decision; `kfold_report.json` in `--output-dir`
holds the per-fold figures and the summary.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from typing import Any

import numpy as np

from .arguments import DataArguments, FinetuneArguments, FinetuneTrainingArguments, ModelArguments
from .data import DataSplits, load_splits

logger = logging.getLogger(__name__)

KFOLD_REPORT_FILE = "kfold_report.json"
CONFIDENCE = 0.95


def t_interval(values: list[float], confidence: float = CONFIDENCE) -> dict[str, float]:
    """Mean and two-sided Student-t confidence interval of `values` (at least 2).

    Returns:
        `dict` with `mean`, `std` (sample), `half_width`, `low`, `high`, `n`.
    """
    from scipy import stats

    n = len(values)
    if n < 2:
        raise ValueError(f"A confidence interval needs at least 2 values, got {n}.")
    array = np.asarray(values, dtype=np.float64)
    mean, std = float(array.mean()), float(array.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1) * std / math.sqrt(n))
    return {"mean": mean, "std": std, "half_width": half, "low": mean - half, "high": mean + half, "n": n}


def kfold_splits(splits: DataSplits, k: int, seed: int) -> list[DataSplits]:
    """K stratified folds over train + validation; every fold keeps the same held-out test split."""
    import datasets
    from sklearn.model_selection import StratifiedKFold

    pool = datasets.concatenate_datasets([splits.train.with_format(None), splits.validation.with_format(None)])
    labels = np.asarray(pool["label"])
    smallest = int(np.bincount(labels).min()) if len(labels) else 0
    if smallest < k:
        raise ValueError(
            f"`--kfold` {k} needs at least {k} train+validation images per class; the smallest class has {smallest}. "
            "Use fewer folds."
        )
    folds = []
    for index, (train_rows, val_rows) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(labels, labels)):
        provenance = {
            **{key: value for key, value in splits.provenance.items() if key not in ("train", "validation", "counts")},
            "train": f"train+validation minus fold {index} of {k} (stratified, seed {seed})",
            "validation": f"fold {index} of {k} of train+validation (stratified, seed {seed})",
        }
        fold = DataSplits(
            train=pool.select(train_rows.tolist()),
            validation=pool.select(val_rows.tolist()),
            test=copy.copy(splits.test),
            labels=splits.labels,
            provenance=provenance,
        )
        fold.provenance["counts"] = fold.counts()
        folds.append(fold)
    return folds


def run_kfold(
    model_args: ModelArguments,
    data_args: DataArguments,
    finetune_args: FinetuneArguments,
    training_args: FinetuneTrainingArguments,
) -> dict[str, Any]:
    """Runs `finetune_args.kfold` folds and writes `kfold_report.json`; returns the report."""
    from .run import run_finetune

    k = finetune_args.kfold
    base = load_splits(data_args, seed=training_args.seed)
    folds = kfold_splits(base, k, training_args.seed)
    os.makedirs(training_args.output_dir, exist_ok=True)
    per_fold = []
    for index, fold in enumerate(folds):
        fold_training = copy.deepcopy(training_args)
        fold_training.output_dir = os.path.join(training_args.output_dir, f"fold-{index}")
        fold_finetune = copy.deepcopy(finetune_args)
        fold_finetune.kfold = 0
        logger.info("Fold %d/%d: %d train / %d validation / %d test images", index + 1, k, len(fold.train), len(fold.validation), len(fold.test))
        result = run_finetune(copy.deepcopy(model_args), copy.deepcopy(data_args), fold_finetune, fold_training, splits=fold)
        report = result.test_report
        per_fold.append(
            {
                "fold": index,
                "output_dir": fold_training.output_dir,
                "strategy": fold_finetune.strategy,
                "test_accuracy": report["accuracy"],
                "test_macro_f1": report["macro_f1"],
                **({"baseline_accuracy": report["baseline"]["accuracy"], "baseline_macro_f1": report["baseline"]["macro_f1"]} if "baseline" in report else {}),
            }
        )
    summary = {
        "k": k,
        "seed": training_args.seed,
        "design": "stratified folds over train+validation; fold i = validation split of run i; the test split is held "
        "out and identical in every fold",
        "confidence": CONFIDENCE,
        "folds": per_fold,
        "test_accuracy": t_interval([f["test_accuracy"] for f in per_fold]),
        "test_macro_f1": t_interval([f["test_macro_f1"] for f in per_fold]),
    }
    if all("baseline_macro_f1" in f for f in per_fold):
        summary["baseline_macro_f1"] = t_interval([f["baseline_macro_f1"] for f in per_fold])
    with open(os.path.join(training_args.output_dir, KFOLD_REPORT_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    return summary

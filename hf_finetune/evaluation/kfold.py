"""The statistics of stratified k-fold (`--kfold K`): the folds, and the confidence interval of their results.

`kfold_splits` makes the folds over train + validation pooled (scikit-learn `StratifiedKFold`, shuffled with
`--seed`): in fold i, fold i is the validation split and the other K-1 folds are the training split, while the test
split stays held out and identical in every fold. `t_interval` gives the mean and the two-sided Student-t interval
(K-1 degrees of freedom) of a metric over the folds, so it describes how much the result depends on which images
trained and selected the model, not the sampling noise of the test split. Running the folds is
`pipeline.kfold`.
"""

from __future__ import annotations

import copy
import logging
import math

import numpy as np

from hf_finetune.data.splits import DataSplits

logger = logging.getLogger(__name__)

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

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

import json
import logging
import os
from typing import Any

from hf_finetune.backbones.loading import resolve_model
from hf_finetune.config.files import KFOLD_REPORT_FILE
from hf_finetune.config.finetune import FinetuneArguments
from hf_finetune.config.sources import DataArguments, ModelArguments
from hf_finetune.config.training import FinetuneTrainingArguments
from hf_finetune.data.splits import load_splits
from hf_finetune.evaluation.kfold import CONFIDENCE, kfold_splits, t_interval
from hf_finetune.pipeline.assemble import check_streaming
from hf_finetune.pipeline.run import run_finetune
from hf_finetune.recipe.resolve import RunArguments

logger = logging.getLogger(__name__)


def run_kfold(
    model_args: ModelArguments,
    data_args: DataArguments,
    finetune_args: FinetuneArguments,
    training_args: FinetuneTrainingArguments,
) -> dict[str, Any]:
    """Runs `finetune_args.kfold` folds and writes `kfold_report.json`; returns the report."""
    k = finetune_args.kfold
    check_streaming(RunArguments(model_args, data_args, finetune_args, training_args))
    # As in a single run: a wrong or uncached --model fails in seconds, before the image check decodes every image.
    resolve_model(model_args.model, revision=model_args.revision, cache_dir=model_args.cache_dir,
                  trust_remote_code=model_args.trust_remote_code)
    base = load_splits(data_args, seed=training_args.seed)
    folds = kfold_splits(base, k, training_args.seed)
    os.makedirs(training_args.output_dir, exist_ok=True)
    per_fold = []
    base_args = RunArguments(model_args, data_args, finetune_args, training_args)
    for index, fold in enumerate(folds):
        # run_finetune never writes into its arguments: each fold only needs its own folder (and no nested k-fold).
        fold_args = base_args.replace(output_dir=os.path.join(training_args.output_dir, f"fold-{index}"), kfold=0)
        logger.info("Fold %d/%d: %d train / %d validation / %d test images", index + 1, k, len(fold.train), len(fold.validation), len(fold.test))
        result = run_finetune(fold_args.model, fold_args.data, fold_args.finetune, fold_args.training, splits=fold)
        report = result.test_report
        per_fold.append(
            {
                "fold": index,
                "output_dir": fold_args.training.output_dir,
                "strategy": result.arguments.finetune.strategy,
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

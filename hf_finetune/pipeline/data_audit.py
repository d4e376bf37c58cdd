"""The data audit inside a run (`probing/audit.py` does the work): when it runs, on which features, what it drops.

    splits, audit = filter_before_recipe(model, processor, splits, requested)   # --dedupe / --drop-suspect-labels
    prepared = prepare_recipe(model, processor, splits, requested, ...)           # on the filtered splits
    extra.update(audit_run(prepared, processor, splits, arguments, audit))        # else: on the recipe's features
    report.update(leakage_report(run.extra, test))                                # after the test evaluation

With `--dedupe` or `--drop-suspect-labels` the audit runs before the recipe, on a cached feature pass of its own,
so that the probe, the advisor, the baseline and the trainer all see the filtered splits (the recipe's own feature
pass then reads every vector from the cache). Otherwise it only reports, after the recipe, on the recipe's features
(no second pass), or under `--audit auto` on a pass of its own when that costs under `AUDIT_COST_SHARE` of the run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from hf_finetune.config.audit import AUDIT_COST_SHARE
from hf_finetune.config.choices import FALLBACKS
from hf_finetune.data.splits import DataSplits
from hf_finetune.probing.audit import (
    DataAudit,
    audit_data,
    filter_splits,
    leakage_effect,
    write_data_audit,
)
from hf_finetune.recipe.measure import BACKWARD_COST
from hf_finetune.recipe.prepare import PreparedRecipe, feature_pass, wants_stage_probe
from hf_finetune.recipe.resolve import RunArguments

logger = logging.getLogger(__name__)


@dataclass
class AuditStep:
    """An audit made before the recipe: the audit, the splits it looked at and what was dropped from them."""

    audit: DataAudit
    audited: DataSplits
    actions: dict[str, Any] = field(default_factory=dict)
    feature_seconds: float = 0.0


def _filters(arguments: RunArguments) -> bool:
    return bool(arguments.finetune.dedupe or arguments.finetune.drop_suspect_labels)


def _own_features(model: Any, processor: Any, splits: DataSplits, arguments: RunArguments) -> Any:
    """A cached feature pass for the audit, capturing the stages exactly when the recipe's pass will (the advisor
    decides the depth: `prepare.wants_stage_probe`), so that pass finds every vector in the cache."""
    finetune = arguments.finetune
    stages = wants_stage_probe(finetune)
    return feature_pass(
        model, processor, splits, arguments.model, finetune.feature_cache_dir, arguments.training.per_device_eval_batch_size,
        stages=stages,
    )


def filter_before_recipe(model: Any, processor: Any, splits: DataSplits, arguments: RunArguments) -> tuple[DataSplits, AuditStep | None]:
    """With `--dedupe` / `--drop-suspect-labels`: audits the splits on a cached feature pass and returns them
    filtered (with the audit); otherwise the splits unchanged and None."""
    if not _filters(arguments):
        return splits, None
    start = time.perf_counter()
    features = _own_features(model, processor, splits, arguments)
    finetune = arguments.finetune
    audit = audit_data(splits, features, seed=arguments.training.seed, threshold=finetune.near_duplicate_threshold)
    filtered, actions = filter_splits(splits, audit, dedupe=finetune.dedupe, drop_suspects=finetune.drop_suspect_labels)
    return filtered, AuditStep(audit, splits, actions, feature_seconds=time.perf_counter() - start - audit.seconds)


def audit_cost_share(splits: DataSplits, arguments: RunArguments) -> float:
    """The audit's estimated share of the run's wall time when its feature pass computes every image: one forward
    per image, against the training epochs' forward + backward passes (`measure.BACKWARD_COST`), the validation
    passes and the test pass, all in feature-pass images."""
    training = arguments.training
    images = len(splits.train) + len(splits.validation) + len(splits.test)
    epochs = training.num_train_epochs or float(FALLBACKS["num_train_epochs"])
    trained = training.max_steps * training.per_device_train_batch_size if training.max_steps > 0 else epochs * len(splits.train)
    run = trained * (1.0 + BACKWARD_COST) + epochs * len(splits.validation) + len(splits.test)
    return images / max(images + run, 1.0)


def audit_run(
    prepared: PreparedRecipe, processor: Any, splits: DataSplits, arguments: RunArguments, step: AuditStep | None = None
) -> dict[str, Any]:
    """The run's audit (the one made before the recipe, or one made now), written into the output directory;
    returns what `run_config.json` records (`{"data_audit": ...}`, or `{}` when it did not run)."""
    finetune, output_dir = arguments.finetune, arguments.training.output_dir
    if step is None:
        features, feature_seconds = prepared.features, 0.0
        if features is None:
            share = audit_cost_share(splits, arguments)
            if finetune.audit == "off" or (finetune.audit == "auto" and share >= AUDIT_COST_SHARE):
                logger.info("Data audit skipped (--audit %s; estimated %.0f%% of the run).", finetune.audit, 100 * share)
                return {}
            start = time.perf_counter()
            features = _own_features(prepared.model, processor, splits, arguments)
            feature_seconds = time.perf_counter() - start
        elif finetune.audit == "off":
            return {}
        audit = audit_data(
            splits, features, seed=arguments.training.seed, threshold=finetune.near_duplicate_threshold, probe=prepared.probe
        )
        step = AuditStep(audit, splits, feature_seconds=feature_seconds)
    write_data_audit(step.audit, step.audited, output_dir)
    logger.info(
        "Data audit cost: %.1fs (+%.1fs feature pass of its own)", step.audit.seconds, step.feature_seconds
    )
    test_twins = [] if "dedupe" in step.actions else step.audit.twins["test"]
    return {
        "data_audit": {
            **step.audit.summary(),
            "feature_seconds": round(step.feature_seconds, 3),
            "dropped": {action: len(rows) for action, rows in step.actions.items()},
            "actions": step.actions,
            "test_twin_rows": test_twins,
        }
    }


def leakage_report(extra: dict[str, Any], test: Any) -> dict[str, Any]:
    """`{"leakage": ...}`: the test metrics with and without the test images that have a twin in train or
    validation (`probing.audit.leakage_effect`), or `{}` when the audit found none or did not run."""
    rows = (extra.get("data_audit") or {}).get("test_twin_rows") or []
    return leakage_effect(rows, test.logits, test.labels, extra["labels"])

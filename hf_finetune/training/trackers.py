"""What the experiment trackers of `--report-to` receive beyond the Trainer's own logs, as flat dicts of numbers.

Every tracker integration of transformers (TensorBoard, W&B, MLflow, ...) is fed by `Trainer.log` through its
`on_log`, and files a key `eval_x` under `eval/x`, `test_x` under `test/x` and any other key under `train/`;
TensorBoard drops values that are not numbers (with a warning) and MLflow skips them. So everything here is a number,
keyed to land in the right section, and `FinetuneTrainer` (or the pipeline, for the test split) sends it through
`Trainer.log`, never to a tracker directly:

    lr/<group name>      every optimizer group's LR, beside the Trainer's own `learning_rate` (the head's)
    stages/trainable     backbone stages trainable after a freeze event; `stages/unfrozen`: the stages it unfroze
    gap/macro_f1         the gap monitor's train minus validation macro-F1; `gap/train_macro_f1`, `gap/mixup` beside it
    test_<metric>        the final test metrics; `test_baseline_<metric>`: the linear-probe baseline's, on the same split
"""

from __future__ import annotations

from typing import Any

from hf_finetune.config.choices import VALIDATION_METRICS
from hf_finetune.training.param_groups import group_learning_rates


def learning_rate_scalars(optimizer: Any) -> dict[str, float]:
    """`lr/<group name>` for every optimizer group (frozen groups included: their gated LR is 0)."""
    return {f"lr/{name}": lr for name, lr in group_learning_rates(optimizer).items()}


def freeze_scalars(events: list[dict[str, Any]], step: int) -> dict[str, float]:
    """The freeze events of the unfreeze callback that happened at `step` (the start, then each unfreeze), or `{}`.

    Args:
        events (`list[dict]`): `StageUnfreezeCallback.events` (`step`, `trainable`, and `unfrozen` after the start).
        step (`int`): the global step.
    """
    new = [event for event in events if event["step"] == step]
    if not new:
        return {}
    return {
        "stages/trainable": float(len(new[-1]["trainable"])),
        "stages/unfrozen": float(sum(len(event.get("unfrozen", ())) for event in new)),
    }


def gap_scalars(record: dict[str, Any]) -> dict[str, float]:
    """One epoch of the gap monitor (`GapMonitorCallback.observe`'s record): the gap, its train side, mixup on/off."""
    scalars = {"gap/train_macro_f1": float(record["train"]["macro_f1"]), "gap/mixup": float(bool(record["mixup"]))}
    if record["gap_macro_f1"] is not None:
        scalars["gap/macro_f1"] = float(record["gap_macro_f1"])
    return scalars


def _metrics(report: dict[str, Any] | None, prefix: str) -> dict[str, float]:
    # The metrics a validation pass reports, measured on the test split (a test report has no loss).
    report = report or {}
    return {f"{prefix}{name}": float(report[name]) for name in VALIDATION_METRICS if isinstance(report.get(name), (int, float))}


def report_scalars(report: dict[str, Any]) -> dict[str, float]:
    """The test report's metrics as `test_<metric>` and its linear-probe baseline's as `test_baseline_<metric>`.

    Args:
        report (`dict`): the run's test report (`pipeline.run.evaluate`), the baseline under `report["baseline"]`.
    """
    return {**_metrics(report, "test_"), **_metrics(report.get("baseline"), "test_baseline_")}

"""What a run does with its selected model before saving it: calibration, interpretation and test-time augmentation.

    test = split_logits(trainer, splits.test)                   # the test split's logits, once
    report = classification_report(...)                         # pipeline/run.py `evaluate`
    report.update(interpret_and_calibrate(run, report, test))    # this module

`interpret_and_calibrate` fits the temperature on the validation split and folds it into the head (`--calibrate`),
reports ECE and NLL before and after with a reliability diagram, lists the most confused class pairs and draws the
top-losses gallery of `--interpret-split`, and with `--tta` evaluates the test split again over the TTA views. The
plain test metrics stay what the saved model returns through `pipeline("image-classification")`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from hf_finetune.config.files import RELIABILITY_PLOT, TOP_LOSSES_JSON, TOP_LOSSES_PLOT
from hf_finetune.data.images import open_image, to_rgb
from hf_finetune.evaluation.calibration import (
    calibration_report,
    choose_temperature,
    fold_temperature,
    plot_reliability_diagram,
)
from hf_finetune.evaluation.interpretation import (
    most_confused,
    plot_top_losses,
    top_losses,
)
from hf_finetune.evaluation.metrics import classification_report
from hf_finetune.evaluation.tta import TTA_VIEWS, dataset_logits
from hf_finetune.pipeline.assemble import PreparedRun

logger = logging.getLogger(__name__)

INTERPRET_SPLITS = ("test", "validation")


@dataclass
class SplitLogits:
    """A split's logits `[N, C]` and true labels `[N]`, in the split's order."""

    logits: np.ndarray
    labels: np.ndarray


def split_logits(trainer: Any, dataset: Any) -> SplitLogits:
    """The model's logits on a transformed split, through `Trainer.predict` (devices, batching, several processes)."""
    output = trainer.predict(dataset, metric_key_prefix="test")
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    return SplitLogits(np.asarray(logits, dtype=np.float32), np.asarray(output.label_ids))


def interpret_and_calibrate(run: PreparedRun, report: dict[str, Any], test: SplitLogits) -> dict[str, Any]:
    """Calibration, interpretation and `--tta` of a run's selected model; returns the test report's new keys.

    With `--calibrate` the temperature fitted on validation is folded into the head of `run.trainer.model` (the model
    `save` writes). The reliability diagram and the top-losses gallery and JSON are written into the output directory
    by the main process.

    Args:
        run (`PreparedRun`): the run, its model selected.
        report (`dict`): the plain test report (its confusion matrix is reused).
        test (`SplitLogits`): the test split's logits from `split_logits`.

    Returns:
        `dict` with `calibration`, `interpretation` and, with `--tta`, `tta`.
    """
    finetune, trainer, output_dir = run.arguments.finetune, run.trainer, run.arguments.training.output_dir
    if finetune.interpret_split not in INTERPRET_SPLITS:
        raise ValueError(f"`--interpret-split` must be one of {INTERPRET_SPLITS}, got {finetune.interpret_split!r}.")
    writes = trainer.is_world_process_zero()
    validation = split_logits(trainer, run.splits.validation)
    temperature, decision = choose_temperature(
        finetune.calibrate, run.trains, validation.logits, validation.labels, len(run.splits.labels)
    )
    folded = fold_temperature(trainer.model, temperature, run.stage_map) if temperature != 1.0 else []
    calibration = calibration_report(validation.logits, validation.labels, test.logits, test.labels, temperature)
    calibration.update(applied=bool(folded), folded_into=folded, decision=decision)
    logger.info(
        "Calibration: T = %.3f, test ECE %.4f -> %.4f%s", temperature, calibration["test"]["before"]["ece"],
        calibration["test"]["after"]["ece"], "" if folded else " (not applied)",
    )
    additions: dict[str, Any] = {"calibration": calibration}
    if writes:
        plot_reliability_diagram(calibration, os.path.join(output_dir, RELIABILITY_PLOT))
    split = test if finetune.interpret_split == "test" else validation
    dataset = run.splits.test if finetune.interpret_split == "test" else run.splits.validation
    scaled = SplitLogits(split.logits / temperature, split.labels)
    confusion = report["confusion_matrix"] if split is test else classification_report(
        split.labels, split.logits.argmax(-1), run.splits.labels
    )["confusion_matrix"]
    additions["interpretation"] = interpret(
        scaled, dataset, run.splits.labels, confusion, finetune.interpret_split, output_dir if writes else None
    )
    if finetune.tta:
        additions["tta"] = evaluate_with_tta(run)
    run.extra["timing"] = run_timing(trainer, run.extra)
    return additions


def interpret(
    split: SplitLogits, dataset: Any, labels: list[str], confusion: list[list[int]], split_name: str,
    output_dir: str | None,
) -> dict[str, Any]:
    """Most confused pairs and top losses of one split; writes `top_losses.json` and `top_losses.png` into
    `output_dir` (when given). Returns the report's `interpretation` summary."""
    entries = top_losses(split.logits, split.labels, labels)
    raw = dataset.with_format(None)  # the undecoded images, without the evaluation transform
    images = []
    for entry in entries:
        ref = raw[entry["index"]]["image"]
        entry["source"] = ref.get("path") if isinstance(ref, dict) else None
        images.append(to_rgb(open_image(ref)) if isinstance(ref, dict) else to_rgb(ref))
    pairs = most_confused(confusion, labels)
    num_wrong = int((split.logits.argmax(-1) != split.labels).sum()) if len(split.labels) else 0
    if output_dir is not None:
        with open(os.path.join(output_dir, TOP_LOSSES_JSON), "w") as f:
            json.dump({"split": split_name, "most_confused": pairs, "top_losses": entries}, f, indent=2)
        plot_top_losses(images, entries, os.path.join(output_dir, TOP_LOSSES_PLOT))
    return {"split": split_name, "most_confused": pairs, "num_misclassified": num_wrong, "num_samples": len(split.labels)}


def evaluate_with_tta(run: PreparedRun) -> dict[str, Any]:
    """`--tta`: the test split's accuracy and macro-F1 with the logits averaged over `TTA_VIEWS`."""
    trainer = run.trainer
    logits, labels = dataset_logits(
        trainer.model, run.splits.test, trainer.args.per_device_eval_batch_size, TTA_VIEWS, trainer.args.device
    )
    tta = classification_report(labels, logits.argmax(-1), run.splits.labels)
    logger.info("Test macro-F1 with test-time augmentation (%d views): %.4f", len(TTA_VIEWS), tta["macro_f1"])
    return {"views": list(TTA_VIEWS), "accuracy": tta["accuracy"], "macro_f1": tta["macro_f1"], "per_class": tta["per_class"]}


def run_timing(trainer: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """Wall time of the run's parts that were measured (training loop, feature pass) and when it finished, for
    `python -m hf_finetune compare`."""
    train_seconds = next((entry["train_runtime"] for entry in reversed(trainer.state.log_history) if "train_runtime" in entry), 0.0)
    feature_seconds = (extra.get("features") or {}).get("seconds") or 0.0
    return {
        "train_seconds": round(float(train_seconds), 3),
        "feature_seconds": round(float(feature_seconds), 3),
        "seconds": round(float(train_seconds) + float(feature_seconds), 3),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

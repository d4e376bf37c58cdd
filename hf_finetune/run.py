"""One fine-tuning run end to end: data -> backbone -> trainer + callbacks -> test report -> saved model.

The CLI calls `run_finetune`; from Python, the same pieces can be assembled by hand
(`examples/python_api.py`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import EarlyStoppingCallback, set_seed

from .arguments import DataArguments, FinetuneArguments, FinetuneTrainingArguments, ModelArguments
from .backbone import StageMap, load_model_and_processor, split_stages
from .data import DataSplits, attach_transforms, collate, load_splits
from .evaluation import classification_report, compute_metrics, write_test_report
from .freezing import StageUnfreezeCallback
from .schedule_log import ScheduleRecorderCallback
from .trainer import FinetuneTrainer

logger = logging.getLogger(__name__)

RUN_CONFIG_FILE = "run_config.json"


@dataclass
class RunResult:
    """What a finished run produced."""

    output_dir: str
    test_report: dict[str, Any]
    stage_map: StageMap


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a run's result."""
    import importlib.metadata as md

    names = ("hf_finetune", "torch", "torchvision", "transformers", "timm", "datasets", "accelerate", "peft", "huggingface-hub", "scikit-learn", "numpy", "pillow")
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return versions


def _last_checkpoint(output_dir: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


def check_output_dir(output_dir: str, model_args: ModelArguments, data_args: DataArguments, overwrite: bool, resuming: bool) -> None:
    """Refuses to write a run into a directory that holds a different run, unless told to overwrite or resume."""
    config_path = os.path.join(output_dir, RUN_CONFIG_FILE)
    if resuming or not os.path.isfile(config_path):
        return
    if overwrite:
        # Asked for explicitly: old checkpoints would otherwise be picked up by resume and checkpoint rotation.
        for entry in os.listdir(output_dir):
            if entry.startswith("checkpoint-") and os.path.isdir(os.path.join(output_dir, entry)):
                shutil.rmtree(os.path.join(output_dir, entry))
        logger.warning("--overwrite-output-dir: replacing the run in %s", output_dir)
        return
    with open(config_path) as f:
        previous = json.load(f)
    before = (previous.get("model", {}).get("model"), previous.get("data", {}).get("dataset"))
    if before != (model_args.model, data_args.dataset):
        raise ValueError(
            f"`--output-dir` {output_dir!r} already holds a different run (model {before[0]!r}, dataset {before[1]!r}). "
            "Choose another --output-dir, pass --overwrite-output-dir to replace it, or --resume-from-checkpoint to continue it."
        )
    raise ValueError(
        f"`--output-dir` {output_dir!r} already holds a run of this model and dataset. Pass --resume-from-checkpoint "
        "(or --resume-from-checkpoint PATH) to continue it, or --overwrite-output-dir to start over."
    )


def write_run_config(
    path: str,
    model_args: ModelArguments,
    data_args: DataArguments,
    finetune_args: FinetuneArguments,
    training_args: FinetuneTrainingArguments,
    extra: dict[str, Any],
) -> None:
    """Writes every resolved argument, library versions and seeds (never the Hub token)."""
    training = training_args.to_dict()  # masks *_token fields
    payload = {
        "model": dataclasses.asdict(model_args),
        "data": dataclasses.asdict(data_args),
        "finetune": dataclasses.asdict(finetune_args),
        "training": training,
        "seeds": {"seed": training_args.seed, "data_seed": training_args.data_seed, "split_seed": training_args.seed},
        "versions": library_versions(),
        "command": [os.path.basename(sys.argv[0]), *sys.argv[1:]],
        **extra,
    }
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)


def build_trainer(
    model: torch.nn.Module,
    processor: Any,
    splits: DataSplits,
    finetune_args: FinetuneArguments,
    training_args: FinetuneTrainingArguments,
) -> FinetuneTrainer:
    """Assembles a `FinetuneTrainer` with the freeze, schedule-recording and early-stopping callbacks."""
    callbacks = [
        StageUnfreezeCallback.from_args(finetune_args, metric=f"eval_{training_args.metric_for_best_model}"),
        ScheduleRecorderCallback(training_args.output_dir),
    ]
    if finetune_args.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=finetune_args.early_stopping_patience))
    return FinetuneTrainer(
        model=model,
        args=training_args,
        train_dataset=splits.train,
        eval_dataset=splits.validation,
        data_collator=collate,
        compute_metrics=compute_metrics,
        processing_class=processor,
        callbacks=callbacks,
        finetune_args=finetune_args,
    )


def evaluate_test_split(trainer: FinetuneTrainer, splits: DataSplits) -> dict[str, Any]:
    """Evaluates the held-out test split once and returns the report."""
    output = trainer.predict(splits.test, metric_key_prefix="test")
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    return classification_report(np.asarray(output.label_ids), np.asarray(logits).argmax(-1), splits.labels)


def run_finetune(
    model_args: ModelArguments,
    data_args: DataArguments,
    finetune_args: FinetuneArguments,
    training_args: FinetuneTrainingArguments,
) -> RunResult:
    """Runs one fine-tuning job and writes everything into `training_args.output_dir`.

    Args:
        model_args (`ModelArguments`): which backbone.
        data_args (`DataArguments`): which data.
        finetune_args (`FinetuneArguments`): the recipe.
        training_args (`FinetuneTrainingArguments`): the Trainer's arguments.

    Returns:
        `RunResult` with the output directory and the test report.
    """
    output_dir = training_args.output_dir
    resume = training_args.resume_from_checkpoint
    if resume in ("True", "true", True):
        resume = _last_checkpoint(output_dir)
        if resume is None:
            raise ValueError(f"--resume-from-checkpoint was given but {output_dir!r} holds no checkpoint-* folder to resume from.")
    check_output_dir(output_dir, model_args, data_args, finetune_args.overwrite_output_dir, bool(resume))
    os.makedirs(output_dir, exist_ok=True)

    set_seed(training_args.seed)
    splits = load_splits(data_args, seed=training_args.seed)
    model, processor = load_model_and_processor(
        model_args.model,
        splits.id2label,
        revision=model_args.revision,
        cache_dir=model_args.cache_dir,
        trust_remote_code=model_args.trust_remote_code,
    )
    preprocessing = attach_transforms(splits, processor, data_args.augmentation)
    stage_map = split_stages(model)

    trainer = build_trainer(model, processor, splits, finetune_args, training_args)
    run_config_path = os.path.join(output_dir, RUN_CONFIG_FILE)
    extra = {
        "labels": splits.labels,
        "splits": splits.provenance,
        "preprocessing": dataclasses.asdict(preprocessing),
        "stages": [{"name": s.name, "num_tensors": len(s.param_names)} for s in stage_map.stages],
        "resumed_from": resume,
    }
    if trainer.is_world_process_zero():
        write_run_config(run_config_path, model_args, data_args, finetune_args, training_args, extra)

    trainer.train(resume_from_checkpoint=resume)
    report = evaluate_test_split(trainer, splits)

    if trainer.is_world_process_zero():
        trainer.save_model(output_dir)
        processor.save_pretrained(output_dir)
        write_test_report(report, output_dir)
        unfreeze = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, StageUnfreezeCallback))
        recorder = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ScheduleRecorderCallback))
        extra["freeze_events"] = unfreeze.events
        extra["best_checkpoint"] = trainer.state.best_model_checkpoint
        extra["best_validation_macro_f1"] = trainer.state.best_metric
        extra["epochs_run"] = len(recorder.records)
        write_run_config(run_config_path, model_args, data_args, finetune_args, training_args, extra)
    return RunResult(output_dir=output_dir, test_report=report, stage_map=stage_map)

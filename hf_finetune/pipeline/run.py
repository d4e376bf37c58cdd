"""One fine-tuning run end to end: data -> backbone -> trainer + callbacks -> test report -> saved model.

The CLI calls `run_finetune`; from Python, the same pieces can be assembled by hand
(`examples/python_api.py`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import EarlyStoppingCallback, TrainerCallback, set_seed

from hf_finetune.backbones.split import split_stages
from hf_finetune.backbones.stages import StageMap, resolve_stages
from hf_finetune.backbones.truncation import truncation_of
from hf_finetune.config.choices import fill_fallbacks
from hf_finetune.config.files import RUN_CONFIG_FILE, SCHEDULE_FILE
from hf_finetune.config.finetune import FinetuneArguments
from hf_finetune.config.sources import DataArguments, ModelArguments
from hf_finetune.config.training import FinetuneTrainingArguments, ShareArguments
from hf_finetune.data.mixing import BatchMixer
from hf_finetune.data.splits import DataSplits, load_splits
from hf_finetune.data.transforms import attach_transforms, collate
from hf_finetune.evaluation.metrics import classification_report, compute_metrics, write_test_report
from hf_finetune.pipeline.record import (
    _argument_sections,
    _command,
    _update_run_config,
    check_output_dir,
    write_run_config,
)
from hf_finetune.recipe.prepare import load_model, prepare_recipe, probe_model, probe_wins
from hf_finetune.sharing.hub import PushResult, check_repo_id, default_repo_id, push_to_hub
from hf_finetune.training.callbacks.freezing import StageUnfreezeCallback, unfreeze_units
from hf_finetune.training.callbacks.interrupt import (
    InterruptCallback,
    NonFiniteLossError,
    TrainingInterrupted,
    last_checkpoint,
)
from hf_finetune.training.callbacks.monitor import GapMonitorCallback, TrainPredictionLog
from hf_finetune.training.callbacks.plateau import PlateauLRCallback
from hf_finetune.training.callbacks.schedule_log import ScheduleRecorderCallback
from hf_finetune.training.lr_curves import uses_plateau
from hf_finetune.training.regularization import class_counts, inverse_frequency_weights
from hf_finetune.training.trainer import FinetuneTrainer

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished run produced."""

    output_dir: str
    test_report: dict[str, Any]
    stage_map: StageMap
    push: PushResult | None = None  # set when --push-to-hub was given
    recipe: Any = None  # the advisor's RecipePlan, when it ran


def build_trainer(
    model: torch.nn.Module,
    processor: Any,
    splits: DataSplits,
    finetune_args: FinetuneArguments,
    training_args: FinetuneTrainingArguments,
) -> FinetuneTrainer:
    """Assembles a `FinetuneTrainer` with the freeze, gap-monitor, schedule-recording and early-stopping callbacks
    (plus ReduceLROnPlateau for `--lr-schedule plateau`), the mixup/CutMix mixer and class weights.

    Fields no advisor decided (None) get `arguments.FALLBACKS`.
    """
    fill_fallbacks(finetune_args, training_args)
    metric = f"eval_{training_args.metric_for_best_model}"
    num_labels = len(splits.labels)
    mixer = BatchMixer(num_labels, finetune_args.mixup_alpha, finetune_args.cutmix_alpha, enabled=finetune_args.mixup == "on")
    train_log = TrainPredictionLog()
    monitor = GapMonitorCallback(
        train_log, mixer, mode=finetune_args.mixup, threshold=finetune_args.gap_threshold, patience=finetune_args.gap_patience
    )
    callbacks = [
        StageUnfreezeCallback.from_args(finetune_args, metric=metric),
        monitor,
        ScheduleRecorderCallback(training_args.output_dir, field_sources=[monitor.epoch_fields]),
    ]
    if uses_plateau(finetune_args.lr_schedule, training_args.lr_scheduler_type):
        callbacks.append(PlateauLRCallback(metric=metric, patience=finetune_args.plateau_patience))
    if finetune_args.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=finetune_args.early_stopping_patience))
    class_weights = None
    if finetune_args.class_balance == "weighted_loss":
        class_weights = inverse_frequency_weights(class_counts(splits.train.with_format(None)["label"], num_labels))
        logger.info("Class-weighted loss: %s", dict(zip(splits.labels, [round(w, 3) for w in class_weights.tolist()])))
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
        class_weights=class_weights,
        mixer=mixer,
        train_log=train_log,
    )


def write_probe_schedule(output_dir: str, probe: Any) -> None:
    """`schedule.json` of a linear probe fitted on cached features: no epochs, the probe's fit instead."""
    payload = {
        "epochs": [],
        "lr_history": {"step": [], "groups": {}},
        "linear_probe": {"C": probe.C, "validation_macro_f1": probe.validation_macro_f1, "candidates": {str(c): f for c, f in probe.candidates.items()}},
    }
    with open(os.path.join(output_dir, SCHEDULE_FILE), "w") as f:
        json.dump(payload, f, indent=2)


def evaluate_test_split(trainer: FinetuneTrainer, splits: DataSplits) -> dict[str, Any]:
    """Evaluates the held-out test split once and returns the report."""
    output = trainer.predict(splits.test, metric_key_prefix="test")
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    return classification_report(np.asarray(output.label_ids), np.asarray(logits).argmax(-1), splits.labels)


def _trainer_arguments(training_args: FinetuneTrainingArguments) -> FinetuneTrainingArguments:
    """The Trainer's copy of the arguments: it never pushes (we push once, at the end) and never holds the token.

    The stock Trainer creates the repository at init and pushes on every save when `push_to_hub` is set, and pickles
    its arguments (the token included) into training_args.bin of every checkpoint.
    """
    trainer_args = copy.copy(training_args)
    trainer_args.push_to_hub = False
    trainer_args.hub_token = None
    return trainer_args


@dataclass
class PreparedRun:
    """A run assembled up to (not including) training: what `prepare_run` returns."""

    trainer: FinetuneTrainer
    processor: Any
    splits: DataSplits
    recipe: Any  # recipe.PreparedRecipe
    stage_map: StageMap
    extra: dict[str, Any]
    resume: str | None
    previous: dict[str, Any]  # run_config.json of the run being continued, if any


def prepare_run(
    model_args: ModelArguments,
    data_args: DataArguments,
    finetune_args: FinetuneArguments,
    training_args: FinetuneTrainingArguments,
    splits: DataSplits | None = None,
    check_output: bool = True,
    share_args: ShareArguments | None = None,
) -> PreparedRun:
    """Splits, model, cached feature pass + advisor plan + baseline + head init, transforms, LoRA, trainer.

    Undecided recipe fields (None, `--strategy auto`) are decided here and written back into the argument objects.
    """
    share_args = share_args or ShareArguments()
    output_dir = training_args.output_dir
    resume = training_args.resume_from_checkpoint
    if resume in ("True", "true", True):
        resume = last_checkpoint(output_dir)
        if resume is None:
            raise ValueError(f"--resume-from-checkpoint was given but {output_dir!r} holds no checkpoint-* folder to resume from.")
    previous: dict[str, Any] = {}
    # The flags as given, before the advisor decides the undecided ones: what a same-command resume compares.
    arguments = _argument_sections(model_args, data_args, finetune_args, training_args)
    if check_output:
        resume = check_output_dir(
            output_dir, model_args, data_args, finetune_args.overwrite_output_dir, bool(resume), arguments
        ) or resume
        run_config_path = os.path.join(output_dir, RUN_CONFIG_FILE)
        if resume and os.path.isfile(run_config_path):
            with open(run_config_path) as f:
                previous = json.load(f)
    os.makedirs(output_dir, exist_ok=True)

    set_seed(training_args.seed)
    if splits is None:
        splits = load_splits(data_args, seed=training_args.seed)
    model, processor = load_model(model_args, splits, finetune_args.drop_path_rate, training_args.seed, finetune_args.truncate_after)
    # Cached feature pass, advisor plan (fills every undecided argument), linear-probe baseline, head init.
    prepared = prepare_recipe(
        model, processor, splits, model_args, data_args, finetune_args, training_args, previous.get("recipe")
    )
    model = prepared.model
    preprocessing = attach_transforms(splits, processor, data_args.augmentation)
    if finetune_args.peft == "lora":
        from hf_finetune.training.lora import apply_lora

        model = apply_lora(model, finetune_args)
    stage_map = split_stages(model)
    units = unfreeze_units(stage_map)
    if finetune_args.strategy == "top_k" and finetune_args.top_k is not None and finetune_args.top_k > len(units):
        raise ValueError(
            f"`--top-k` {finetune_args.top_k} is more than the {len(units)} backbone stages {model_args.model!r} has "
            f"({', '.join('+'.join(unit) for unit in units)}, top first): use `--top-k` {len(units)} or less, or "
            "`--strategy full` to train every stage."
        )
    train_stages = resolve_stages(stage_map, finetune_args.train_stages, "--train-stages", model_args.model) if finetune_args.train_stages else None

    set_seed(training_args.seed)  # training randomness (data order, augmentation, dropout) starts from the seed
    trainer = build_trainer(model, processor, splits, finetune_args, _trainer_arguments(training_args))
    extra = {
        "status": "running",
        "labels": splits.labels,
        "splits": splits.provenance,
        "skipped_files": splits.skipped_files,
        "preprocessing": dataclasses.asdict(preprocessing),
        "stages": [{"name": s.name, "num_tensors": len(s.param_names)} for s in stage_map.stages],
        "stage_family": stage_map.family,
        "truncation": truncation_of(model),
        "train_stages": train_stages,
        "resumed_from": resume,
        "share": dataclasses.asdict(share_args),
        "requested": json.loads(json.dumps(arguments, default=str)),
        **prepared.record,
    }
    if finetune_args.peft == "lora":
        from hf_finetune.training.lora import lora_summary

        extra["peft"] = lora_summary(model)
    if previous:
        # Continuing a run: keep how it was started, add how it was continued.
        extra["command"] = previous.get("command")
        extra["resumes"] = [*previous.get("resumes", []), {"from": resume, "command": _command()}]
    return PreparedRun(trainer, processor, splits, prepared, stage_map, extra, resume, previous)


def run_finetune(
    model_args: ModelArguments,
    data_args: DataArguments,
    finetune_args: FinetuneArguments,
    training_args: FinetuneTrainingArguments,
    share_args: ShareArguments | None = None,
    splits: DataSplits | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> RunResult:
    """Runs one fine-tuning job and writes everything into `training_args.output_dir`.

    Undecided recipe fields (None, `--strategy auto`) are decided by the recipe advisor before training and
    written back into the argument objects.

    Args:
        model_args (`ModelArguments`): which backbone.
        data_args (`DataArguments`): which data.
        finetune_args (`FinetuneArguments`): the recipe.
        training_args (`FinetuneTrainingArguments`): the Trainer's arguments (`--push-to-hub`, `--hub-model-id`,
            `--hub-private-repo`, `--hub-token` drive the final upload).
        share_args (`ShareArguments`, *optional*): model card, example images, demo Space (defaults if omitted).
        splits (`DataSplits`, *optional*): ready-made splits (k-fold); loaded from `data_args` if omitted.
        callbacks (`list[TrainerCallback]`, *optional*): extra callbacks for the Trainer (logging, benchmarks); they
            run after hf_finetune's own, so they see each epoch's stages already frozen or unfrozen.

    Returns:
        `RunResult` with the output directory, the test report, the advisor's plan and, with `--push-to-hub`, the
        upload's result.
    """
    share_args = share_args or ShareArguments()
    if share_args.push_demo and not training_args.push_to_hub:
        raise ValueError("`--push-demo` creates a Space for the pushed model: add `--push-to-hub` or drop `--push-demo`.")
    repo_id = training_args.hub_model_id or default_repo_id(training_args.output_dir)
    if training_args.push_to_hub:  # refuse a bad repository id before training, not after
        check_repo_id(repo_id, "--hub-model-id")
        if share_args.space_id:
            check_repo_id(share_args.space_id, "--space-id")

    run = prepare_run(model_args, data_args, finetune_args, training_args, splits, share_args=share_args)
    trainer, prepared, splits, extra, output_dir = run.trainer, run.recipe, run.splits, run.extra, training_args.output_dir
    probe_only = finetune_args.strategy == "linear_probe" and prepared.probe is not None
    if finetune_args.lr_find and not probe_only and not run.resume:
        from hf_finetune.training.lr_find import lr_range_test, save_lr_find

        found = lr_range_test(trainer)
        save_lr_find(found, output_dir)
        extra["lr_find"] = {"suggestion": found.suggestion, "replaced_learning_rate": training_args.learning_rate}
        training_args.learning_rate = found.suggestion
        set_seed(training_args.seed)
    run_config_path = os.path.join(output_dir, RUN_CONFIG_FILE)
    if trainer.is_world_process_zero():
        write_run_config(run_config_path, model_args, data_args, finetune_args, training_args, extra)

    for callback in callbacks or []:
        trainer.add_callback(callback)
    interrupt = InterruptCallback()
    trainer.add_callback(interrupt)
    if probe_only:
        # The head was fitted on cached features (prepare_recipe wrote it into the model): no training loop.
        write_probe_schedule(output_dir, prepared.probe)
    else:
        try:
            with interrupt.handle_sigint():
                trainer.train(resume_from_checkpoint=run.resume)
        except NonFiniteLossError as err:
            if trainer.is_world_process_zero():
                _update_run_config(run_config_path, status="failed", failure=str(err), last_checkpoint=last_checkpoint(output_dir))
            raise
        if interrupt.interrupted:
            checkpoint = last_checkpoint(output_dir)
            if trainer.is_world_process_zero():
                _update_run_config(run_config_path, status="interrupted", last_checkpoint=checkpoint)
            raise TrainingInterrupted(checkpoint, trainer.state.global_step, trainer.state.epoch or 0.0)
    selects_on_macro_f1 = (trainer.args.metric_for_best_model or "").removeprefix("eval_") == "macro_f1"
    best_validation = trainer.state.best_metric if selects_on_macro_f1 else None
    if not probe_only and probe_wins(prepared, finetune_args, best_validation):
        # Model selection on validation, as for any checkpoint: the fine-tune never beat where it started.
        extra["model_selection"] = {
            "chosen": "linear_probe",
            "probe_validation_macro_f1": prepared.probe.validation_macro_f1,
            "finetune_best_validation_macro_f1": trainer.state.best_metric,
            "reason": "the linear probe (the fine-tune's starting point) scored higher on validation than every "
            "fine-tuned checkpoint, so the saved model is the probe",
        }
        logger.warning(
            "Validation macro-F1: linear probe %.4f > best fine-tuned checkpoint %.4f: keeping the probe as the model.",
            prepared.probe.validation_macro_f1, trainer.state.best_metric,
        )
        trainer.model = probe_model(model_args, splits, finetune_args, prepared.probe, training_args.seed).to(trainer.args.device)
        trainer.model_wrapped = trainer.model
    report = evaluate_test_split(trainer, splits)
    report["num_skipped_files"] = len(splits.skipped_files)  # left out before training; listed in run_config.json
    if prepared.baseline is not None:
        report["baseline"] = prepared.baseline
        logger.info(
            "Test macro-F1: fine-tune %.4f vs linear-probe baseline %.4f", report["macro_f1"], prepared.baseline["macro_f1"]
        )

    push = None
    if trainer.is_world_process_zero():
        if finetune_args.peft == "lora":
            from hf_finetune.training.lora import save_lora_model

            save_lora_model(trainer.model, output_dir)  # adapter -> OUTPUT_DIR/adapter, merged model -> OUTPUT_DIR
        else:
            trainer.save_model(output_dir)
        run.processor.save_pretrained(output_dir)
        write_test_report(report, output_dir)
        from hf_finetune.sharing.demo import save_example_images

        save_example_images(splits.test, splits.labels, output_dir, share_args.example_images)
        unfreeze = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, StageUnfreezeCallback))
        recorder = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ScheduleRecorderCallback))
        extra["freeze_events"] = unfreeze.events
        extra["best_checkpoint"] = trainer.state.best_model_checkpoint
        extra["best_validation_macro_f1"] = trainer.state.best_metric
        extra["epochs_run"] = len(recorder.records)
        monitor = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, GapMonitorCallback))
        extra["gap_monitor"] = {"mode": monitor.mode, "mixup_switched_on_for_epoch": monitor.switched_at, "epochs": monitor.history}
        extra["status"] = "finished"
        write_run_config(run_config_path, model_args, data_args, finetune_args, training_args, extra)
        from hf_finetune.sharing.model_card import write_model_card

        write_model_card(output_dir)  # after every run, from the records just written
        if training_args.push_to_hub:  # once, from the complete output directory
            push = push_to_hub(
                output_dir,
                repo_id,
                private=training_args.hub_private_repo,
                token=training_args.hub_token,
                push_demo=share_args.push_demo,
                space_id=share_args.space_id,
            )
    return RunResult(output_dir=output_dir, test_report=report, stage_map=run.stage_map, push=push, recipe=prepared.plan)

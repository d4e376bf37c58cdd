"""A run assembled up to (not including) training: output folder and resume point, splits, model, the recipe
(cached feature pass, advisor, probe, head), transforms, LoRA, and a `FinetuneTrainer` with its callbacks.

`run_finetune` (pipeline/run.py) continues from here; `lr-find` and the benchmarks use `prepare_run` alone.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import EarlyStoppingCallback, set_seed

from hf_finetune.backbones.loading import resolve_model
from hf_finetune.backbones.split import split_stages
from hf_finetune.backbones.stages import StageMap, resolve_stages
from hf_finetune.backbones.truncation import truncation_of
from hf_finetune.config.choices import with_fallbacks
from hf_finetune.config.files import RUN_CONFIG_FILE
from hf_finetune.config.finetune import FinetuneArguments
from hf_finetune.config.sources import DataArguments, ModelArguments
from hf_finetune.config.training import FinetuneTrainingArguments, ShareArguments
from hf_finetune.data.mixing import BatchMixer
from hf_finetune.data.splits import DataSplits, load_splits
from hf_finetune.data.streaming import load_streaming_splits
from hf_finetune.data.transforms import attach_transforms, collate
from hf_finetune.evaluation.metrics import compute_metrics
from hf_finetune.pipeline.data_audit import audit_run, filter_before_recipe
from hf_finetune.pipeline.output_dir import check_output_location, undone_on_failure
from hf_finetune.pipeline.record import argument_sections, check_output_dir, check_resume_integrity, command_line
from hf_finetune.probing.feature_cache import checkpoint_fingerprint
from hf_finetune.recipe.prepare import PreparedRecipe, load_model, prepare_recipe
from hf_finetune.recipe.resolve import RunArguments
from hf_finetune.training.callbacks.ema import EmaCallback
from hf_finetune.training.callbacks.freezing import StageUnfreezeCallback, unfreeze_units
from hf_finetune.training.callbacks.interrupt import last_checkpoint
from hf_finetune.training.callbacks.monitor import GapMonitorCallback, TrainPredictionLog
from hf_finetune.training.callbacks.plateau import PlateauLRCallback
from hf_finetune.training.callbacks.schedule_log import ScheduleRecorderCallback
from hf_finetune.training.lora import apply_lora, lora_summary
from hf_finetune.training.lr_curves import uses_plateau
from hf_finetune.training.regularization import class_counts, inverse_frequency_weights
from hf_finetune.training.trainer import FinetuneTrainer

logger = logging.getLogger(__name__)


def build_trainer(
    model: torch.nn.Module,
    processor: Any,
    splits: DataSplits,
    finetune_args: FinetuneArguments,
    training_args: FinetuneTrainingArguments,
    stage_map: StageMap | None = None,
) -> FinetuneTrainer:
    """Assembles a `FinetuneTrainer` with the freeze, gap-monitor, schedule-recording and early-stopping callbacks
    (plus ReduceLROnPlateau for `--lr-schedule plateau`), the mixup/CutMix mixer and class weights.

    Fields no advisor decided (None) get `config.choices.FALLBACKS`; the objects passed in are not changed.

    Args:
        stage_map (`StageMap`, *optional*): the model's stages, computed once per run (discovered if omitted).
    """
    finetune_args, _ = with_fallbacks(finetune_args)
    training_args, _ = with_fallbacks(training_args)
    metric = f"eval_{training_args.metric_for_best_model}"
    num_labels = len(splits.labels)
    mixer = BatchMixer(num_labels, finetune_args.mixup_alpha, finetune_args.cutmix_alpha, enabled=finetune_args.mixup == "on")
    train_log = TrainPredictionLog()
    monitor = GapMonitorCallback(
        train_log, mixer, mode=finetune_args.mixup, threshold=finetune_args.gap_threshold, patience=finetune_args.gap_patience
    )
    # Decay 0 would average nothing (the raw weights themselves): `--ema 0` is how a user turns the average off.
    ema = EmaCallback(finetune_args.ema, metric=training_args.metric_for_best_model) if finetune_args.ema else None
    callbacks = [
        StageUnfreezeCallback.from_args(finetune_args, metric=metric),
        monitor,
        *([ema] if ema else []),
        ScheduleRecorderCallback(training_args.output_dir, field_sources=[monitor.epoch_fields, *([ema.epoch_fields] if ema else [])]),
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
        train_dataset=splits.training_data(),
        eval_dataset=splits.validation,
        data_collator=collate,
        compute_metrics=compute_metrics,
        processing_class=processor,
        callbacks=callbacks,
        finetune_args=finetune_args,
        stage_map=stage_map,
        class_weights=class_weights,
        mixer=mixer,
        train_log=train_log,
    )


def trainer_arguments(training_args: FinetuneTrainingArguments) -> FinetuneTrainingArguments:
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
    """A run assembled up to (not including) training: what `prepare_run` returns.

    `arguments` are the resolved ones (every recipe field decided); `extra` is what `run_config.json` records
    beside them; `previous` is the `run_config.json` of the run being continued, if any.
    """

    trainer: FinetuneTrainer
    processor: Any
    splits: DataSplits
    recipe: PreparedRecipe
    stage_map: StageMap
    extra: dict[str, Any]
    resume: str | None
    previous: dict[str, Any]
    arguments: RunArguments

    @property
    def trains(self) -> bool:
        """False for a linear probe fitted on cached features: the head is already in the model, no training loop."""
        return not (self.arguments.finetune.strategy == "linear_probe" and self.recipe.probe is not None)


def resume_point(arguments: RunArguments, check_output: bool) -> tuple[str | None, dict[str, Any]]:
    """The checkpoint this run continues from (`--resume-from-checkpoint`, or the same command run again on an
    unfinished run) and that run's `run_config.json`."""
    output_dir = arguments.training.output_dir
    resume = arguments.training.resume_from_checkpoint
    if resume in ("True", "true", True):
        resume = last_checkpoint(output_dir)
        if resume is None:
            raise ValueError(f"--resume-from-checkpoint was given but {output_dir!r} holds no checkpoint-* folder to resume from.")
    previous: dict[str, Any] = {}
    if check_output:
        check_output_location(output_dir, arguments.model.model, arguments.data.dataset, arguments.finetune.overwrite_output_dir)
        # The flags as given, before the advisor decides the undecided ones: what a same-command resume compares.
        resume = check_output_dir(
            output_dir, arguments.model, arguments.data, arguments.finetune.overwrite_output_dir, bool(resume),
            argument_sections(arguments),
        ) or resume
        run_config_path = os.path.join(output_dir, RUN_CONFIG_FILE)
        if resume and os.path.isfile(run_config_path):
            with open(run_config_path) as f:
                previous = json.load(f)
    return resume, previous


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

    Undecided recipe fields (None, `--strategy auto`) are decided here; the decisions are in
    `PreparedRun.arguments`, never written into the argument objects passed in.
    """
    share_args = share_args or ShareArguments()
    requested = RunArguments(model_args, data_args, finetune_args, training_args)
    resume, previous = resume_point(requested, check_output)
    # A bad model, dataset or flag found from here on leaves the output folder as it was before the run.
    with undone_on_failure(training_args.output_dir):
        os.makedirs(training_args.output_dir, exist_ok=True)
        # The model's config and image processor before the data: a wrong or uncached --model fails in seconds, not
        # after every image was decoded.
        resolve_model(
            model_args.model, revision=model_args.revision, cache_dir=model_args.cache_dir,
            trust_remote_code=model_args.trust_remote_code,
        )
        set_seed(training_args.seed)
        if splits is None:
            check_streaming(requested)
            load = load_streaming_splits if data_args.streaming else load_splits
            splits = load(data_args, seed=training_args.seed)
        return _assemble(requested, splits, resume, previous, share_args)


def _assemble(
    requested: RunArguments, splits: DataSplits, resume: str | None, previous: dict[str, Any], share_args: ShareArguments
) -> PreparedRun:
    """`prepare_run` once the model is found and the data loaded: model, recipe, transforms, LoRA, trainer."""
    model_args, finetune_args, training_args = requested.model, requested.finetune, requested.training
    if resume:
        check_resume_integrity(previous, splits.fingerprint, {}, training_args.output_dir)
    model, processor = load_model(model_args, splits, finetune_args.drop_path_rate, training_args.seed, finetune_args.truncate_after)
    # The weights actually loaded: a local folder's files, or the Hub commit transformers resolved the revision to.
    model_fingerprint = checkpoint_fingerprint(
        model_args.model, model_args.revision, commit=getattr(model.config, "_commit_hash", None), cache_dir=model_args.cache_dir
    )
    if resume:
        check_resume_integrity(previous, {}, model_fingerprint, training_args.output_dir)
    # --dedupe / --drop-suspect-labels: the data audit filters the splits before the recipe sees them.
    splits, audit_step = filter_before_recipe(model, processor, splits, requested)
    # Cached feature pass, advisor plan (decides every undecided argument), linear-probe baseline, head init.
    prepared = prepare_recipe(model, processor, splits, requested, previous.get("recipe"))
    arguments, model = prepared.arguments, prepared.model
    audit_record = audit_run(prepared, processor, splits, arguments, audit_step)  # data_audit.json, galleries
    preprocessing = attach_transforms(splits, processor, arguments.data.augmentation, seed=training_args.seed)
    if arguments.finetune.peft == "lora":
        model = apply_lora(model, arguments.finetune)
    stage_map = split_stages(model)  # once per run: the trainer, its callbacks and the record all use this one
    train_stages = _checked_stage_flags(stage_map, arguments)

    set_seed(training_args.seed)  # training randomness (data order, augmentation, dropout) starts from the seed
    trainer = build_trainer(model, processor, splits, arguments.finetune, trainer_arguments(arguments.training), stage_map)
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
        "data_fingerprint": splits.fingerprint,
        "model_fingerprint": model_fingerprint,
        "share": dataclasses.asdict(share_args),
        "requested": json.loads(json.dumps(argument_sections(requested), default=str)),
        **prepared.record,
        **audit_record,
    }
    if arguments.finetune.peft == "lora":
        extra["peft"] = lora_summary(model)
    if previous:
        # Continuing a run: keep how it was started, add how it was continued.
        extra["command"] = previous.get("command")
        extra["resumes"] = [*previous.get("resumes", []), {"from": resume, "command": command_line()}]
    return PreparedRun(trainer, processor, splits, prepared, stage_map, extra, resume, previous, arguments)


def check_streaming(arguments: RunArguments) -> None:
    """Refuses what needs the whole training split at hand under `--streaming`, before anything is read."""
    finetune = arguments.finetune
    if not arguments.data.streaming:
        return
    for flag, given in (("--kfold", finetune.kfold), ("--dedupe", finetune.dedupe), ("--drop-suspect-labels", finetune.drop_suspect_labels)):
        if given:
            raise ValueError(
                f"`{flag}` needs the whole training split at hand, which `--streaming` never loads: drop `{flag}`, or "
                "drop `--streaming` for data that fits on disk (the data audit still checks the streaming sample)."
            )


def _checked_stage_flags(stage_map: StageMap, arguments: RunArguments) -> list[str] | None:
    """Refuses a `--top-k` deeper than the model; returns `--train-stages` as stage names (None when not given)."""
    finetune, model_name = arguments.finetune, arguments.model.model
    units = unfreeze_units(stage_map)
    if finetune.strategy == "top_k" and finetune.top_k is not None and finetune.top_k > len(units):
        raise ValueError(
            f"`--top-k` {finetune.top_k} is more than the {len(units)} backbone stages {model_name!r} has "
            f"({', '.join('+'.join(unit) for unit in units)}, top first): use `--top-k` {len(units)} or less, or "
            "`--strategy full` to train every stage."
        )
    if not finetune.train_stages:
        return None
    return resolve_stages(stage_map, finetune.train_stages, "--train-stages", model_name)

"""One fine-tuning run end to end. `run_finetune` is the recipe, phase by phase:

    run = prepare_run(...)          # splits, model, cached features -> linear probe -> advisor's plan -> head init
    train(run)                      # head first, then the unfreeze schedule (callbacks), early stopping on validation
    select_model(run, start)        # the probe, the fine-tune or their interpolation, on validation
    report = evaluate(run)          # the held-out test split, once
    save(run, report)               # model, processor, report, run record, model card (and the Hub upload)

The CLI and the Python API both call it; the same pieces can also be assembled by hand (`examples/python_api.py`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback, set_seed

from hf_finetune.backbones.stages import StageMap
from hf_finetune.config.files import RUN_CONFIG_FILE, SCHEDULE_FILE
from hf_finetune.config.finetune import FinetuneArguments
from hf_finetune.config.sources import DataArguments, ModelArguments
from hf_finetune.config.training import FinetuneTrainingArguments, ShareArguments
from hf_finetune.data.splits import DataSplits
from hf_finetune.evaluation.metrics import classification_report, write_test_report
from hf_finetune.pipeline.after_training import interpret_and_calibrate, split_logits
from hf_finetune.pipeline.assemble import PreparedRun, prepare_run
from hf_finetune.pipeline.data_audit import leakage_report
from hf_finetune.pipeline.record import update_run_config, write_run_config
from hf_finetune.pipeline.select import choose_ema, choose_interpolation
from hf_finetune.recipe.advisor import RecipePlan
from hf_finetune.recipe.prepare import interpolates
from hf_finetune.recipe.resolve import RunArguments
from hf_finetune.sharing.demo import save_example_images
from hf_finetune.sharing.hub import PushResult, check_repo_id, default_repo_id, push_to_hub
from hf_finetune.sharing.model_card import write_model_card
from hf_finetune.training.callbacks.freezing import StageUnfreezeCallback
from hf_finetune.training.callbacks.interrupt import (
    InterruptCallback,
    NonFiniteLossError,
    TrainingInterrupted,
    last_checkpoint,
)
from hf_finetune.training.callbacks.monitor import GapMonitorCallback
from hf_finetune.training.callbacks.schedule_log import ScheduleRecorderCallback
from hf_finetune.training.interpolation import State, capture_state
from hf_finetune.training.lora import save_lora_model
from hf_finetune.training.lr_find import lr_range_test, save_lr_find
from hf_finetune.training.trackers import report_scalars
from hf_finetune.training.trainer import FinetuneTrainer

__all__ = ["RunResult", "evaluate", "run_finetune", "save", "select_model", "train"]

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished run produced.

    Attributes:
        arguments (`RunArguments`): the arguments the run used, every recipe field decided.
    """

    output_dir: str
    test_report: dict[str, Any]
    stage_map: StageMap
    push: PushResult | None = None  # set when --push-to-hub was given
    recipe: RecipePlan | None = None  # the advisor's plan, when it ran
    arguments: RunArguments | None = None


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

    Undecided recipe fields (None, `--strategy auto`) are decided by the recipe advisor before training; the
    decisions are returned in `RunResult.arguments` (the objects passed in are not changed).

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
        `RunResult` with the output directory, the test report, the advisor's plan, the resolved arguments and,
        with `--push-to-hub`, the upload's result.
    """
    share_args = share_args or ShareArguments()
    repo_id = _check_sharing(training_args, share_args)
    run = prepare_run(model_args, data_args, finetune_args, training_args, splits, share_args=share_args)
    if run.trains:
        run = _find_learning_rate(run)
    _record(run)
    for callback in callbacks or []:
        run.trainer.add_callback(callback)
    # The model before training: alpha 0 of the probe / fine-tune interpolation chosen after training.
    start = capture_state(run.trainer.model) if run.trains and interpolates(run.recipe, run.arguments.finetune) else None
    train(run)
    select_model(run, start)
    report = evaluate(run)
    push = save(run, report, share_args, repo_id)
    return RunResult(
        output_dir=run.arguments.training.output_dir, test_report=report, stage_map=run.stage_map, push=push,
        recipe=run.recipe.plan, arguments=run.arguments,
    )


def _check_sharing(training_args: FinetuneTrainingArguments, share_args: ShareArguments) -> str:
    """Refuses bad upload settings before training, not after; returns the model repository id."""
    if share_args.push_demo and not training_args.push_to_hub:
        raise ValueError("`--push-demo` creates a Space for the pushed model: add `--push-to-hub` or drop `--push-demo`.")
    repo_id = training_args.hub_model_id or default_repo_id(training_args.output_dir)
    if training_args.push_to_hub:
        check_repo_id(repo_id, "--hub-model-id")
        if share_args.space_id:
            check_repo_id(share_args.space_id, "--space-id")
    return repo_id


def _find_learning_rate(run: PreparedRun) -> PreparedRun:
    """`--lr-find`: the LR range test's suggestion replaces `--learning-rate` (first attempt only)."""
    arguments = run.arguments
    if not arguments.finetune.lr_find or run.resume:
        return run
    found = lr_range_test(run.trainer)
    save_lr_find(found, arguments.training.output_dir)
    run.extra["lr_find"] = {"suggestion": found.suggestion, "replaced_learning_rate": arguments.training.learning_rate}
    run.arguments = arguments.replace(learning_rate=found.suggestion)
    run.trainer.args.learning_rate = found.suggestion  # the trainer's own copy: its optimizer is built at train()
    set_seed(arguments.training.seed)
    return run


def _record(run: PreparedRun) -> None:
    if run.trainer.is_world_process_zero():
        write_run_config(_run_config_path(run), run.arguments, run.extra)


def _run_config_path(run: PreparedRun) -> str:
    return os.path.join(run.arguments.training.output_dir, RUN_CONFIG_FILE)


def train(run: PreparedRun) -> None:
    """Trains (head, then the unfreeze schedule the callbacks drive), or records the probe's fit when there is no
    training loop. A Ctrl-C or SIGTERM saves a checkpoint and raises `TrainingInterrupted`; a NaN/inf loss raises
    `NonFiniteLossError`; either way `run_config.json` says so."""
    trainer, output_dir = run.trainer, run.arguments.training.output_dir
    interrupt = InterruptCallback()
    trainer.add_callback(interrupt)
    if not run.trains:
        write_probe_schedule(output_dir, run.recipe.probe)
        return
    try:
        with interrupt.handle_sigint():
            trainer.train(resume_from_checkpoint=run.resume)
    except NonFiniteLossError as err:
        if trainer.is_world_process_zero():
            update_run_config(_run_config_path(run), status="failed", failure=str(err), last_checkpoint=last_checkpoint(output_dir))
        raise
    if interrupt.interrupted:
        checkpoint = last_checkpoint(output_dir)
        if trainer.is_world_process_zero():
            update_run_config(_run_config_path(run), status="interrupted", last_checkpoint=checkpoint)
        raise TrainingInterrupted(checkpoint, trainer.state.global_step, trainer.state.epoch or 0.0)


def select_model(run: PreparedRun, start: State | None) -> None:
    """Model selection on validation (`pipeline/select.py`): with `--ema`, the Trainer's best checkpoint (already
    loaded) or the best moving average; then, after a fine-tune from the probe head (the advisor's LP-FT), the probe,
    that model or their weight-space interpolation, whichever scores best."""
    arguments = run.arguments
    ema = run.trainer.ema_callback
    if ema is not None and run.trains:
        run.extra["ema"] = choose_ema(run.trainer, run.splits, ema, arguments.training.seed)
    if start is None:
        return
    run.extra["model_selection"] = choose_interpolation(
        run.trainer, run.splits, start, run.recipe.probe, arguments.training.seed
    )


def evaluate(run: PreparedRun) -> dict[str, Any]:
    """The held-out test split, evaluated once, with the linear-probe baseline beside it; then calibration, the
    top losses and `--tta` (`pipeline/after_training.py`)."""
    test = split_logits(run.trainer, run.splits.test)
    report = classification_report(test.labels, test.logits.argmax(-1), run.splits.labels)
    report["num_skipped_files"] = len(run.splits.skipped_files)  # left out before training; listed in run_config.json
    baseline = run.recipe.baseline
    if baseline is not None:
        report["baseline"] = baseline
        kept = "model" if run.trains else "linear probe (the model)"
        logger.info("Test macro-F1: %s %.4f vs linear-probe baseline %.4f", kept, report["macro_f1"], baseline["macro_f1"])
    report.update(interpret_and_calibrate(run, report, test))  # folds the temperature into the head before `save`
    report.update(leakage_report(run.extra, test))  # test metrics without the test images that have a twin in train
    _report_to_trackers(run, report)
    return report


def _report_to_trackers(run: PreparedRun, report: dict[str, Any]) -> None:
    """The final test metrics and the baseline's go to every `--report-to` tracker through the Trainer's own log."""
    trainer = run.trainer
    if not trainer.args.report_to:
        return
    if not run.trains:
        # The trackers start with the training loop (TensorBoard picks its folder there); a probe fitted on cached
        # features has none, and test_report.json holds its metrics.
        logger.info("--report-to: a linear probe on cached features has no training loop to report; see the test report.")
        return
    trainer.log(report_scalars(report))


def save(run: PreparedRun, report: dict[str, Any], share_args: ShareArguments, repo_id: str) -> PushResult | None:
    """Model, processor, test report, example images, the final run record and the model card; then, with
    `--push-to-hub`, one upload of the complete folder. Only the main process writes."""
    trainer, arguments = run.trainer, run.arguments
    output_dir, training = arguments.training.output_dir, arguments.training
    if not trainer.is_world_process_zero():
        return None
    if arguments.finetune.peft == "lora":
        save_lora_model(trainer.model, output_dir)  # adapter -> OUTPUT_DIR/adapter, merged model -> OUTPUT_DIR
    else:
        trainer.save_model(output_dir)
    run.processor.save_pretrained(output_dir)
    write_test_report(report, output_dir)
    save_example_images(run.splits.test, run.splits.labels, output_dir, share_args.example_images)
    run.extra.update(_training_record(trainer))
    run.extra["status"] = "finished"
    write_run_config(_run_config_path(run), arguments, run.extra)
    write_model_card(output_dir)  # after every run, from the records just written
    if not arguments.finetune.keep_checkpoints:
        # The saved model holds the best checkpoint's weights; the checkpoints only served a resume, which a finished
        # run no longer needs. Only the Trainer's complete checkpoints of this run's steps (the output-dir checks
        # refuse a folder holding checkpoints hf_finetune did not write).
        for entry in os.listdir(output_dir):
            kind, _, step = entry.partition("-")
            path = os.path.join(output_dir, entry)
            if kind == "checkpoint" and step.isdigit() and int(step) <= trainer.state.global_step and os.path.isfile(
                os.path.join(path, "trainer_state.json")
            ):
                shutil.rmtree(path)
    if not training.push_to_hub:
        return None
    return push_to_hub(  # once, from the complete output directory
        output_dir, repo_id, private=training.hub_private_repo, token=training.hub_token,
        push_demo=share_args.push_demo, space_id=share_args.space_id,
    )


def _training_record(trainer: FinetuneTrainer) -> dict[str, Any]:
    """What the callbacks saw: freeze events, epochs, the gap monitor's history, the best checkpoint.

    The callbacks are looked up in the handler (`find_callback`), not kept from `build_trainer`: a resume re-creates
    them from their saved state.
    """
    unfreeze = trainer.find_callback(StageUnfreezeCallback)
    recorder = trainer.find_callback(ScheduleRecorderCallback)
    monitor = trainer.find_callback(GapMonitorCallback)
    return {
        "freeze_events": unfreeze.events,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_validation_macro_f1": trainer.state.best_metric,
        "epochs_run": len(recorder.records),
        "gap_monitor": {"mode": monitor.mode, "mixup_switched_on_for_epoch": monitor.switched_at, "epochs": monitor.history},
    }


def write_probe_schedule(output_dir: str, probe: Any) -> None:
    """`schedule.json` of a linear probe fitted on cached features: no epochs, the probe's fit instead."""
    payload = {
        "epochs": [],
        "lr_history": {"step": [], "groups": {}},
        "linear_probe": probe.summary(),
    }
    with open(os.path.join(output_dir, SCHEDULE_FILE), "w") as f:
        json.dump(payload, f, indent=2)

"""The run record (`run_config.json`) and the resume policy that reads it.

`write_run_config` records every resolved argument, the seeds, library versions and the command; `check_output_dir`
decides what to do with an `--output-dir` that already holds a run (refuse, start over, or continue from its last
checkpoint when the same command is run again); `check_resume_integrity` refuses to continue on changed data or weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import sys
from typing import Any

from hf_finetune.config.command import redact_argv
from hf_finetune.config.files import RUN_CONFIG_FILE, TEST_REPORT_FILE
from hf_finetune.config.sources import DataArguments, ModelArguments
from hf_finetune.recipe.resolve import RunArguments
from hf_finetune.training.callbacks.interrupt import last_checkpoint

logger = logging.getLogger(__name__)


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


# Recorded arguments that may differ between an interrupted run and the command that continues it.
# Arguments that do not change what is trained (data-loading workers follow the machine a run continues on; logging,
# progress bars and the final upload are applied as given).
_RESUME_NEUTRAL = frozenset(
    {"resume_from_checkpoint", "overwrite_output_dir", "logging_dir", "disable_tqdm", "hub_token", "dataloader_num_workers", "dataloader_pin_memory",
     "dataloader_persistent_workers", "dataloader_prefetch_factor", "report_to", "logging_steps", "logging_first_step", "push_to_hub",
     "hub_model_id", "hub_private_repo", "per_device_eval_batch_size", "keep_checkpoints"}
)


def _changed_arguments(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`section.name (old -> new)` of every recorded argument whose value differs between two run_config payloads."""
    changed = []
    for section in ("model", "data", "finetune", "training"):
        before, now = previous.get(section, {}), json.loads(json.dumps(current.get(section, {}), default=str))
        for name in sorted(set(before) | set(now)):
            if name not in _RESUME_NEUTRAL and before.get(name) != now.get(name):
                changed.append(f"{section}.{name} ({before.get(name)!r} -> {now.get(name)!r})")
    return changed


def _check_explicit_resume(output_dir: str, previous: dict[str, Any], arguments: dict[str, Any]) -> None:
    """`--resume-from-checkpoint` continues a run with the flags it was started with: the checkpoint restores the
    optimizer, its learning rates and the schedule, so a changed training flag would be recorded but not applied."""
    changed = _changed_arguments(previous.get("requested", previous), arguments)
    if changed:
        raise ValueError(
            f"--resume-from-checkpoint continues the run in {output_dir!r} as it was started, but these flags differ "
            f"from the recorded ones: {', '.join(changed)}. The checkpoint restores the optimizer state, learning "
            "rates and schedule, so they would be recorded without being applied. Rerun with the recorded values "
            "(see run_config.json `requested`) to continue, or start a new run with the new ones (another "
            "--output-dir, or --overwrite-output-dir without --resume-from-checkpoint)."
        )


def check_resume_integrity(previous: dict[str, Any], data: dict[str, Any], model: dict[str, Any], output_dir: str) -> None:
    """Refuses to continue a run whose data or model changed since it started (what changed is named).

    Args:
        previous (`dict`): the `run_config.json` of the run being continued.
        data (`dict`): `DataSplits.fingerprint` of the data now.
        model (`dict`): `checkpoint_fingerprint` of `--model` now.
        output_dir (`str`): the run's folder, for the message.
    """
    # Compared as run_config.json stores them (tuples read back as lists).
    data, model = json.loads(json.dumps(data, default=str)), json.loads(json.dumps(model, default=str))
    before = previous.get("data_fingerprint")
    if before and data and before != data:
        changes = [
            f"{split}: {_count(before.get(split))} -> {_count(data.get(split))}"
            + ("" if _count(before.get(split)) != _count(data.get(split)) else " (same count; files changed, or their sizes or modification times)")
            for split in sorted(set(before) | set(data))
            if before.get(split) != data.get(split)
        ]
        raise ValueError(
            f"The data changed since the run in {output_dir!r} started ({'; '.join(changes)}): continuing it would "
            "mix two datasets (a new test image may already have been trained on, as part of the old train split). "
            "Restore the data to continue, or start over on the new data with --overwrite-output-dir (or another "
            "--output-dir)."
        )
    before_model = previous.get("model_fingerprint")
    if before_model and model and before_model != model:
        raise ValueError(
            f"The `--model` weights changed since the run in {output_dir!r} started (recorded {before_model}, now "
            f"{model}). Pass the recorded revision (`--revision`) or restore the checkpoint to continue, or start over "
            "with --overwrite-output-dir (or another --output-dir)."
        )


def _count(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "absent"
    return f"{entry.get('images', entry.get('rows'))} images" + (f", {entry['bytes']} bytes" if "bytes" in entry else "")


def check_output_dir(
    output_dir: str,
    model_args: ModelArguments,
    data_args: DataArguments,
    overwrite: bool,
    resuming: bool,
    arguments: dict[str, Any] | None = None,
) -> str | None:
    """Decides what to do with an `--output-dir` that already holds a run; returns a checkpoint to continue from.

    A different run (model or dataset) is refused unless told to overwrite or resume; a finished run of the same
    model and dataset is refused too. An unfinished one (interrupted, killed, failed) continues from its last
    complete checkpoint when `arguments` (the `run_config.json` sections of this invocation) match the recorded
    ones, and starts over when it left no checkpoint. `--resume-from-checkpoint` (`resuming`) is refused when a
    training flag differs from the recorded ones: the checkpoint would silently override it.
    """
    config_path = os.path.join(output_dir, RUN_CONFIG_FILE)
    if not os.path.isfile(config_path):
        return None
    with open(config_path) as f:
        previous = json.load(f)
    if resuming:
        _check_explicit_resume(output_dir, previous, arguments or {})
        return None
    if overwrite:
        # Asked for explicitly: old checkpoints would otherwise be picked up by resume and checkpoint rotation. Only
        # this run's checkpoint folders go (the folder holds our run_config.json); nothing else is deleted.
        removed = sorted(e for e in os.listdir(output_dir) if e.startswith("checkpoint-") and os.path.isdir(os.path.join(output_dir, e)))
        for entry in removed:
            shutil.rmtree(os.path.join(output_dir, entry))
        logger.warning("--overwrite-output-dir: replacing the run in %s (removed its checkpoints: %s)", output_dir, removed or "none")
        return None
    before = (previous.get("model", {}).get("model"), previous.get("data", {}).get("dataset"))
    if before != (model_args.model, data_args.dataset):
        raise ValueError(
            f"`--output-dir` {output_dir!r} already holds a different run (model {before[0]!r}, dataset {before[1]!r}). "
            "Choose another --output-dir, pass --overwrite-output-dir to replace it, or --resume-from-checkpoint to continue it."
        )
    if previous.get("status", "finished") == "finished" or os.path.isfile(os.path.join(output_dir, TEST_REPORT_FILE)):
        raise ValueError(
            f"`--output-dir` {output_dir!r} already holds a run of this model and dataset. Pass --resume-from-checkpoint "
            "(or --resume-from-checkpoint PATH) to continue it, or --overwrite-output-dir to start over."
        )
    checkpoint = last_checkpoint(output_dir)
    if checkpoint is None:
        logger.warning("%s holds an unfinished run of this model and dataset without a checkpoint: starting it over.", output_dir)
        return None
    # Compare what was asked for (before the advisor filled in its choices), not the resolved values.
    changed = _changed_arguments(previous.get("requested", previous), arguments or {})
    if changed:
        raise ValueError(
            f"`--output-dir` {output_dir!r} holds an unfinished run of this model and dataset (last checkpoint "
            f"{checkpoint}), recorded with other values of: {', '.join(changed)}. Rerun with the recorded flags to "
            "continue it (a checkpoint restores the optimizer state, learning rates and schedule it was saved with), "
            "or start over with the new ones: --overwrite-output-dir, or another --output-dir."
        )
    logger.warning(
        "%s holds this run, unfinished: continuing from %s (pass --overwrite-output-dir to start over instead).",
        output_dir, checkpoint,
    )
    return checkpoint


def argument_sections(arguments: RunArguments) -> dict[str, Any]:
    """The four argument groups as `run_config.json` records them."""
    return {
        "model": dataclasses.asdict(arguments.model),
        "data": dataclasses.asdict(arguments.data),
        "finetune": dataclasses.asdict(arguments.finetune),
        "training": arguments.training.to_dict(),  # masks *_token fields
    }


def command_line() -> list[str]:
    """This process's command line, tokens redacted."""
    return [os.path.basename(sys.argv[0]), *redact_argv(sys.argv[1:])]


def update_run_config(path: str, **fields: Any) -> None:
    """Sets top-level `fields` in an existing `run_config.json` (status changes of a stopped run)."""
    with open(path) as f:
        payload = json.load(f)
    payload.update(fields)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)


def write_run_config(path: str, arguments: RunArguments, extra: dict[str, Any]) -> None:
    """Writes every resolved argument, library versions and seeds (never the Hub token)."""
    training_args = arguments.training
    payload = {
        **argument_sections(arguments),
        # One --seed drives everything: python/numpy/torch (set_seed before the head init and again before
        # training: data order, augmentation, mixup, dropout), the stratified splits, the advisor's CV folds and
        # image sample, the probe's solver and the k-fold split.
        "seeds": {
            "seed": training_args.seed,
            "data_seed": training_args.data_seed,
            "split_seed": training_args.seed,
            "head_init_seed": training_args.seed,
            "augmentation_seed": training_args.seed,
            "advisor_cv_seed": training_args.seed,
            "probe_seed": training_args.seed,
            "kfold_seed": training_args.seed,
        },
        "versions": library_versions(),
        "command": command_line(),
        **extra,
    }
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)

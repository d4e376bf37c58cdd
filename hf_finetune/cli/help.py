"""`python -m hf_finetune --help`: the training flags in named groups, the ones a new user needs first.

`HfArgumentParser` puts every field of the five argument dataclasses into one "options:" group (181 flags, most of
them the Trainer's). `arrange_help` regroups the parser's actions by destination into the groups below, shows each
flag once (its dash form) with its choices, and hides the Trainer's own flags unless `--help-all` is given; parsing
is unchanged, so every flag is still accepted.
"""

from __future__ import annotations

import argparse
import difflib
import re

from hf_finetune.config.choices import (
    ADVISOR_HELP,
    AUGMENTATIONS,
    AUTO,
    CLASS_BALANCE,
    HEAD_INITS,
    LR_SCHEDULES,
    MIXUP_MODES,
    OPTIMIZERS,
    PEFT_METHODS,
    STRATEGIES,
    VALIDATION_METRICS,
)

HELP_ALL_FLAG = "--help-all"
USAGE = (
    "python -m hf_finetune --model MODEL --dataset DATASET [--output-dir DIR] [options]\n"
    "       python -m hf_finetune CONFIG.yaml            (every flag from one JSON/YAML file)\n"
    "       python -m hf_finetune SUBCOMMAND ...          (see below)"
)

# Group title -> destinations, in the order a new user meets them. Flags not listed here are the Trainer's own:
# shown only by --help-all, in the last group.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Model and data", (
        "model", "dataset", "output_dir", "revision", "dataset_config", "image_column", "label_column",
        "validation_fraction", "test_fraction", "label_depth", "allow_missing_train_classes", "check_images", "streaming",
        "streaming_sample", "shuffle_buffer",
        "cache_dir", "trust_remote_code",
    )),
    ("Training length, learning rates and batches", (
        "num_train_epochs", "learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size",
        "time_budget", "head_learning_rate", "head_lr_multiplier", "layer_decay", "optimizer", "lr_schedule",
        "lr_scheduler_type", "warmup_steps", "weight_decay", "lr_find", "early_stopping_patience", "seed",
    )),
    ("Recipe: what trains when (default: chosen by the recipe advisor)", (
        "strategy", "head_init", "head_epochs", "unfreeze_every", "stages_per_unfreeze", "unfreeze_on_plateau",
        "plateau_patience", "top_k", "truncate_after", "train_stages", "unfreeze_warmup_epochs", "baseline", "kfold",
    )),
    ("Regularisation and augmentation", (
        "augmentation", "label_smoothing_factor", "noisy_labels", "class_balance", "mixup", "mixup_alpha",
        "cutmix_alpha", "gap_threshold", "gap_patience", "head_dropout", "drop_path_rate", "l2sp", "train_bn",
        "fix_bn_stats",
    )),
    ("LoRA (parameter-efficient fine-tuning)", ("peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")),
    ("Data audit (duplicates, suspect labels)", ("audit", "dedupe", "near_duplicate_threshold", "drop_suspect_labels")),
    ("Evaluation", ("metric_for_best_model", "tta", "ema", "interpret_split", "calibrate")),
    ("Output folder, trackers and sharing", (
        "overwrite_output_dir", "keep_checkpoints", "resume_from_checkpoint", "report_to", "disable_tqdm",
        "feature_cache_dir", "push_to_hub", "hub_model_id", "hub_private_repo", "push_demo", "space_id", "license",
        "example_images",
    )),
)
OTHER_GROUP = "Other options"
TRAINER_GROUP = "Every other transformers TrainingArguments flag (accepted as usual; listed by --help-all)"

# Values a string flag takes (checked in the dataclasses' __post_init__, with a message naming the fix); shown in
# the help instead of `--strategy STRATEGY`.
CHOICES: dict[str, tuple[str, ...]] = {
    "strategy": (AUTO, *STRATEGIES),
    "augmentation": AUGMENTATIONS,
    "head_init": HEAD_INITS,
    "mixup": MIXUP_MODES,
    "class_balance": CLASS_BALANCE,
    "optimizer": (*OPTIMIZERS, "trainer"),
    "lr_schedule": LR_SCHEDULES,
    "peft": PEFT_METHODS,
    "metric_for_best_model": VALIDATION_METRICS,
}

# The Trainer's help for flags whose meaning hf_finetune changes (it uploads once, at the end, never per save).
HELP_OVERRIDES: dict[str, str] = {
    "push_to_hub": "Upload the finished output folder to the Hub once, at the end (repository: --hub-model-id, default: "
    "the output folder's name in your namespace; token from HF_TOKEN or `hf auth login`).",
    "hub_model_id": "Hub repository of --push-to-hub (user/name).",
    "report_to": "Experiment trackers to report to: none, all, or names such as tensorboard, wandb, mlflow, trackio "
    "(their package must be installed). Per-group LRs, freeze events, the train/validation gap and the final test "
    "and baseline metrics go to each.",
}

# One line per sub-command; `SUBCOMMANDS` in cli/main.py maps the same names to their entry points.
SUBCOMMAND_HELP: dict[str, str] = {
    "card": "(re)write a finished run's model card and plots",
    "push": "upload a finished run to the Hugging Face Hub (optionally with a Gradio Space)",
    "demo": "serve a finished run's Gradio demo on this machine",
    "lr-find": "the LR range test alone, with the flags of a run",
    "probe": "the stage probe alone: a linear probe on every backbone stage",
    "predict": "classify new images (files, folders, Hub splits) into a CSV",
    "export": "export a finished run's model to ONNX and check it",
    "compare": "finished runs side by side, as a table and one plot",
    "audit": "the data audit alone: duplicates, leakage and suspect labels",
}

# Flags other tools use for the same thing: named in the error when one is given.
FLAG_HINTS: dict[str, str] = {
    "--model_name_or_path": "--model", "--model-name-or-path": "--model", "--model_name": "--model",
    "--dataset_name": "--dataset", "--dataset-name": "--dataset", "--data_dir": "--dataset", "--data-dir": "--dataset",
    "--train_dir": "--dataset", "--bs": "--batch-size", "--lr_head": "--head-learning-rate",
    "--freeze": "--strategy", "--output": "--output-dir", "--out": "--output-dir",
}

_ABBREVIATIONS = ("e.g.", "i.e.", "incl.", "etc.")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Wider columns, one option string per flag, and a default appended only when the help does not state one;
    the description and the sub-command list are printed as written."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=120)

    def _get_help_string(self, action: argparse.Action) -> str:
        text, suffix = action.help or "", ""
        if getattr(action, "advisor_default", False):
            suffix = " [default: advisor]"
        elif not (
            "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings
            or isinstance(action, argparse._StoreFalseAction)
        ):
            suffix = " (default: %(default)s)"
        if getattr(action, "brief", False):  # one line: the help column is what the width leaves
            room = self._width - self._max_help_position - len(suffix % {"default": action.default})
            if len(text) > room:
                text = text[: room - 4].rsplit(" ", 1)[0].rstrip(",;:( ") + " ..."
        return text + suffix

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings:
            return super()._format_action_invocation(action)
        shown = [s for s in action.option_strings if "_" not in s] or action.option_strings[:1]
        if action.nargs == 0:
            return ", ".join(shown)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(shown) + " " + metavar


def _brief(text: str) -> str:
    """The first sentence of a help text, without the list of choices (the metavar shows them)."""
    text = re.sub(r",? one of \([^)]*\)", "", text)
    for abbreviation in _ABBREVIATIONS:  # not the end of a sentence
        text = text.replace(abbreviation + " ", abbreviation.replace(".", "\0") + " ")
    first = re.split(r"(?<=[a-z0-9)'])\. ", text, maxsplit=1)[0].rstrip(" .;:(")
    return first + ")" if first.count("(") > first.count(")") else first.replace("\0", ".")


def arrange_help(parser: argparse.ArgumentParser, show_all: bool, trainer_fields: set[str]) -> None:
    """Regroups `parser`'s actions into `GROUPS` for its help; with `show_all=False` the Trainer's own flags
    (`trainer_fields` not named in `GROUPS`) and the `--no-*` complements are hidden and each help text is cut to
    its first sentence. Parsing is not affected."""
    by_dest: dict[str, list[argparse.Action]] = {}
    for action in parser._actions:
        by_dest.setdefault(action.dest, []).append(action)
    for group in parser._action_groups:
        group._group_actions = [a for a in group._group_actions if a.dest == "help"]
    for title, dests in GROUPS:
        group = parser.add_argument_group(title)
        for dest in dests:
            for action in by_dest.pop(dest, []):
                _decorate(action, show_all)
                group._group_actions.append(action)
    others, rest = parser.add_argument_group(OTHER_GROUP), parser.add_argument_group(TRAINER_GROUP)
    for dest, actions in by_dest.items():
        if dest == "help":
            continue
        for action in actions:
            _decorate(action, show_all)
            if dest not in trainer_fields:  # a flag of hf_finetune's own not placed above: shown, never lost
                others._group_actions.append(action)
                continue
            if not show_all:
                action.help = argparse.SUPPRESS
            rest._group_actions.append(action)
    parser.add_argument(HELP_ALL_FLAG, action="help", help="Show every flag, the Trainer's included, with its full help.")


def _decorate(action: argparse.Action, show_all: bool) -> None:
    """Choices as the metavar, `--no-*` complements described (or hidden), brief help unless `show_all`."""
    if action.help in (None, argparse.SUPPRESS):
        return
    action.help = re.sub(r"(?<!%)%(?![%(])", "%%", action.help)  # a literal % in a help text is not a format directive
    if isinstance(action, argparse._StoreFalseAction):  # HfArgumentParser's `--no-x` for a bool defaulting to True
        positive = "--" + action.dest.replace("_", "-")
        action.help = f"Same as {positive} false." if show_all else argparse.SUPPRESS
        return
    action.help = HELP_OVERRIDES.get(action.dest, action.help)
    if action.dest in CHOICES:
        action.metavar = "{" + ",".join(CHOICES[action.dest]) + "}"
    elif getattr(action.type, "__name__", "") == "string_to_bool":  # a bool: `--flag true`, `--flag false`
        action.metavar = "{true,false}"
    action.advisor_default = ADVISOR_HELP in action.help
    if not show_all:
        action.brief = True
        action.help = _brief(action.help.split(ADVISOR_HELP)[0])


def epilog(subcommands: list[str]) -> str:
    """The sub-commands, one line each (printed as written: `HelpFormatter` keeps the epilog's line breaks).

    Args:
        subcommands (`list[str]`): every sub-command name (`SUBCOMMANDS` in cli/main.py), described or not.
    """
    width = max(map(len, subcommands))
    lines = [f"  {name:<{width}}  {SUBCOMMAND_HELP.get(name, f'see python -m hf_finetune {name} --help')}" for name in subcommands]
    return (
        "sub-commands (python -m hf_finetune SUBCOMMAND --help):\n" + "\n".join(lines) + "\n\n"
        "Flags accept dashes or underscores (--num-train-epochs = --num_train_epochs). "
        f"{HELP_ALL_FLAG} lists every flag with its full help."
    )


def unknown_flag_hint(unknown: list[str], parser: argparse.ArgumentParser) -> str:
    """A sentence naming the right flag for each unknown one: a known synonym, or the closest flag name."""
    known = [s for s in parser._option_string_actions if s.startswith("--")]
    hints = []
    for arg in unknown:
        name = arg.partition("=")[0]
        if not name.startswith("--"):
            continue
        match = FLAG_HINTS.get(name) or next(iter(difflib.get_close_matches(name, known, n=1, cutoff=0.75)), None)
        if match:
            hints.append(f"`{name}` -> did you mean `{match}`?")
    return (" " + " ".join(hints) if hints else "") + " See `python -m hf_finetune --help`."

"""`python -m hf_finetune`: parse the dataclass arguments, run, print one summary line.

    python -m hf_finetune --model facebook/dinov2-small --dataset my/imagefolder --output-dir runs/x
    python -m hf_finetune config.yaml        # every flag from one JSON/YAML file
"""

from __future__ import annotations

import logging
import os
import shlex
import sys

from transformers import HfArgumentParser

from hf_finetune.config.command import redact_argv
from hf_finetune.config.finetune import FinetuneArguments
from hf_finetune.config.sources import DataArguments, ModelArguments
from hf_finetune.config.training import FinetuneTrainingArguments, ShareArguments, check_argument_combinations

# The package logger: the CLI shows the INFO lines of every hf_finetune module (the recipe, the probe, the card).
logger = logging.getLogger("hf_finetune")

# Exit codes of `python -m hf_finetune` (2 = bad input, set by the CLI).
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd command


def resume_command(argv: list[str], checkpoint: str) -> str:
    """The shell command that continues the run started with `argv` from `checkpoint` (tokens redacted).

    With flags, `--resume-from-checkpoint CHECKPOINT` replaces any earlier one. A run configured by one JSON/YAML
    file is resumed by the same command: the output directory holds the same unfinished run, which `run_finetune`
    continues from its last checkpoint.
    """
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.partition("=")[0]
        if name in ("--resume-from-checkpoint", "--resume_from_checkpoint"):
            skip = "=" not in arg
            continue
        args.append(arg)
    if not (len(args) == 1 and args[0].endswith((".json", ".yaml", ".yml"))):
        args += ["--resume-from-checkpoint", checkpoint]
    return shlex.join([sys.executable, "-m", "hf_finetune", *redact_argv(args)])


_DESCRIPTION = (
    "Fine-tune a pretrained vision backbone on an image-classification dataset: head first, then gradual "
    "unfreezing of encoder stages with layer-wise LR decay, early stopping on validation macro-F1, and a "
    "one-time evaluation on a held-out test split. Every transformers TrainingArguments flag works too."
)


def build_parser() -> HfArgumentParser:
    """The argument parser of a training run."""
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, FinetuneArguments, FinetuneTrainingArguments, ShareArguments),
        prog="python -m hf_finetune",
        description=_DESCRIPTION,
    )
    return parser


def parse_args(
    argv: list[str],
) -> tuple[ModelArguments, DataArguments, FinetuneArguments, FinetuneTrainingArguments, ShareArguments]:
    """Parses flags, or a single JSON/YAML file holding them all."""
    parser = build_parser()
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        parsed = parser.parse_json_file(argv[0]) if argv[0].endswith(".json") else parser.parse_yaml_file(argv[0])
    else:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    check_argument_combinations(parsed[2], parsed[3])
    return tuple(parsed)


def _configure_logging() -> None:
    import transformers

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.WARNING)
    logger.setLevel(logging.INFO)
    transformers.logging.set_verbosity_warning()


# Subcommands other than training: name -> "module:function", imported only when used. Each function takes
# the remaining argv and returns an exit code.
SUBCOMMANDS: dict[str, str] = {
    "card": ".card:card_main",
    "push": ".push:push_main",
    "demo": ".demo:demo_main",
    "lr-find": ".lr_find:main",
    "probe": ".probe:probe_main",
    "predict": ".predict:predict_main",
    "export": ".export:export_main",
    "compare": ".compare:compare_main",
}


def _run_subcommand(name: str, argv: list[str]) -> int:
    import importlib

    module_name, function_name = SUBCOMMANDS[name].split(":")
    function = getattr(importlib.import_module(module_name, package=__package__), function_name)
    return function(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m hf_finetune`; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    _configure_logging()
    if argv and argv[0] in SUBCOMMANDS:
        return _run_subcommand(argv[0], argv[1:])
    if argv and argv[0] == "train":  # explicit form of the default command
        argv = argv[1:]
    try:
        model_args, data_args, finetune_args, training_args, share_args = parse_args(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    # Imported here, not at the top: `--help` and a bad flag answer without loading torch and the Trainer.
    from hf_finetune.pipeline.run import run_finetune
    from hf_finetune.training.callbacks.interrupt import NonFiniteLossError, TrainingInterrupted, last_checkpoint

    try:
        if finetune_args.kfold:
            from hf_finetune.pipeline.kfold import run_kfold

            summary = run_kfold(model_args, data_args, finetune_args, training_args)
            f1, acc = summary["test_macro_f1"], summary["test_accuracy"]
            print(
                f"hf_finetune: {summary['k']}-fold test macro-F1 {f1['mean']:.4f} +/- {f1['half_width']:.4f}, accuracy "
                f"{acc['mean']:.4f} +/- {acc['half_width']:.4f} (95% t-interval) -> {training_args.output_dir}"
            )
            return 0
        result = run_finetune(model_args, data_args, finetune_args, training_args, share_args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except (TrainingInterrupted, KeyboardInterrupt) as err:
        checkpoint = getattr(err, "checkpoint", None) or last_checkpoint(training_args.output_dir)
        saved = "checkpoint saved" if isinstance(err, TrainingInterrupted) else "stopped without a new checkpoint"
        print(f"hf_finetune: interrupted ({saved}); no test evaluation was run.", file=sys.stderr)
        if checkpoint:
            print(f"Resume from {checkpoint} with:\n  {resume_command(argv, checkpoint)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun / accelerate launch, one summary is enough
    if result.recipe is not None:
        print(f"hf_finetune recipe ({result.recipe.case}): " + ", ".join(
            f"{name}={choice.value}" for name, choice in result.recipe.choices.items()
        ))
    report = result.test_report
    baseline = report.get("baseline")
    versus = f" (linear-probe baseline: macro-F1 {baseline['macro_f1']:.4f})" if baseline else ""
    print(
        f"hf_finetune: test accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}{versus} "
        f"on {report['num_samples']} held-out images -> {result.output_dir}"
    )
    if result.push is not None and not result.push.ok:
        print(
            f"hf_finetune: upload failed ({result.push.error}); the output in {result.output_dir} is complete. "
            f"Retry with:\n  {result.push.retry_command}",
            file=sys.stderr,
        )
        return 1
    if result.push is not None:
        print(f"hf_finetune: pushed to {result.push.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

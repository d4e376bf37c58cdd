"""`python -m hf_finetune`: parse the dataclass arguments, run, print one summary line.

    python -m hf_finetune --model facebook/dinov2-small --dataset my/imagefolder --output-dir runs/x
    python -m hf_finetune config.yaml        # every flag from one JSON/YAML file
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import sys
import time

from transformers import HfArgumentParser, TrainingArguments

from hf_finetune.cli.console import configure_console, refused, set_progress_bars, summary_block
from hf_finetune.cli.help import HELP_ALL_FLAG, USAGE, HelpFormatter, arrange_help, epilog, unknown_flag_hint
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


_DESCRIPTION = """\
Fine-tune a pretrained vision backbone (any Hub or local image classifier) on an image-classification dataset
(a Hub dataset id or a local folder of class sub-folders). A recipe advisor measures the data and picks the
strategy: a linear probe on frozen features, or a fine-tune with gradual unfreezing and layer-wise LR decay.

  python -m hf_finetune --model facebook/dinov2-small --dataset beans --output-dir runs/beans"""


def build_parser(show_all: bool = False) -> HfArgumentParser:
    """The argument parser of a training run; its help lists the flags in named groups (`cli/help.py`), the
    Trainer's own flags only with `show_all` (`--help-all`)."""
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, FinetuneArguments, FinetuneTrainingArguments, ShareArguments),
        prog="python -m hf_finetune",
        description=_DESCRIPTION,
        usage=USAGE,
        epilog=epilog(list(SUBCOMMANDS)),
        formatter_class=HelpFormatter,
    )
    arrange_help(parser, show_all, {f.name for f in dataclasses.fields(TrainingArguments)})
    return parser


def parse_args(
    argv: list[str],
) -> tuple[ModelArguments, DataArguments, FinetuneArguments, FinetuneTrainingArguments, ShareArguments]:
    """Parses flags, or a single JSON/YAML file holding them all."""
    parser = build_parser(show_all=HELP_ALL_FLAG in argv)
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        parsed = parser.parse_json_file(argv[0]) if argv[0].endswith(".json") else parser.parse_yaml_file(argv[0])
    else:
        namespace, unknown = parser.parse_known_args(args=argv)
        if unknown:
            raise ValueError(f"unknown flag(s) {unknown}.{unknown_flag_hint(unknown, parser)}")
        parsed = parser.parse_args_into_dataclasses(args=argv)
    check_argument_combinations(parsed[2], parsed[3])
    return tuple(parsed)


def _configure_logging() -> None:
    configure_console(logger)  # one place decides what reaches the console (cli/console.py)


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
    "audit": ".audit:audit_main",
}


def leave_process_group() -> None:
    """Under torchrun / accelerate launch, after a finished run: every process waits until the main one has written
    the output, then the process group is destroyed. A process that exits with the group alive can leave Gloo's
    worker threads to be torn down with the interpreter, an intermittent SIGABRT ("terminate called without an
    active exception", pytorch/pytorch#190489). Not after a failure: a rank that died mid-collective would leave the
    others waiting in the barrier (pytorch/torchtitan#1342)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


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
        return refused(err)

    set_progress_bars(not training_args.disable_tqdm)
    start = time.perf_counter()
    # Imported here, not at the top: `--help` and a bad flag answer without loading torch and the Trainer.
    from hf_finetune.pipeline.run import run_finetune
    from hf_finetune.training.callbacks.interrupt import NonFiniteLossError, TrainingInterrupted, last_checkpoint

    try:
        if finetune_args.kfold:
            from hf_finetune.pipeline.kfold import run_kfold

            summary = run_kfold(model_args, data_args, finetune_args, training_args)
            leave_process_group()
            f1, acc = summary["test_macro_f1"], summary["test_accuracy"]
            print(
                f"hf_finetune: {summary['k']}-fold test macro-F1 {f1['mean']:.4f} +/- {f1['half_width']:.4f}, accuracy "
                f"{acc['mean']:.4f} +/- {acc['half_width']:.4f} (95% t-interval) -> {training_args.output_dir}"
            )
            return 0
        result = run_finetune(model_args, data_args, finetune_args, training_args, share_args)
        leave_process_group()
    except ValueError as err:
        return refused(err)
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
    print(summary_block(result, time.perf_counter() - start))
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

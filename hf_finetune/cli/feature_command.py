"""What the frozen-feature sub-commands (`probe`, `audit`) share: the split seed and feature-pass options, the
splits-model-features sequence of a run, and parsing with `--model` / `--dataset` where a bad value is exit code 2."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hf_finetune.cli.console import refused
from hf_finetune.config.sources import DataArguments, ModelArguments
from hf_finetune.data.splits import DataSplits, load_splits
from hf_finetune.probing.features import SplitFeatures
from hf_finetune.recipe.prepare import feature_pass, load_model

Result = TypeVar("Result")


@dataclass(kw_only=True)
class FeatureCommandArguments:
    """The options of every frozen-feature sub-command (their own dataclasses add the rest)."""

    seed: int = field(
        default=42, metadata={"help": "Seed of the train/validation/test split (as `--seed` of a run) and of the CV folds."}
    )
    batch_size: int = field(default=32, metadata={"help": "Images per forward pass of the feature pass."})
    feature_cache_dir: str | None = field(
        default=None, metadata={"help": "Where frozen features are cached (default: ~/.cache/hf_finetune/features)."}
    )

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"`--batch-size` must be >= 1, got {self.batch_size}.")


def frozen_features(
    model_args: ModelArguments, data_args: DataArguments, args: FeatureCommandArguments, stages: bool = False
) -> tuple[DataSplits, SplitFeatures]:
    """The splits a run with `--seed` would make and their cached frozen features (every stage with `stages`)."""
    splits = load_splits(data_args, seed=args.seed)
    model, processor = load_model(model_args, splits, None, args.seed)
    return splits, feature_pass(model, processor, splits, model_args, args.feature_cache_dir, args.batch_size, stages=stages)


def parse_and_run(
    argv: list[str], options: type, prog: str, description: str,
    run: Callable[[ModelArguments, DataArguments, Any], Result],
) -> tuple[Any, Result] | None:
    """Parses `--model`, `--dataset` and `options`, then `run(model_args, data_args, options)`; returns the options
    and the result, or None after printing a bad argument's message (the caller exits with code 2)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser((ModelArguments, DataArguments, options), prog=prog, description=description)
    try:
        model_args, data_args, args = parser.parse_args_into_dataclasses(args=argv)
        return args, run(model_args, data_args, args)
    except ValueError as err:
        refused(err)
        return None

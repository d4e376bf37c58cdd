"""Everything between loading the model and building the trainer: the cached feature pass, the recipe advisor,
the linear-probe baseline and the head initialisation.

One forward pass over the data (cached on disk) serves three purposes: the advisor's domain-similarity
measurement, the baseline reported beside the fine-tune, and the head itself (`--head-init probe`, and the whole
model for `--strategy linear_probe`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import set_seed

from hf_finetune.backbones.loading import load_model_and_processor
from hf_finetune.backbones.split import split_stages
from hf_finetune.backbones.taps import head_linear_layers
from hf_finetune.backbones.truncation import AUTO as TRUNCATE_AUTO
from hf_finetune.backbones.truncation import NONE as TRUNCATE_NONE
from hf_finetune.backbones.truncation import truncate_model
from hf_finetune.config.choices import AUTO
from hf_finetune.config.finetune import FinetuneArguments
from hf_finetune.config.sources import ModelArguments
from hf_finetune.data.images import undecoded
from hf_finetune.data.splits import DataSplits
from hf_finetune.data.transforms import resolve_preprocessing
from hf_finetune.probing.features import (
    SplitFeatures,
    compute_split_features,
    head_features_from_stage,
    measure_throughput,
)
from hf_finetune.probing.linear_probe import LinearProbe, baseline_report, write_probe_into_head
from hf_finetune.probing.stage_probe import probe_stages
from hf_finetune.recipe.advisor import RecipePlan, plan_recipe, undecided_fields
from hf_finetune.recipe.measure import measure_dataset
from hf_finetune.recipe.resolve import RunArguments, apply_plan, apply_recorded_plan, explicit_fields
from hf_finetune.training.callbacks.freezing import unfreeze_units
from hf_finetune.training.regularization import add_head_dropout

logger = logging.getLogger(__name__)


@dataclass
class PreparedRecipe:
    """The outcome of `prepare_recipe`.

    Attributes:
        model (`torch.nn.Module`): the model to train (reloaded when the advisor chose a drop-path rate).
        arguments (`RunArguments`): the run's arguments with every recipe field decided.
        plan (`RecipePlan`, *optional*): the advisor's plan (None when every choice came from flags).
        features (`SplitFeatures`, *optional*): the cached features (None when nothing needed them).
        probe (`LinearProbe`, *optional*): the linear probe fitted on them.
        baseline (`dict`, *optional*): the probe's test report (the `baseline` key of `test_report.json`).
        record (`dict`): what `run_config.json` records (`recipe`, `features`).
    """

    model: torch.nn.Module
    arguments: RunArguments | None = None
    plan: RecipePlan | None = None
    features: SplitFeatures | None = None
    probe: LinearProbe | None = None
    baseline: dict[str, Any] | None = None
    record: dict[str, Any] = field(default_factory=dict)


def load_model(
    model_args: ModelArguments, splits: DataSplits, drop_path_rate: float | None, seed: int, truncate_after: str | None = None
) -> tuple[torch.nn.Module, Any]:
    """Loads `--model` with a new head for the splits' labels (seeded head initialisation, optional drop-path), cut
    after stage `truncate_after` when that names a stage (not None, "auto" or "none")."""
    set_seed(seed)
    overrides = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    model, processor = load_model_and_processor(
        model_args.model,
        splits.id2label,
        revision=model_args.revision,
        cache_dir=model_args.cache_dir,
        trust_remote_code=model_args.trust_remote_code,
        **overrides,
    )
    if truncate_after not in (None, TRUNCATE_AUTO, TRUNCATE_NONE):
        truncate_model(model, truncate_after, model_args.model)
    return model, processor


def feature_pass(
    model: torch.nn.Module,
    processor: Any,
    splits: DataSplits,
    model_args: ModelArguments,
    cache_dir: str | None,
    batch_size: int,
    stages: bool = False,
) -> SplitFeatures:
    """The cached feature pass of `--model` over the splits (see `features.compute_split_features`)."""
    return compute_split_features(
        model, processor, splits, model_name_or_path=model_args.model, revision=model_args.revision, cache_dir=cache_dir,
        batch_size=batch_size, stages=stages,
    )


def wants_stage_probe(finetune_args: FinetuneArguments) -> bool:
    """The advisor decides the depth: `--truncate-after auto`, or left unset under `--strategy auto`."""
    return finetune_args.truncate_after == TRUNCATE_AUTO or (finetune_args.truncate_after is None and finetune_args.strategy == AUTO)


def _needs_features(finetune_args: FinetuneArguments, undecided: bool) -> bool:
    return (
        finetune_args.baseline
        or undecided
        or finetune_args.strategy in (AUTO, "linear_probe")
        or finetune_args.head_init == "probe"
    )


def prepare_recipe(
    model: torch.nn.Module,
    processor: Any,
    splits: DataSplits,
    arguments: RunArguments,
    recorded_recipe: dict[str, Any] | None = None,
) -> PreparedRecipe:
    """Feature pass, advisor plan, baseline and head initialisation.

    The returned `PreparedRecipe.arguments` has every recipe field decided: by the user's flag, by the advisor (or,
    given `recorded_recipe` — the `recipe` of a resumed run's `run_config.json` — by the plan the advisor made when
    the run started), or by `config.choices.FALLBACKS`. `arguments` itself is left as it was.
    """
    requested = arguments  # what the model was loaded with: a later drop-path or cut choice reloads or cuts it
    reused: list[str] = []
    if recorded_recipe:
        arguments, reused = apply_recorded_plan(recorded_recipe, arguments)
        if reused:
            logger.info("Resuming: the advisor's choices of the first attempt are kept (%s).", ", ".join(reused))
    fixed = explicit_fields(arguments)
    stage_probe = wants_stage_probe(arguments.finetune)
    undecided = bool(undecided_fields(fixed, arguments.finetune.strategy, auto_depth=stage_probe))
    result = PreparedRecipe(model=model, arguments=arguments)
    if _needs_features(arguments.finetune, undecided) or stage_probe:
        # One forward pass: the head's input and, for the advisor's depth decision, every stage's output.
        result.features = _features_of(model, processor, splits, arguments, stages=stage_probe)
        result.record["features"] = result.features.summary()

    if undecided:
        result.plan = _advise(model, processor, splits, result.features, arguments, fixed)
        arguments = apply_plan(result.plan, arguments)
        logger.info("%s", result.plan.format())
        result.record["recipe"] = result.plan.to_dict()
    elif reused:
        result.record["recipe"] = {**recorded_recipe, "reused_on_resume": reused}
    else:
        result.record["recipe"] = {"case": None, "note": "every recipe choice was given by a flag; the advisor did not run"}
    arguments, filled = arguments.with_fallbacks()
    if filled:
        logger.info("Fixed defaults for %s", ", ".join(filled))
    result.arguments = arguments
    _apply_depth_and_drop_path(result, processor, splits, requested)
    _fit_probe_and_head(result, splits)
    return result


def _features_of(
    model: torch.nn.Module, processor: Any, splits: DataSplits, arguments: RunArguments, stages: bool = False
) -> SplitFeatures:
    return feature_pass(
        model, processor, splits, arguments.model, arguments.finetune.feature_cache_dir,
        arguments.training.per_device_eval_batch_size, stages,
    )


def _advise(
    model: torch.nn.Module,
    processor: Any,
    splits: DataSplits,
    features: SplitFeatures,
    arguments: RunArguments,
    fixed: dict[str, Any],
) -> RecipePlan:
    """Measures the data (and, when the advisor decides the depth, probes every stage), then plans the recipe."""
    seed = arguments.training.seed
    batch_size = arguments.training.per_device_eval_batch_size
    if features.images_per_second is None:  # nothing timed on this machine yet: time a small sample
        sample = undecoded(splits.train).select(range(min(64, len(splits.train))))["image"]  # decoded one by one
        features.images_per_second = measure_throughput(model, processor, sample, batch_size)
    side = min(resolve_preprocessing(processor).size)
    measurements = measure_dataset(splits, features, len(unfreeze_units(split_stages(model))), side, seed=seed)
    if features.stages:
        probe = probe_stages(features.stages, len(splits.labels), seed=seed)
        measurements.stage_probe = probe.to_dict() if probe is not None else None
    return plan_recipe(
        measurements,
        time_budget_minutes=arguments.finetune.time_budget,
        noisy_labels=arguments.finetune.noisy_labels,
        fixed=fixed,
    )


def _apply_depth_and_drop_path(result: PreparedRecipe, processor: Any, splits: DataSplits, requested: RunArguments) -> None:
    """Reloads the model for a drop-path rate chosen after loading, or makes a cut chosen after the feature pass."""
    arguments = result.arguments
    finetune, model_args, seed = arguments.finetune, arguments.model, arguments.training.seed
    # A cut given by the flag was made at load time; one chosen by the advisor (now or, on resume, before) is made now.
    cut_now = requested.finetune.truncate_after in (None, TRUNCATE_AUTO) and finetune.truncate_after not in (
        None, TRUNCATE_AUTO, TRUNCATE_NONE,
    )
    if finetune.drop_path_rate and finetune.drop_path_rate != requested.finetune.drop_path_rate:
        # Drop-path modules are built with the model (timm makes none at rate 0): reload with the chosen rate.
        result.model, _ = load_model(model_args, splits, finetune.drop_path_rate, seed, finetune.truncate_after)
    elif cut_now:  # the advisor chose the depth after the feature pass
        truncate_model(result.model, finetune.truncate_after, model_args.model)
    if cut_now and result.features is not None:
        # The head now reads the cut: the baseline and the probe head are fitted on the truncated model's features
        # (the full-depth pass captured them already when nothing but pooling lies between the cut and the head).
        batch_size = arguments.training.per_device_eval_batch_size
        full_depth = result.record["features"]
        result.features = head_features_from_stage(
            result.model, processor, splits, result.features, batch_size
        ) or _features_of(result.model, processor, splits, arguments)
        result.record["features"] = {**result.features.summary(), "full_depth": full_depth}


def _fit_probe_and_head(result: PreparedRecipe, splits: DataSplits) -> None:
    """The linear probe on the cached features: the reported baseline and, when asked, the head's starting point."""
    finetune, seed = result.arguments.finetune, result.arguments.training.seed
    if result.features is not None:
        report, probe = baseline_report(result.features, splits.labels, seed=seed)
        result.probe = probe
        if finetune.baseline:
            result.baseline = report
            logger.info(
                "Baseline (linear probe on frozen features): test accuracy %.4f, macro-F1 %.4f (%.2fs on cached features)",
                report["accuracy"], report["macro_f1"], report["seconds"],
            )
    if finetune.head_init == "probe" or finetune.strategy == "linear_probe":
        if result.probe is None:
            raise ValueError("`--head-init probe` needs the cached-feature probe, which was not fitted.")
        # A linear-probe run is the probe fitted on train + validation; a fine-tune starts from the train-only fit, so
        # that validation can still judge it (and the interpolation towards it) fairly.
        names = write_probe_into_head(result.model, result.probe, full=finetune.strategy == "linear_probe")
        logger.info("Head %s initialised from the linear probe (C=%g).", ", ".join(names), result.probe.C)
    if finetune.head_dropout:
        add_head_dropout([layer for _, layer in head_linear_layers(result.model)], finetune.head_dropout)


def interpolates(prepared: PreparedRecipe, finetune_args: FinetuneArguments) -> bool:
    """Whether the run ends by choosing among the probe, the fine-tune and their interpolation (WiSE-FT).

    Only when the advisor chose the strategy (a strategy given by flag is what the user asked for), the fine-tune
    started from the probe head, and the model is a plain one (not LoRA, whose merged backbone the probe never saw).
    """
    strategy = prepared.plan.choices.get("strategy") if prepared.plan is not None else None
    return (
        strategy is not None
        and strategy.source == "advisor"
        and prepared.probe is not None
        and finetune_args.head_init == "probe"
        and finetune_args.peft != "lora"
    )

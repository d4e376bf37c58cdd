"""The recipe advisor: pick the fine-tuning recipe from the data's measurements, with one reason per choice.

`plan_recipe` is a pure function of the measurements (`measure.DatasetMeasurements`: size, similarity to the
pretraining domain, cost), the four cases of the transfer-learning heuristics in `seeds/002`:
    small + similar     -> linear_probe on cached features (the pretrained features already fit; training more
                           layers on little data mostly overfits)
    large + similar     -> top_k: freeze the early layers, train the top third of the stages
    small + different   -> head_then_unfreeze down to the early layers from the probe head, small steps (LP-FT),
                           crops and flips, dropout and drop-path
    large + different   -> full fine-tune (with mild layer-wise decay)
"small" = fewer than `LARGE_IMAGES_PER_CLASS` images per class (median); "similar" = k-NN lift at least
`SIMILAR_LIFT` and mostly colour images. The depth (truncation at the stage probe's best block), layer decay, head
initialisation, learning rates, unfreeze schedule, augmentation, mixup, dropout, drop-path, label smoothing, class
balancing and the number of epochs (fitted to `--time-budget`) follow. A flag the user gave explicitly is never
changed: it is recorded as such (`source: "flag"`). The plan is a new object; the arguments are never written.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from hf_finetune.config.choices import AUTO, FALLBACKS
from hf_finetune.probing.stage_probe import CLEAR_GAIN_SE, MIN_CLEAR_GAIN, StageProbe, best_block_gain
from hf_finetune.recipe.measure import LARGE_IMAGES_PER_CLASS, SHIFT_GAIN_SE, SIMILAR_LIFT, DatasetMeasurements
from hf_finetune.training.regularization import IMBALANCE_RATIO_THRESHOLD, NOISY_LABEL_SMOOTHING

logger = logging.getLogger(__name__)

# Fewer fine-tuning epochs than this fit the budget -> the linear probe (a one-epoch fine-tune of a
# probe-initialised model lowered validation macro-F1 below the probe's on pneumoniamnist).
MIN_FINETUNE_EPOCHS = 2
# Share of the time budget planned for epochs (the rest absorbs checkpointing and estimation error).
BUDGET_SAFETY = 0.85
MAX_EPOCHS = {"small": 20, "large": 12}
# The argument fields the advisor decides (left at None / "auto" by the user), in FinetuneArguments, DataArguments
# or the training arguments.
ADVISOR_FIELDS = (
    "strategy", "layer_decay", "head_init", "head_epochs", "top_k", "num_train_epochs", "stages_per_unfreeze",
    "augmentation", "mixup", "head_dropout", "drop_path_rate", "label_smoothing_factor", "class_balance", "fix_bn_stats",
    "truncate_after", "learning_rate", "head_lr_multiplier", "ema",
)
# The top stage's LR of a fine-tune of small data from the probe head (LP-FT), and the head's too (multiplier 1).
LP_FT_SMALL_LEARNING_RATE = 1e-4
ADVISED_EMA_DECAY = 0.999  # `--ema` when the recipe trains (timm's warmup shortens the average on short runs)
# Values of the depth fields that are not a stage (see FinetuneArguments.truncate_after).
UNDECIDED_VALUES = {"strategy": (AUTO,), "truncate_after": (AUTO,)}

# Advisor fields that only one strategy reads: left undecided under another strategy, they need no advisor.
USED_ONLY_BY = {"top_k": "top_k", "stages_per_unfreeze": "head_then_unfreeze", "head_epochs": "head_then_unfreeze"}


def undecided_fields(fixed: dict[str, Any], strategy: str, auto_depth: bool = False) -> list[str]:
    """The advisor fields the run still needs decided, given the explicitly set ones (`explicit_fields`).

    A field only one strategy reads (`USED_ONLY_BY`) is not needed when another strategy was chosen by flag; nor is
    the depth (`truncate_after`) unless `auto_depth` (`--truncate-after auto` given with that strategy).
    """
    chosen = None if strategy == AUTO else strategy
    return [
        name for name in ADVISOR_FIELDS
        if name not in fixed
        and (chosen is None or USED_ONLY_BY.get(name, chosen) == chosen)
        and not (name == "truncate_after" and chosen is not None and not auto_depth)
    ]


@dataclass
class Choice:
    """One decision: the value, why, and whether the advisor or the user's flag set it."""

    value: Any
    reason: str
    source: str = "advisor"


@dataclass
class RecipePlan:
    """The advisor's plan: measurements, the case, and one `Choice` per recipe field."""

    measurements: DatasetMeasurements
    case: str
    choices: dict[str, Choice] = field(default_factory=dict)
    estimated_epoch_seconds: float | None = None

    def value(self, name: str) -> Any:
        return self.choices[name].value

    def to_dict(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "measurements": self.measurements.to_dict(),
            "estimated_epoch_seconds": None if self.estimated_epoch_seconds is None else round(self.estimated_epoch_seconds, 1),
            "choices": {name: asdict(choice) for name, choice in self.choices.items()},
        }

    def used_choices(self) -> dict[str, Choice]:
        """The choices the chosen strategy reads (all are recorded; "unused" ones and epoch settings change nothing)."""
        return {n: c for n, c in self.choices.items() if not c.reason.startswith(("unused", _MIXUP_REASONS["off"]))}

    def format(self) -> str:
        """The plan as console lines: one choice the chosen strategy uses per line, with its reason."""
        m = self.measurements
        lift = "n/a" if m.knn_lift is None else f"{m.knn_lift:.2f}"
        lines = [
            f"Recipe advisor: {self.case} ({m.num_train} train images, {m.num_classes} classes, "
            f"{m.images_per_class:.0f} per class, k-NN lift {lift}, {m.grayscale_fraction:.0%} grayscale)",
        ]
        width = max(map(len, used := self.used_choices()), default=0)
        for name, choice in used.items():
            tag = " [your flag]" if choice.source == "flag" else ""
            lines.append(f"  {name:<{width}} = {choice.value!s:<18}{tag} {choice.reason}")
        lines += [f"  ({len(self.choices) - len(used)} unused fields: run_config.json -> recipe)"] * (len(used) < len(self.choices))
        return "\n".join(lines)


# Per case: strategy, layer decay, augmentation, mixup, head dropout, drop-path.
_CASES: dict[tuple[str, str], dict[str, Any]] = {
    ("small", "similar"): dict(strategy="linear_probe", layer_decay=0.7, augmentation="none", mixup="off", head_dropout=0.0, drop_path_rate=0.0),
    ("large", "similar"): dict(strategy="top_k", layer_decay=0.7, augmentation="light", mixup="auto", head_dropout=0.1, drop_path_rate=0.05),
    ("small", "different"): dict(strategy="head_then_unfreeze", layer_decay=0.8, augmentation="light", mixup="auto", head_dropout=0.2, drop_path_rate=0.1),
    ("large", "different"): dict(strategy="full", layer_decay=0.8, augmentation="medium", mixup="auto", head_dropout=0.1, drop_path_rate=0.05),
}

# When the user makes small + similar data train anyway (e.g. `--strategy full`): moderate regularisation.
_TRAINED_SMALL_SIMILAR = dict(layer_decay=0.7, augmentation="medium", mixup="auto", head_dropout=0.1, drop_path_rate=0.05)

# Per (case, value): why. Few images far from the pretraining data fine-tune from the probe head (LP-FT): heavy
# augmentation or mixup from the start moves the inputs away from the features that head was fitted on (measured on
# pneumoniamnist-200: with strong augmentation + mixup validation collapsed to one class within 3 epochs at either LR;
# crops and flips held the probe's level), so regularisation comes from the gap monitor, dropout and drop-path instead.
_AUGMENTATION_REASONS = {
    "none": "no training on augmented images (cached features)",
    "light": "crops and flips: large familiar data needs no more, and a fine-tune of few images from the probe head "
    "must not move its inputs far from the features the head was fitted on",
    "medium": "add colour jitter and TrivialAugment: unfamiliar data, or little of it",
}
_MIXUP_REASONS = {
    "off": "no training epochs",
    "auto": "switched on by the gap monitor if train macro-F1 runs ahead of validation",
}

_STRATEGY_REASONS = {
    "linear_probe": "small data close to the pretraining domain: the frozen features already separate the classes; "
    "training more layers on few images mostly overfits (head fitted on cached features, one forward pass)",
    "top_k": "large data close to the pretraining domain: keep the generic early layers frozen, adapt the top stages",
    "head_then_unfreeze": "small data far from the pretraining domain: the early layers must adapt too, but gradually "
    "(top first) so few images do not wreck the pretrained weights",
    "full": "large data far from the pretraining domain: enough images to adapt every layer",
}


def propose_truncation(m: DatasetMeasurements) -> tuple[str, str]:
    """(`truncate_after` value, reason): the best block of the stage probe when it clearly beats the top stage on
    small data (`BlockGain.clear`: beyond the CV noise; a smaller gain is not worth the lost capacity), else `"none"`."""
    if not m.stage_probe:
        return "none", "full depth: no stage probe ran (it runs with --strategy auto or --truncate-after auto, given 2+ train images per class)"
    probe = StageProbe.from_dict(m.stage_probe)
    gain = best_block_gain(probe)
    if gain is None:
        return "none", f"full depth: the stage probe found no block below the top stage {probe.top.name}"
    if not gain.clear:
        return "none", (
            f"full depth: {gain.describe()} is within the CV noise (truncation needs > {CLEAR_GAIN_SE:g} SE and >= "
            f"{MIN_CLEAR_GAIN:g})"
        )
    if m.size != "small":
        return "none", f"full depth: {gain.describe()}, but {m.images_per_class:.0f} images per class are enough to adapt the top stages"
    removed = len(probe.stages) - 1 - gain.block.index
    return gain.block.name, (
        f"{gain.describe()} > {CLEAR_GAIN_SE:g} SE: the top stages' features do not transfer to this small dataset; cut "
        f"after {gain.block.name}, removing {removed} stage(s) (--truncate-after none keeps full depth)"
    )


def _trainable_share(strategy: str, top_k: int, units: int) -> float:
    """Average share of the backbone that trains (and costs a backward pass) under `strategy`."""
    return {"linear_probe": 0.0, "top_k": min(1.0, top_k / units), "head_then_unfreeze": 0.75, "full": 1.0}[strategy]


@dataclass
class _Decisions:
    """The plan being made, and the fields the user set: `choose` records one `Choice` per field."""

    plan: RecipePlan
    fixed: dict[str, Any]

    def choose(self, name: str, value: Any, reason: str) -> Any:
        """Records `value` and `reason` for `name`, or the user's value when the flag was given; returns the value."""
        if name in self.fixed:
            self.plan.choices[name] = Choice(self.fixed[name], f"given by --{name.replace('_', '-')}", "flag")
        else:
            self.plan.choices[name] = Choice(value, reason)
        return self.plan.choices[name].value


def plan_recipe(
    m: DatasetMeasurements,
    *,
    time_budget_minutes: float | None = None,
    noisy_labels: bool = False,
    fixed: dict[str, Any] | None = None,
) -> RecipePlan:
    """Picks the recipe for measured data. Pure: the same measurements give the same plan.

    Args:
        m (`DatasetMeasurements`): what `measure_dataset` found.
        time_budget_minutes (`float`, *optional*): training time to plan the epochs for.
        noisy_labels (`bool`, defaults to `False`): the user says the labels are noisy.
        fixed (`dict[str, Any]`, *optional*): fields the user set explicitly (name -> value); they are kept and the
            other choices are made around them (e.g. epochs are costed for a user-chosen strategy).

    Returns:
        `RecipePlan` with a `Choice` for every name in `ADVISOR_FIELDS`, in the order they are decided (depth first).
    """
    fixed = {k: v for k, v in (fixed or {}).items() if v is not None and v not in UNDECIDED_VALUES.get(k, ())}
    decisions = _Decisions(RecipePlan(measurements=m, case=f"{m.size} + {m.domain}"), fixed)
    units = _choose_depth(decisions, m)
    default_top_k = max(1, math.ceil(units / 3))
    strategy = _choose_strategy(decisions, m, units, default_top_k, time_budget_minutes)
    trains_backbone = strategy != "linear_probe"
    defaults = _CASES[(m.size, m.domain)]
    if trains_backbone and defaults["strategy"] == "linear_probe":
        defaults = {**defaults, **_TRAINED_SMALL_SIMILAR}
    _choose_start_and_step_size(decisions, m, defaults, trains_backbone)
    _choose_epochs_and_unfreezing(decisions, m, strategy, units, default_top_k, time_budget_minutes)
    _choose_regularisers(decisions, m, defaults, trains_backbone, noisy_labels)
    # A field only another strategy reads is still recorded (the plan lists every field), marked as unused.
    for name, used_by in USED_ONLY_BY.items():
        choice = decisions.plan.choices[name]
        if strategy != used_by and choice.source == "advisor":
            choice.reason = f"unused by {strategy} ({choice.reason})"
    return decisions.plan


def _choose_depth(decisions: _Decisions, m: DatasetMeasurements) -> int:
    """Chooses `truncate_after` (`propose_truncation`); returns the backbone's unfreeze units at that depth."""
    cut = decisions.choose("truncate_after", *propose_truncation(m))
    units = max(1, m.backbone_units)
    if decisions.plan.choices["truncate_after"].source == "advisor" and cut != "none":
        # The advisor's cut removes stages after the measurement: the unfreeze units are the kept stages.
        units = 1 + next(s["index"] for s in m.stage_probe["stages"] if s["name"] == cut)
    return units


def _choose_strategy(
    decisions: _Decisions, m: DatasetMeasurements, units: int, default_top_k: int, time_budget_minutes: float | None
) -> str:
    """The case's strategy (`_CASES`), or the linear probe when too few epochs of its fine-tune fit the budget."""
    proposed = _CASES[(m.size, m.domain)]["strategy"]
    lift = "n/a (too few images per class for cross-validation)" if m.knn_lift is None else f"{m.knn_lift:.2f}"
    domain_why = (
        f"k-NN on frozen features: lift over chance {lift} (similar from {SIMILAR_LIFT}), "
        f"{m.grayscale_fraction:.0%} grayscale images"
        + (f"; different all the same: {m.block_gain.describe()} (> {SHIFT_GAIN_SE:g} SE), so the top stage is "
           "specialised to another domain"
           if m.domain != m.knn_domain else "")
    )
    size_why = f"{m.images_per_class:.0f} images per class (large from {LARGE_IMAGES_PER_CLASS})"
    strategy_why = f"{_STRATEGY_REASONS[proposed]} [{size_why}; {domain_why}]"
    if "strategy" not in decisions.fixed and proposed != "linear_probe" and time_budget_minutes:
        cost = m.epoch_seconds(_trainable_share(proposed, decisions.fixed.get("top_k", default_top_k), units))
        fits = time_budget_minutes * 60 * BUDGET_SAFETY / cost if cost else math.inf
        if fits < MIN_FINETUNE_EPOCHS:
            strategy_why = (
                f"the {m.size} + {m.domain} case calls for {proposed}, but only {fits:.1f} epochs of it (~{cost:.0f}s "
                f"each) fit the {time_budget_minutes:g} min budget; a fine-tune shorter than {MIN_FINETUNE_EPOCHS} epochs "
                "ends before it recovers from its first updates: fit the head on cached features instead "
                f"(raise --time-budget to fine-tune) [{size_why}; {domain_why}]"
            )
            proposed = "linear_probe"
    return decisions.choose("strategy", proposed, strategy_why)


def _choose_start_and_step_size(
    decisions: _Decisions, m: DatasetMeasurements, defaults: dict[str, Any], trains_backbone: bool
) -> None:
    """Where training starts and how far it moves: layer decay, head initialisation, learning rates, BatchNorm
    statistics and head-only epochs."""
    choose = decisions.choose
    choose(
        "layer_decay",
        defaults["layer_decay"] if trains_backbone else FALLBACKS["layer_decay"],
        ("milder decay: lower layers must move further for a different domain" if m.domain == "different"
         else "strong decay: the early layers already fit, the top adapts most")
        if trains_backbone else "unused: the backbone stays frozen",
    )
    head_init = choose(
        "head_init",
        "probe",
        "the linear probe on cached features (fitted anyway for the baseline) is the head: no training epochs"
        if not trains_backbone else
        "start from the linear probe fitted on cached features (LP-FT): a random head would send large gradients "
        "into the pretrained layers in the first steps; it also replaces the head-only epoch(s)",
    )
    # LP-FT on few images: the head is already fitted, and each step's gradient is a noisy estimate from a handful of
    # images; small, even steps keep the features the probe head reads (benchmarks/results/benchmark_2026-11-23.md, pneumoniamnist-200).
    lp_ft_small = head_init == "probe" and trains_backbone and m.size == "small"
    choose(
        "learning_rate",
        LP_FT_SMALL_LEARNING_RATE if lp_ft_small else FALLBACKS["learning_rate"],
        "fine-tuning few images from the fitted probe head: a small step keeps the pretrained features the head reads"
        if lp_ft_small else "the standard top-stage LR for AdamW fine-tuning" if trains_backbone else "unused: no training epochs",
    )
    choose(
        "head_lr_multiplier",
        1.0 if lp_ft_small else FALLBACKS["head_lr_multiplier"],
        "the probe head is already fitted: it follows the backbone at the same LR instead of moving away from its fit"
        if lp_ft_small else "a head that learns on more data (or starts random) moves further than the pretrained backbone"
        if trains_backbone else "unused: no training epochs",
    )
    choose(
        "fix_bn_stats",
        head_init == "probe" and trains_backbone,
        "the probe head was fitted on features normalised with the pretrained BatchNorm statistics; statistics of "
        "small training batches from the new data would shift every feature it reads (and are noisy): keep them, "
        "train the BatchNorm affine weights" if head_init == "probe" and trains_backbone
        else "BatchNorm statistics follow the training batches" if trains_backbone else "no training epochs",
    )
    choose(
        "head_epochs",
        0 if head_init == "probe" else 1,
        "the probe-initialised head needs no head-only epoch" if head_init == "probe"
        else "one head-only epoch before unfreezing starts",
    )


def _choose_epochs_and_unfreezing(
    decisions: _Decisions, m: DatasetMeasurements, strategy: str, units: int, default_top_k: int,
    time_budget_minutes: float | None,
) -> None:
    """The epochs that fit the budget for the strategy's cost (capped by data size), and the unfreeze schedule."""
    choose, plan = decisions.choose, decisions.plan
    top_k = choose("top_k", default_top_k, f"the top third of the {units} backbone stages")
    plan.estimated_epoch_seconds = m.epoch_seconds(_trainable_share(strategy, top_k, units))
    max_epochs = MAX_EPOCHS[m.size]
    if strategy == "linear_probe":
        epochs, why = 0.0, "the linear probe is fitted on cached features, no training epochs"
    elif time_budget_minutes and plan.estimated_epoch_seconds:
        fit = int(time_budget_minutes * 60 * BUDGET_SAFETY // plan.estimated_epoch_seconds)
        epochs = float(min(max_epochs, max(1, fit)))
        why = (
            f"{time_budget_minutes:g} min budget / ~{plan.estimated_epoch_seconds:.0f}s per epoch (measured "
            f"{m.forward_images_per_second:.1f} images/s forward) -> {fit}, capped at {max_epochs} for {m.size} data"
        )
    else:
        epochs, why = float(FALLBACKS["num_train_epochs"]), "no --time-budget: the standard 10 epochs (early stopping may end sooner)"
    epochs = choose("num_train_epochs", epochs, why)
    steps = max(1, int(epochs) // 2)
    different = m.domain == "different"
    choose(
        "stages_per_unfreeze",
        max(1, math.ceil(units / steps)) if different else 1,
        f"unfreeze all {units} stages by mid-run so the early layers train too" if different
        else "one stage per epoch, top first",
    )


def _choose_regularisers(
    decisions: _Decisions, m: DatasetMeasurements, defaults: dict[str, Any], trains_backbone: bool, noisy_labels: bool
) -> None:
    """Augmentation, mixup, dropout, drop-path, label smoothing, class balancing and the weights' moving average."""
    choose = decisions.choose
    augmentation = defaults["augmentation"] if trains_backbone else "none"
    choose("augmentation", augmentation, _AUGMENTATION_REASONS[augmentation])
    mixup = defaults["mixup"] if trains_backbone else "off"
    choose("mixup", mixup, _MIXUP_REASONS[mixup])
    if trains_backbone:
        choose("head_dropout", defaults["head_dropout"], "less data -> more dropout on the head's input")
        choose("drop_path_rate", defaults["drop_path_rate"], "stochastic depth where the backbone supports it, stronger for less data")
    else:
        choose("head_dropout", 0.0, "no training epochs")
        choose("drop_path_rate", 0.0, "no training epochs")
    choose(
        "label_smoothing_factor",
        NOISY_LABEL_SMOOTHING if noisy_labels else FALLBACKS["label_smoothing_factor"],
        "--noisy-labels: stronger smoothing limits memorising wrong labels" if noisy_labels
        else "mild smoothing curbs over-confidence on few images",
    )
    ratio = m.imbalance_ratio
    choose(
        "class_balance",
        "weighted_loss" if ratio >= IMBALANCE_RATIO_THRESHOLD else "none",
        f"largest/smallest class = {ratio:.1f} (threshold {IMBALANCE_RATIO_THRESHOLD:g}): "
        + ("weight the loss by inverse class frequency" if ratio >= IMBALANCE_RATIO_THRESHOLD else "balanced enough"),
    )
    averaged = "a moving average of the weights, kept where it beats the raw weights on validation (eurosat: higher in every paired seed, docs/benchmarks.md)"
    choose("ema", ADVISED_EMA_DECAY if trains_backbone else 0.0, averaged if trains_backbone else "no training epochs")

"""Optimizer parameter groups with layer-wise LR decay, built once for the whole run.

Like timm's `param_groups_layer_decay`, this is a pure function over a model that describes its
own depth (the backbone adapter's `StageMap`). Every stage gets its groups up front, frozen ones
included, with an absolute LR: the Trainer's warmup + decay schedule then scales every group the
same way, and unfreezing only flips `requires_grad` (and the group's `trainable_since`), never
rebuilding the optimizer or the scheduler.

Extra keys carried in each group (saved with the optimizer state, so they survive a resume):
    name: "<stage>/decay" or "<stage>/no_decay"
    stage: the stage name
    trainable_since: global step from which the stage trains, or None while frozen
    ramp_steps: steps over which a newly unfrozen stage ramps its LR up from 0
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from hf_finetune.backbones.stages import StageMap

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupSpec:
    """What one optimizer group is, for logging and tests (no tensors)."""

    name: str
    stage: str
    param_names: tuple[str, ...]
    lr: float
    weight_decay: float

    @property
    def num_params(self) -> int:
        return len(self.param_names)


def stage_learning_rates(
    stage_map: StageMap, base_lr: float, layer_decay: float, head_lr: float, only: list[str] | None = None
) -> dict[str, float]:
    """LR of each stage: `base_lr * layer_decay ** (D - depth)` for backbone stages (D = top depth), `head_lr` for the head.

    Args:
        stage_map (`StageMap`): the model's stages, input to output.
        base_lr (`float`): LR of the top backbone stage.
        layer_decay (`float`): factor per stage of depth below the top, in (0, 1].
        head_lr (`float`): LR of the new head.
        only (`list[str]`, *optional*): the only backbone stages that ever train (`--train-stages`): depth then
            counts within them, so the highest of them gets `base_lr` and each one below it one more decay factor.
    """
    backbone = [stage.name for stage in stage_map.backbone]
    ranked = [name for name in backbone if name in only] if only else backbone
    top = len(ranked) - 1
    rates = {name: base_lr * layer_decay ** (top - ranked.index(name)) for name in ranked}
    # Stages outside `only` never train; their groups keep the LR their depth would give.
    rates.update({name: base_lr * layer_decay ** (len(backbone) - 1 - depth) for depth, name in enumerate(backbone) if name not in rates})
    rates[stage_map.head.name] = head_lr
    return rates


def build_param_groups(
    model: torch.nn.Module,
    stage_map: StageMap,
    *,
    base_lr: float,
    head_lr: float,
    layer_decay: float,
    weight_decay: float,
    no_decay_names: set[str],
    only: list[str] | None = None,
) -> tuple[list[dict], list[GroupSpec]]:
    """Builds one decay and one no-decay group per stage (empty ones skipped), head first.

    The head comes first so that the stock Trainer's logged `learning_rate` (group 0) is the head's.

    Args:
        model (`torch.nn.Module`): the model whose parameters are grouped.
        stage_map (`StageMap`): the model's stages from the backbone adapter.
        base_lr (`float`): LR of the top backbone stage.
        head_lr (`float`): LR of the head.
        layer_decay (`float`): layer-wise LR decay factor.
        weight_decay (`float`): weight decay of the decay groups.
        no_decay_names (`set[str]`): parameter names exempt from weight decay.
        only (`list[str]`, *optional*): the only backbone stages that train (see `stage_learning_rates`).

    Returns:
        `(groups, specs)`: the torch param groups (every group starts frozen: `trainable_since=None`) and a parallel
        list of `GroupSpec` naming each group's parameters.
    """
    params = dict(model.named_parameters())
    rates = stage_learning_rates(stage_map, base_lr, layer_decay, head_lr, only)
    groups: list[dict] = []
    specs: list[GroupSpec] = []
    for stage in reversed(stage_map.stages):
        for suffix, decay in (("decay", weight_decay), ("no_decay", 0.0)):
            names = tuple(n for n in stage.param_names if (n not in no_decay_names) == (suffix == "decay"))
            if not names:
                continue
            spec = GroupSpec(f"{stage.name}/{suffix}", stage.name, names, rates[stage.name], decay)
            specs.append(spec)
            groups.append(
                {
                    "params": [params[n] for n in names],
                    "lr": spec.lr,
                    "weight_decay": spec.weight_decay,
                    "name": spec.name,
                    "stage": stage.name,
                    "trainable_since": None,
                    "ramp_steps": 0,
                }
            )
    grouped = sum(spec.num_params for spec in specs)
    if grouped != len(params):
        missing = sorted(set(params) - {n for spec in specs for n in spec.param_names})
        raise RuntimeError(f"Parameters outside every stage (backbone adapter bug): {missing[:10]}")
    return groups, specs


def group_learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The current LR of every optimizer group, by group name (its index for a group without one)."""
    return {group.get("name", str(i)): float(group["lr"]) for i, group in enumerate(optimizer.param_groups)}


def log_param_groups(specs: list[GroupSpec], model: torch.nn.Module) -> None:
    """One INFO line: groups, stages and the LR span; the per-group table (name, tensors, parameters, LR, weight decay,
    nanoGPT-style) at DEBUG level. The card and schedule.json hold every group's LR over the run."""
    if not specs:
        return
    stages = list(dict.fromkeys(spec.name.split("/")[0] for spec in specs))
    top, bottom = max(specs, key=lambda s: s.lr), min(specs, key=lambda s: s.lr)
    logger.info(
        "Optimizer: %d groups over %d stages (decay / no-decay); LR %.3g (%s) down to %.3g (%s) before warmup/decay; "
        "weight decay %g.", len(specs), len(stages), top.lr, top.name.split("/")[0], bottom.lr,
        bottom.name.split("/")[0], max(spec.weight_decay for spec in specs),
    )
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    for spec in specs:
        logger.debug(
            "  %-28s %4d tensors %10s params  lr %.3g  wd %g",
            spec.name, spec.num_params, f"{sum(sizes[n] for n in spec.param_names):,}", spec.lr, spec.weight_decay,
        )

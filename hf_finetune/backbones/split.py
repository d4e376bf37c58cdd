"""`split_stages`: an image classifier cut into ordered stages, asked of its family adapter.

The family adapter (`backbones.adapters`) says which module and parameter prefixes make up each stage; this module
resolves those prefixes into a partition of the parameters, checks it and builds the `StageMap` that freezing,
layer-wise LR decay, PEFT and the feature taps all read. A model cut by `truncation.truncate_model` keeps the stages
it recorded in its config instead.
"""

from __future__ import annotations

import logging

from torch import nn

from hf_finetune.backbones.adapters import adapter_for
from hf_finetune.backbones.stages import HEAD, TRUNCATION_FIELD, Stage, StageMap
from hf_finetune.backbones.tree import StageGroups, under, unwrap_peft

logger = logging.getLogger(__name__)


def split_stages(model: nn.Module) -> StageMap:
    """Splits an image classifier into ordered stages: embeddings -> blocks.0 ... blocks.{N-1} -> norm -> head.

    The model's family adapter (`backbones.adapters.adapter_for`) says what each stage holds. transformers models
    are cut along their own module tree: the `nn.ModuleList`/`nn.Sequential` holding most of the parameters is the
    block list (the downsampling stages of hierarchical models, the layers of ViTs); what the forward path registers
    before it is the embeddings stage, what it registers after it is the final norm, and what the classifier adds
    around the backbone is the head. MobileNetV2 and EfficientNet blocks are grouped into their resolution stages.
    timm models (also inside `TimmWrapperForImageClassification`) are split with their own
    `group_matcher(coarse=True)`; the head is `get_classifier()`. A model no family claims gets the same structural
    cut, flagged `"generic"` with a warning. Stages without parameters are left out, so a model with no final norm
    (ResNet) has no `norm` stage. A model cut by `truncation.truncate_model` has the stages it recorded in its
    config: the kept ones and the head.

    Args:
        model (`torch.nn.Module`):
            An image classifier, e.g. from `load_model_and_processor`; a peft `PeftModel` around one also works.

    Returns:
        `StageMap`: the stages, partitioning `model.named_parameters()`.
    """
    inner, prefix = unwrap_peft(model)
    # A truncated model: the stages it kept, as recorded when it was cut; any other: what its family says.
    groups, family = _recorded_groups(inner) or adapter_for(inner).stage_groups(inner)
    if prefix:
        groups = [(name, [prefix + p for p in params]) for name, params in groups]
    stage_map = _build_stage_map(model, groups, family)
    logger.debug(
        "Split %s (%s) into %s",
        type(model).__name__,
        family,
        ", ".join(f"{s.name}[{len(s.param_names)}]" for s in stage_map.stages),
    )
    return stage_map


def token_pooling(model: nn.Module) -> str:
    """How the model's head turns a token sequence `[B, N, D]` into one vector: `"cls"` (the first token: ViT, DeiT,
    DINOv2, BEiT without mean pooling, timm models with `global_pool="token"`) or `"mean"` (Swin, CLIP, BEiT with
    mean pooling, everything else)."""
    inner, _ = unwrap_peft(model)
    return adapter_for(inner).token_pooling(inner)


def _recorded_groups(model: nn.Module) -> tuple[StageGroups, str] | None:
    """The stages a truncated model recorded in its config (`TRUNCATION_FIELD`): only the kept ones exist."""
    record = getattr(getattr(model, "config", None), TRUNCATION_FIELD, None)
    if not record or "stages" not in record:
        return None
    return [(name, list(prefixes)) for name, prefixes in record["stages"]], record["family"]


def _build_stage_map(model: nn.Module, groups: StageGroups, family: str) -> StageMap:
    """Resolves module/parameter prefixes into a parameter partition, checks it and derives `module_names`."""
    all_params = [name for name, _ in model.named_parameters()]
    owner: dict[str, str] = {}
    for param_name in all_params:
        best: tuple[int, str] | None = None
        for stage_name, prefixes in groups:
            for prefix in prefixes:
                if under(param_name, prefix) and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), stage_name)
        if best is None:
            raise RuntimeError(
                f"split_stages left `{param_name}` of {type(model).__name__} without a stage ({family}); "
                "this is a bug in hf_finetune.backbone."
            )
        owner[param_name] = best[1]

    # Every module's set of stages (over all its parameters); a module belongs to a stage if that set is exactly it.
    module_stages: dict[str, set[str]] = {}
    for param_name, stage_name in owner.items():
        parts = param_name.split(".")[:-1]
        for i in range(len(parts) + 1):
            module_stages.setdefault(".".join(parts[:i]), set()).add(stage_name)

    stages: list[Stage] = []
    for stage_name, _ in groups:
        params = tuple(p for p in all_params if owner[p] == stage_name)
        if not params and stage_name == HEAD:
            raise ValueError(
                f"Cannot find the classification head of {type(model).__name__}: split_stages expects an image "
                "classifier (e.g. from `load_model_and_processor`), not a bare backbone."
            )
        if not params:
            continue
        modules = []
        for module_name, stage_set in module_stages.items():
            if stage_set != {stage_name} or module_name == "":
                continue
            parent = module_name.rpartition(".")[0]
            if module_stages.get(parent) != {stage_name} or parent == "":
                modules.append(module_name)
        stages.append(Stage(name=stage_name, param_names=params, module_names=tuple(modules)))
    # Renumber blocks after dropping empty groups so names stay blocks.0 ... blocks.{N-1}.
    renumbered, block_index = [], 0
    for stage in stages:
        if stage.name.startswith("blocks."):
            stage = Stage(f"blocks.{block_index}", stage.param_names, stage.module_names)
            block_index += 1
        renumbered.append(stage)
    return StageMap(stages=renumbered, family=family)

"""Which parameters an optimizer or PEFT method should treat specially: weight-decay exemptions, default LoRA
targets, and the parameters a peft-wrapped model may train.

The rules are structural (norm layers, 1-D parameters, position embeddings and learned tokens by name, attention
projections by name, the stages of `split_stages`); what a family's own code says (timm's `no_weight_decay()`) comes
from its adapter. Nothing here builds an optimizer or freezes anything.
"""

from __future__ import annotations

import logging

from torch import nn

from hf_finetune.backbones.adapters import adapter_for
from hf_finetune.backbones.split import split_stages
from hf_finetune.backbones.stages import EMBEDDINGS
from hf_finetune.backbones.tree import NORM_CLASS_NAME, NORM_TYPES, unwrap_peft

logger = logging.getLogger(__name__)

# Parameter names (any dotted component) that are positional encodings or learned tokens: decaying them toward zero
# erases position information or the token's learned content; BEiT, DeiT, DINOv2, Swin and timm all exempt them.
_NO_DECAY_NAME_PARTS = frozenset(
    {
        "pos_embed",
        "position_embedding",
        "position_embeddings",
        "absolute_pos_embed",
        "pos_embedding",
        "relative_position_bias_table",
        "cls_token",
        "class_embedding",
        "dist_token",
        "distillation_token",
        "reg_token",
        "register_tokens",
        "mask_token",
    }
)


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters that must not receive weight decay.

    Exempt: every parameter of a normalisation layer (BatchNorm*, LayerNorm, GroupNorm, RMSNorm, ... and any module
    whose class name ends in "Norm"/"Norm2d"); every 1-D parameter (biases, norm scales, and layer-scale gammas:
    decaying a layer-scale pulls its residual branch toward zero, undoing what pretraining learned; BEiT, DINOv2,
    ConvNeXt and timm's `weight_decay_exclude_1d` all exempt them); position embeddings and relative position bias
    tables; learned tokens (cls/dist/register/mask); and whatever a timm model lists in its own `no_weight_decay()`.

    Args:
        model (`torch.nn.Module`):
            Any model; names are those of `model.named_parameters()`.

    Returns:
        `set[str]`: the exempt parameter names.
    """
    names: set[str] = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, NORM_TYPES) or NORM_CLASS_NAME.search(type(module).__name__) is not None
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if is_norm or param.ndim <= 1 or _NO_DECAY_NAME_PARTS.intersection(full.split(".")):
                names.add(full)

    # A family's own code may name more (timm's `no_weight_decay()`), relative to the model inside a peft wrapper.
    inner, prefix = unwrap_peft(model)
    names.update(prefix + name for name in adapter_for(inner).no_weight_decay_names(inner))
    return names


# Attention projections that get LoRA adapters, per naming scheme, in order of preference: query + value as in the
# LoRA paper (transformers 5 names them q_proj/v_proj in every ViT-family model; older/remote code query/value),
# timm's fused qkv projection.
_LORA_ATTENTION_TARGETS: tuple[tuple[str, ...], ...] = (("q_proj", "v_proj"), ("query", "value"), ("qkv",))


def lora_target_modules(model: nn.Module) -> list[str]:
    """Default LoRA target modules of an image classifier, as names peft's `target_modules` matches.

    ViT-family models (ViT, DeiT, DINOv2, BEiT, CLIP, Swin, timm ViTs) get adapters on the attention query and value
    projections. Models without attention projections (ConvNeXt, ResNet, MobileNetV2, EfficientNet, timm CNNs) get
    them on every non-depthwise `Conv2d` and every `Linear` of the blocks and the final norm stage: peft supports LoRA
    on convolutions, but cannot merge adapters of grouped (depthwise) ones. The stem (embeddings stage) and the head
    never get adapters; the head is trained fully instead.

    Args:
        model (`torch.nn.Module`):
            An image classifier (e.g. from `load_model_and_processor`), not yet wrapped by peft.

    Returns:
        `list[str]`: module names or dotted name suffixes, each matching only chosen modules.

    Raises:
        `ValueError`: the backbone has no module LoRA can adapt.
    """
    stage_map = split_stages(model)
    adapted = {stage.name for stage in stage_map.backbone if stage.name != EMBEDDINGS}
    owner = {name: stage_map.stage_of(name).name for name, _ in model.named_parameters()}
    candidates: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or getattr(module, "groups", 1) != 1:
            continue
        weight_stage = owner.get(f"{name}.weight")
        if weight_stage in adapted:
            candidates.append(name)
    if not candidates:
        raise ValueError(
            f"{type(model).__name__} has no Linear or non-depthwise Conv2d layer outside the stem and the head: "
            "LoRA has nothing to adapt. Pass `--lora-target-modules` or fine-tune without `--peft`."
        )
    leaves = {name.rsplit(".", 1)[-1] for name in candidates}
    for names in _LORA_ATTENTION_TARGETS:
        if set(names) <= leaves:
            return list(names)
    return _unambiguous_suffixes([name for name, _ in model.named_modules() if name], candidates)


def _unambiguous_suffixes(all_names: list[str], chosen: list[str]) -> list[str]:
    """The shortest dotted suffixes (peft's `key.endswith('.' + suffix)` rule) naming exactly the `chosen` modules."""
    chosen_set = set(chosen)
    others = [name for name in all_names if name not in chosen_set]
    suffixes: list[str] = []
    for name in chosen:
        parts = name.split(".")
        for length in range(1, len(parts) + 1):
            suffix = ".".join(parts[-length:])
            if not any(other == suffix or other.endswith("." + suffix) for other in others):
                break
        if suffix not in suffixes:
            suffixes.append(suffix)
    return suffixes


def tunable_parameter_names(model: nn.Module) -> set[str] | None:
    """Names of the parameters a peft-wrapped model may train (adapters and `modules_to_save` copies).

    Freezing asks this before making a stage trainable: under peft only these parameters follow the stage schedule,
    every base weight stays frozen (including the head's `original_module`, whose trained copy is `modules_to_save`).

    Args:
        model (`torch.nn.Module`): any model; a peft `PeftModel` or not.

    Returns:
        `set[str]` for a `PeftModel`, `None` (every parameter may train) otherwise.
    """
    inner, _ = unwrap_peft(model)
    if inner is model:
        return None
    prefix = getattr(model.base_model, "prefix", "lora_")
    return {
        name
        for name, _ in model.named_parameters()
        if f".{prefix}" in name or ".modules_to_save." in name
    }

"""The one place that knows a backbone's structure.

`load_model_and_processor` turns any image checkpoint (Hub id or local folder, transformers-native or timm) into an
image classifier with a fresh head for the user's labels, loadable afterwards with `AutoModelForImageClassification`
and `pipeline("image-classification")`. `split_stages` cuts that classifier into ordered stages
(embeddings -> blocks.0 ... blocks.{N-1} -> norm -> head) that freezing, layer-wise LR decay and PEFT all ask about;
`no_weight_decay_names` says which parameters must not be decayed. Nothing here builds optimizers or freezes anything.
"""

from __future__ import annotations

import fnmatch
import inspect
import itertools
import logging
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

EMBEDDINGS = "embeddings"
NORM = "norm"
HEAD = "head"
# Config field of a model truncated by `truncation.truncate_model` (the cut, what was removed, the kept stages).
TRUNCATION_FIELD = "hf_finetune_truncation"

# Families whose head reads the CLS token of the last hidden state (the others average tokens or feature maps).
_CLS_POOLING_FAMILIES = frozenset({"vit", "deit", "dinov2", "dinov2_with_registers", "data2vec-vision"})

# Families split_stages knows and the tests pin down; anything else still goes through the same structural split,
# flagged "generic" with a warning so the user checks the stage table.
_KNOWN_TRANSFORMERS_FAMILIES = frozenset(
    {
        "vit",
        "deit",
        "dinov2",
        "dinov2_with_registers",
        "beit",
        "data2vec-vision",
        "clip",
        "convnext",
        "convnextv2",
        "resnet",
        "swin",
        "swinv2",
        "mobilenet_v2",
        "efficientnet",
    }
)

# Checkpoint types with no image classifier class of their own, converted on load (see `load_model_and_processor`).
_MAE_TYPES = ("vit_mae",)
_CLIP_VISION_TYPES = ("clip_vision_model",)

# ViTMAEConfig fields that describe the encoder and mean the same thing in ViTConfig (the decoder_* and masking
# fields are pretraining-only).
_MAE_ENCODER_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
    "layer_norm_eps",
    "image_size",
    "patch_size",
    "num_channels",
    "qkv_bias",
)

# timm's create_model keyword names for the regularisers a user may ask for; forwarded through
# TimmWrapperConfig.model_args when the timm model class accepts them.
_TIMM_MODEL_KWARGS = frozenset({"drop_rate", "drop_path_rate", "attn_drop_rate", "proj_drop_rate", "pos_drop_rate"})

_LABEL_FIELDS = frozenset({"num_labels", "id2label", "label2id"})

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

# Norm layers that need not subclass torch's (FrozenBatchNorm2d, model-specific RMSNorm/LayerNorm classes).
_NORM_CLASS_NAME = re.compile(r"Norm(\dd)?$")
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


# --------------------------------------------------------------------------------------------------------------------
# Stage map
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One group of a backbone, in input -> output order.

    Args:
        name (`str`):
            `"embeddings"`, `"blocks.0"` ... `"blocks.{N-1}"`, `"norm"` or `"head"`.
        param_names (`tuple[str, ...]`):
            Full parameter names, as `model.named_parameters()` yields them.
        module_names (`tuple[str, ...]`):
            Qualified names (as `model.named_modules()` yields them) of the outermost modules whose parameters all
            belong to this stage. Parameters held directly by a shared parent (e.g. timm's `cls_token`) appear in
            `param_names` only.
    """

    name: str
    param_names: tuple[str, ...]
    module_names: tuple[str, ...]


@dataclass
class StageMap:
    """The ordered stages of a model: every parameter belongs to exactly one stage; the head is always last.

    Args:
        stages (`list[Stage]`):
            Stages ordered input -> output, the head last.
        family (`str`):
            What the split was based on: a transformers `model_type` (`"vit"`, `"convnext"`, ...), `"timm:<module>"`
            (e.g. `"timm:efficientnet"`) or `"generic"`.
    """

    stages: list[Stage]
    family: str
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.stages or self.stages[-1].name != HEAD:
            raise ValueError(f"A StageMap needs the `{HEAD}` stage last, got {[s.name for s in self.stages]}.")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"Stage names must be unique, got {names}.")
        index: dict[str, int] = {}
        for depth, stage in enumerate(self.stages):
            for param_name in stage.param_names:
                if param_name in index:
                    raise ValueError(
                        f"Parameter `{param_name}` is in both `{self.stages[index[param_name]].name}` and "
                        f"`{stage.name}`; stages must partition the parameters."
                    )
                index[param_name] = depth
        self._index = index

    @property
    def backbone(self) -> list[Stage]:
        """All stages except the head, input -> output."""
        return self.stages[:-1]

    @property
    def head(self) -> Stage:
        """The classification head (always the last stage)."""
        return self.stages[-1]

    def stage_of(self, param_name: str) -> Stage:
        """Returns the stage holding `param_name` (a name from `model.named_parameters()`)."""
        return self.stages[self.depth_of(param_name)]

    def depth_of(self, param_name: str) -> int:
        """Returns the index of `param_name`'s stage: 0 for the embeddings ... `len(stages) - 1` for the head."""
        try:
            return self._index[param_name]
        except KeyError:
            raise KeyError(
                f"`{param_name}` is not a parameter of the model this StageMap was built from ({self.family})."
            ) from None


def split_stages(model: nn.Module) -> StageMap:
    """Splits an image classifier into ordered stages: embeddings -> blocks.0 ... blocks.{N-1} -> norm -> head.

    transformers models are cut along their own module tree: the `nn.ModuleList`/`nn.Sequential` holding most of the
    parameters is the block list (the downsampling stages of hierarchical models, the layers of ViTs); what the
    forward path registers before it is the embeddings stage, what it registers after it is the final norm, and what
    the classifier adds around the backbone is the head. MobileNetV2 and EfficientNet blocks are grouped into their
    resolution stages. timm models (also inside `TimmWrapperForImageClassification`) are split with their own
    `group_matcher(coarse=True)`; the head is `get_classifier()`. Stages without parameters are left out, so a model
    with no final norm (ResNet) has no `norm` stage. A model cut by `truncation.truncate_model` has the stages it
    recorded in its config: the kept ones and the head.

    Args:
        model (`torch.nn.Module`):
            An image classifier, e.g. from `load_model_and_processor`; a peft `PeftModel` around one also works.

    Returns:
        `StageMap`: the stages, partitioning `model.named_parameters()`.
    """
    inner, prefix = _unwrap_peft(model)
    timm_model, timm_prefix = _find_timm_model(inner)
    recorded = _recorded_groups(inner)
    if recorded is not None:  # a truncated model: the stages it kept, as recorded when it was cut
        groups, family = recorded
    elif timm_model is not None and hasattr(timm_model, "group_matcher"):
        groups, family = _timm_groups(timm_model, timm_prefix)
    else:
        groups, family = _structural_groups(inner, timm_model, timm_prefix)
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
    inner, _ = _unwrap_peft(model)
    timm_model, _ = _find_timm_model(inner)
    if timm_model is not None:
        return "cls" if getattr(timm_model, "global_pool", None) == "token" else "mean"
    config = getattr(inner, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type == "beit":
        return "mean" if getattr(config, "use_mean_pooling", False) else "cls"
    return "cls" if model_type in _CLS_POOLING_FAMILIES else "mean"


def channels_last(module: nn.Module) -> bool:
    """Whether a module's 4-D output is `[B, H, W, C]` (timm modules that declare `output_fmt="NHWC"`: ViT patch
    embeddings with dynamic image size, Swin / MaxViT stages) rather than PyTorch's `[B, C, H, W]`."""
    fmt = getattr(module, "output_fmt", None)
    return getattr(fmt, "value", fmt) == "NHWC"


def _recorded_groups(model: nn.Module) -> tuple[list[tuple[str, list[str]]], str] | None:
    """The stages a truncated model recorded in its config (`TRUNCATION_FIELD`): only the kept ones exist."""
    record = getattr(getattr(model, "config", None), TRUNCATION_FIELD, None)
    if not record or "stages" not in record:
        return None
    return [(name, list(prefixes)) for name, prefixes in record["stages"]], record["family"]


def _unwrap_peft(model: nn.Module) -> tuple[nn.Module, str]:
    """Returns (wrapped model, parameter-name prefix) for a peft `PeftModel`, else (model, "")."""
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        inner = model.get_base_model()
        for name, module in model.named_modules():
            if module is inner:
                return inner, f"{name}." if name else ""
    return model, ""


def _find_timm_model(model: nn.Module) -> tuple[nn.Module | None, str]:
    """Returns (timm model, its name prefix) for TimmWrapper models and bare timm models, else (None, "")."""
    timm_model = getattr(model, "timm_model", None)
    if isinstance(timm_model, nn.Module):
        return timm_model, "timm_model."
    if type(model).__module__.startswith("timm.") and hasattr(model, "get_classifier"):
        return model, ""
    return None, ""


def _module_qualname(root: nn.Module, target: nn.Module) -> str | None:
    for name, module in root.named_modules():
        if module is target:
            return name
    return None


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _timm_groups(timm_model: nn.Module, prefix: str) -> tuple[list[tuple[str, list[str]]], str]:
    """Stages of a timm model from its `group_matcher(coarse=True)`.

    timm's matcher is a dict of `{group: regex | [(regex, suffix), ...]}`; the first matching spec wins, numeric
    regex groups order the blocks and the `MATCH_PREV_GROUP` suffix marks the final norm (timm merges it into the last
    block for layer decay; here it is its own `norm` stage). Unmatched parameters sit between the blocks and the
    classifier (timm ViT's `fc_norm`, ConvNeXt's `head.norm`) and join the `norm` stage; `get_classifier()` is the head.
    """
    from timm.models._manipulate import MATCH_PREV_GROUP

    matcher = timm_model.group_matcher(coarse=True)
    compiled: list[tuple[re.Pattern, int, tuple | None]] = []
    for ordinal, spec in enumerate(matcher.values()):
        if spec is None:
            continue
        for regex, suffix in spec if isinstance(spec, (list, tuple)) else [(spec, None)]:
            compiled.append((re.compile(regex), ordinal, suffix))

    classifier = timm_model.get_classifier()
    classifier_name = _module_qualname(timm_model, classifier) if isinstance(classifier, nn.Module) else None

    head: list[str] = []
    norm: list[str] = []
    keyed: dict[tuple, list[str]] = {}
    for name, _ in timm_model.named_parameters():
        if classifier_name is not None and _under(name, classifier_name):
            head.append(name)
            continue
        for regex, ordinal, suffix in compiled:
            match = regex.match(name)
            if match:
                break
        else:
            norm.append(name)  # neck between the blocks and the classifier
            continue
        if suffix is not None and tuple(suffix) == MATCH_PREV_GROUP:
            norm.append(name)
            continue
        numbers = tuple(int(g) for g in match.groups() if g is not None)
        keyed.setdefault((ordinal, numbers, tuple(suffix or ())), []).append(name)

    groups: list[tuple[str, list[str]]] = []
    block_index = 0
    for key in sorted(keyed):
        ordinal, numbers, _ = key
        # The matcher's first entry without block numbers is the stem (timm names it "stem").
        if ordinal == 0 and not numbers and not groups:
            groups.append((EMBEDDINGS, keyed[key]))
        else:
            groups.append((f"blocks.{block_index}", keyed[key]))
            block_index += 1
    groups.append((NORM, norm))
    groups.append((HEAD, head))
    family = f"timm:{type(timm_model).__module__.rsplit('.', 1)[-1]}"
    return [(name, [prefix + p for p in params]) for name, params in groups], family


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _find_block_list(model: nn.Module, exclude: tuple[str, ...]) -> str | None:
    """The qualified name of the ModuleList/Sequential (>= 2 children with parameters) holding the most parameters.

    Hierarchical models nest lists (stages -> blocks); the outer list always holds more parameters than any inner
    one, so the downsampling stages win, which is the grain we want for CNNs and Swin.
    """
    best: tuple[int, int, str] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or any(_under(name, e) for e in exclude):
            continue
        if sum(1 for child in module.children() if _param_count(child) > 0) < 2:
            continue
        candidate = (_param_count(module), -name.count("."), name)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    return None if best is None else best[2]


def _group_blocks(model: nn.Module, family: str, blocks_name: str) -> list[list[str]]:
    """Child names of the block list, grouped into stages (one child per stage unless the family groups them)."""
    block_list = model.get_submodule(blocks_name)
    children = [(name, child) for name, child in block_list.named_children() if _param_count(child) > 0]
    groups: list[list[str]] = []
    if family == "mobilenet_v2" and all(hasattr(child, "use_residual") for _, child in children):
        # Inverted residuals: a block without a residual connection changes resolution or width, i.e. opens one of
        # the paper's bottleneck groups (t, c, n, s); the residual blocks after it belong to the same group.
        for name, child in children:
            if not child.use_residual or not groups:
                groups.append([])
            groups[-1].append(name)
        return groups
    config = getattr(model, "config", None)
    if family == "efficientnet" and config is not None and hasattr(config, "num_block_repeats"):
        # The encoder flattens its stages into one list; rebuild them with the encoder's own repeat rounding.
        sizes = [int(math.ceil(config.depth_coefficient * n)) for n in config.num_block_repeats]
        if sum(sizes) == len(children):
            names = iter(name for name, _ in children)
            return [list(itertools.islice(names, size)) for size in sizes if size > 0]
    return [[name] for name, _ in children]


def _structural_groups(
    model: nn.Module, timm_model: nn.Module | None = None, timm_prefix: str = ""
) -> tuple[list[tuple[str, list[str]]], str]:
    """Stages cut along the module tree around the main block list (see `split_stages`)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    head_modules: list[str] = []
    if timm_model is not None:
        classifier = timm_model.get_classifier()
        name = _module_qualname(timm_model, classifier) if isinstance(classifier, nn.Module) else None
        if name:
            head_modules.append(timm_prefix + name)
    if model_type in _KNOWN_TRANSFORMERS_FAMILIES and timm_model is None:
        family = model_type
    else:
        family = "generic"
        logger.warning(
            "No stage adapter for %s (model_type=%r): splitting it generically around its largest block list. "
            "Check the logged stage table before relying on layer-wise settings.",
            type(model).__name__,
            model_type,
        )

    blocks_name = _find_block_list(model, exclude=tuple(head_modules))
    if blocks_name is None:
        raise ValueError(
            f"Cannot split {type(model).__name__} into stages: it has no nn.ModuleList/nn.Sequential of blocks."
        )
    path = blocks_name.split(".")
    embeddings: list[str] = []
    norm: list[str] = []
    head: list[str] = list(head_modules)
    module, prefix = model, ""
    for depth, part in enumerate(path):
        after = False
        for child_name, child in module.named_children():
            qualified = prefix + child_name
            if child_name == part:
                after = True
                continue
            if any(_under(qualified, h) for h in head_modules):
                continue  # the classifier, already in the head; its ancestors are split around it
            if not after:
                embeddings.append(qualified)
            elif depth == 0 and not isinstance(child, _NORM_TYPES):
                # Whatever the classifier class adds after the backbone is task-specific: the head.
                head.append(qualified)
            else:
                norm.append(qualified)
        # Parameters held directly by a module on the path (tokens, scalars) enter before the blocks.
        for param_name, _ in module.named_parameters(recurse=False):
            (head if depth == 0 else embeddings).append(prefix + param_name)
        module, prefix = getattr(module, part), prefix + part + "."

    groups: list[tuple[str, list[str]]] = [(EMBEDDINGS, embeddings)]
    for index, members in enumerate(_group_blocks(model, family, blocks_name)):
        groups.append((f"blocks.{index}", [f"{blocks_name}.{m}" for m in members]))
    groups.append((NORM, norm))
    groups.append((HEAD, head))
    return groups, family


def _build_stage_map(model: nn.Module, groups: list[tuple[str, list[str]]], family: str) -> StageMap:
    """Resolves module/parameter prefixes into a parameter partition, checks it and derives `module_names`."""
    all_params = [name for name, _ in model.named_parameters()]
    owner: dict[str, str] = {}
    for param_name in all_params:
        best: tuple[int, str] | None = None
        for stage_name, prefixes in groups:
            for prefix in prefixes:
                if _under(param_name, prefix) and (best is None or len(prefix) > best[0]):
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


# --------------------------------------------------------------------------------------------------------------------
# Stage names and indices (`--truncate-after`, `--train-stages`)
# --------------------------------------------------------------------------------------------------------------------


def valid_stages_text(stage_map: StageMap) -> str:
    """`0=embeddings, 1=blocks.0, ...`: the backbone stages a flag may name, by index and name."""
    return ", ".join(f"{index}={stage.name}" for index, stage in enumerate(stage_map.backbone))


def resolve_stages(stage_map: StageMap, value: str, flag: str, model_name: str) -> list[str]:
    """Backbone stage names from a comma-separated list of stage names or indices (input to output, embeddings = 0).

    Raises:
        `ValueError`: an entry is no backbone stage (the message lists the valid ones), or the list is empty.
    """
    names = [stage.name for stage in stage_map.backbone]
    items = [item.strip() for item in str(value).split(",") if item.strip()]
    if not items:
        raise ValueError(f"`{flag}` {value!r} names no stage. Valid stages of {model_name!r} (index=name): {valid_stages_text(stage_map)}.")
    resolved = []
    for item in items:
        if item.isdigit() and int(item) < len(names):
            resolved.append(names[int(item)])
        elif item in names:
            resolved.append(item)
        else:
            raise ValueError(
                f"`{flag}` {item!r} is not a backbone stage of {model_name!r}. Valid stages (index=name, input to "
                f"output): {valid_stages_text(stage_map)}."
            )
    return list(dict.fromkeys(resolved))


# --------------------------------------------------------------------------------------------------------------------
# Weight decay
# --------------------------------------------------------------------------------------------------------------------


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
        is_norm = isinstance(module, _NORM_TYPES) or _NORM_CLASS_NAME.search(type(module).__name__) is not None
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if is_norm or param.ndim <= 1 or _NO_DECAY_NAME_PARTS.intersection(full.split(".")):
                names.add(full)

    # timm models name their own exemptions, relative to the timm model and possibly with wildcards.
    timm_model, _ = _find_timm_model(_unwrap_peft(model)[0])
    if timm_model is not None and hasattr(timm_model, "no_weight_decay"):
        full_prefix = _module_qualname(model, timm_model)
        full_prefix = f"{full_prefix}." if full_prefix else ""
        patterns = set(timm_model.no_weight_decay())
        for name, _ in timm_model.named_parameters():
            if any(fnmatch.fnmatch(name, p) or _under(name, p) for p in patterns):
                names.add(full_prefix + name)
    return names


# --------------------------------------------------------------------------------------------------------------------
# PEFT
# --------------------------------------------------------------------------------------------------------------------

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
    inner, _ = _unwrap_peft(model)
    if inner is model:
        return None
    prefix = getattr(model.base_model, "prefix", "lora_")
    return {
        name
        for name, _ in model.named_parameters()
        if f".{prefix}" in name or ".modules_to_save." in name
    }


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


def supported_model_types() -> list[str]:
    """The `model_type`s `load_model_and_processor` accepts (timm checkpoints are `timm_wrapper`)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    return sorted({*MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, *_MAE_TYPES, *_CLIP_VISION_TYPES})


def load_model_and_processor(
    model_name_or_path: str,
    id2label: dict[int, str],
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
    token: str | bool | None = None,
    ignore_mismatched_sizes: bool = True,
    **config_overrides: Any,
) -> tuple[PreTrainedModel, Any]:
    """Loads a checkpoint as an image classifier with a new head of `len(id2label)` outputs, plus its image processor.

    Hub ids and local folders go through the same `from_pretrained` path. transformers image classifiers load through
    `AutoModelForImageClassification`, timm checkpoints through `TimmWrapperForImageClassification`. Checkpoints
    without a classifier class get one: a ViTMAE checkpoint becomes a `ViTForImageClassification` holding its encoder
    (the decoder and the random masking are pretraining-only), a CLIP vision tower a `CLIPForImageClassification`.
    Self-supervised checkpoints (DINO, DINOv2, MAE, CLIP) get a new head; a checkpoint that has a head keeps it only
    when its labels are exactly `id2label` (resuming a fine-tune), otherwise the head is re-initialised even when the
    sizes match. The result saves with `save_pretrained` and reloads with the Auto classes and `pipeline`.

    Args:
        model_name_or_path (`str`):
            A Hub model id (e.g. `"facebook/dinov2-small"`) or a local directory with a `config.json`.
        id2label (`dict[int, str]`):
            The new labels, indices `0 .. n-1`.
        revision (`str`, *optional*, defaults to `None`):
            Hub branch, tag or commit.
        cache_dir (`str`, *optional*, defaults to `None`):
            Hub cache folder.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow model code from the Hub repository; only pass `True` for repositories you trust.
        token (`str` or `bool`, *optional*, defaults to `None`):
            Hub token for private or gated repositories.
        ignore_mismatched_sizes (`bool`, *optional*, defaults to `True`):
            Let a checkpoint head of another size be replaced instead of raising.
        **config_overrides:
            Config fields to set before the model is built (e.g. `drop_path_rate=0.1`, `hidden_dropout_prob=0.1`).
            Applied where the config (or its `vision_config`) has the field; for timm models the regularisers
            `drop_rate`, `drop_path_rate`, ... go to `timm.create_model` when the model accepts them. Others are
            logged and ignored.

    Returns:
        `tuple[PreTrainedModel, Any]`: the classifier (config `id2label`/`label2id` filled in) and its image processor.

    Raises:
        `ValueError`: the path/id does not exist, is not an image model, is not cached while offline, or has no
            image processor; or `id2label` is malformed.
    """
    import transformers

    id2label, label2id = _check_labels(id2label)
    hub_kwargs: dict[str, Any] = {
        "revision": revision,
        "cache_dir": cache_dir,
        "token": token,
        "trust_remote_code": trust_remote_code,
    }
    model_name_or_path = _check_location(model_name_or_path)
    original = _load_config(model_name_or_path, hub_kwargs)
    model_type = original.model_type
    supported = supported_model_types()
    if model_type not in supported:
        raise ValueError(
            f"`--model` {model_name_or_path!r} is a `{model_type}` checkpoint, not an image model hf_finetune can "
            f"fine-tune. Supported model types: {', '.join(supported)} (every timm model is `timm_wrapper`)."
        )
    load_kwargs: dict[str, Any] = {**hub_kwargs, "ignore_mismatched_sizes": ignore_mismatched_sizes}
    if os.path.isdir(model_name_or_path) and any(Path(model_name_or_path).glob("*.safetensors")):
        load_kwargs["use_safetensors"] = True
    tower_kwargs = {k: v for k, v in load_kwargs.items() if k != "ignore_mismatched_sizes"}
    # num_labels follows from id2label; passing both makes transformers warn when the checkpoint had other labels.
    labels = {"id2label": id2label, "label2id": label2id}
    source: str | None = model_name_or_path

    if model_type in _MAE_TYPES:
        config = transformers.ViTConfig(
            **{name: getattr(original, name) for name in _MAE_ENCODER_FIELDS},
            **labels,
            architectures=["ViTForImageClassification"],
        )
        model_cls, extra = transformers.ViTForImageClassification, {}
        logger.info("Loading the ViTMAE encoder of %s as ViTForImageClassification (no decoder).", model_name_or_path)
    elif model_type in _CLIP_VISION_TYPES:
        config = transformers.CLIPConfig(
            vision_config=original.to_dict(), **labels, architectures=["CLIPForImageClassification"]
        )
        # The tower loads through its own class (which knows every layout it was ever saved in) and is handed to the
        # classifier as a state dict: a key_mapping would be stored on the model and reverted on save_pretrained,
        # writing keys CLIPForImageClassification cannot reload.
        try:
            tower = transformers.CLIPVisionModel.from_pretrained(model_name_or_path, config=original, **tower_kwargs)
        except (OSError, pickle.UnpicklingError) as err:
            raise _location_error(model_name_or_path, err) from err
        state_dict = {f"vision_model.{key}": value for key, value in tower.state_dict().items()}
        model_cls, extra = transformers.CLIPForImageClassification, {"state_dict": state_dict}
        source = None  # weights come from state_dict
        logger.info("Loading the CLIP vision tower %s as CLIPForImageClassification.", model_name_or_path)
    else:
        if model_type == "timm_wrapper":
            # TimmWrapperConfig.from_dict takes the class count from num_labels, else from the checkpoint's num_classes.
            labels["num_labels"] = len(id2label)
        config = _load_config(model_name_or_path, hub_kwargs, **labels)
        model_cls, extra = transformers.AutoModelForImageClassification, {}
        if getattr(config, TRUNCATION_FIELD, None):
            # A model truncated by hf_finetune: rebuilt with hf_finetune's own copy of its class, never with the
            # modeling file stored next to it.
            from .truncation import load_truncated

            model_cls = load_truncated(config)
    if model_type == "timm_wrapper" and getattr(config, "label_names", None) is not None:
        # A label_names list from the checkpoint would be saved back and reload as LABEL_0.. instead of our labels.
        del config.label_names
    _apply_config_overrides(config, config_overrides)

    try:
        model, loading_info = model_cls.from_pretrained(
            source, config=config, output_loading_info=True, **(load_kwargs if source else {}), **extra
        )
    except (OSError, pickle.UnpicklingError) as err:
        raise _location_error(model_name_or_path, err) from err
    _refresh_head(model, original, id2label, loading_info, model_name_or_path)
    _fix_tf_batchnorm_momentum(model)
    processor = _load_processor(model_name_or_path, hub_kwargs)
    return model, processor


def _fix_tf_batchnorm_momentum(model: nn.Module) -> None:
    """Turns TensorFlow-style BatchNorm decay values (e.g. 0.997) into PyTorch momentum (0.003).

    transformers' MobileNetV2 passes TF's decay straight to `nn.BatchNorm2d(momentum=0.997)`: in PyTorch that makes
    every training batch overwrite the running statistics, so a trained stage evaluates with the last batch's
    statistics. A PyTorch momentum above 0.5 is never intended; `1 - m` restores the TF behaviour.
    """
    fixed = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.momentum is not None and module.momentum > 0.5:
            module.momentum = 1.0 - module.momentum
            fixed += 1
    if fixed:
        logger.warning("Set the BatchNorm momentum of %d layers from TF-style decay to PyTorch momentum (1 - m).", fixed)


def _check_labels(id2label: dict[int, str]) -> tuple[dict[int, str], dict[str, int]]:
    if not id2label:
        raise ValueError("`id2label` is empty: pass one entry per class, e.g. {0: 'cat', 1: 'dog'}.")
    try:
        normalised = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        raise ValueError(f"`id2label` keys must be class indices, got {list(id2label)}.") from None
    if sorted(normalised) != list(range(len(normalised))):
        raise ValueError(f"`id2label` keys must be 0 .. {len(normalised) - 1}, got {sorted(normalised)}.")
    names = list(normalised.values())
    if len(set(names)) != len(names):
        raise ValueError(f"`id2label` names must be unique, got {names}.")
    normalised = dict(sorted(normalised.items()))
    return normalised, {name: index for index, name in normalised.items()}


def _looks_like_local_path(value: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if value.startswith((".", "~", os.sep)) or os.path.isabs(value) or (os.altsep and os.altsep in value):
        return True
    try:
        validate_repo_id(value)
    except HFValidationError:
        return True
    return False


def _not_found_message(value: str) -> str:
    return (
        f"`--model` {value!r} does not exist: pass a Hugging Face Hub model id (e.g. 'facebook/dinov2-small') or a "
        "local directory containing a config.json."
    )


def _check_location(value: str) -> str:
    """Returns the local directory (user-expanded) or the Hub id to load; raises for paths that cannot be either."""
    value = os.fspath(value)
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"`--model` {value!r} is a directory without a config.json: pass a Hugging Face Hub model id or a "
                "local directory saved with `save_pretrained` (or in the timm Hub layout)."
            )
        return str(path)
    if path.exists() or _looks_like_local_path(value):
        raise ValueError(_not_found_message(value))
    return value


def _caused_by(err: BaseException, types: tuple[type[BaseException], ...], phrases: tuple[str, ...]) -> bool:
    """Whether `err` or an exception in its cause/context chain is one of `types` or says one of `phrases`."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, types) or any(phrase in str(seen).lower() for phrase in phrases):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _location_error(value: str, err: BaseException) -> ValueError:
    """Turns an OSError (or a refused pickle) from a `from_pretrained` call into a ValueError that says what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled

    if isinstance(err, pickle.UnpicklingError):
        # transformers reads .bin/.pth weights with torch.load(weights_only=True): anything but tensors is refused.
        reason = re.search(r"WeightsUnpickler error: (.*?)(?: Please use|$)", str(err), re.S)
        return ValueError(
            f"`--model` {value!r}: refused to load its pickled weights (pytorch_model.bin/.pth): they hold Python "
            f"objects other than tensors, which could run code when loaded ({reason.group(1).strip() if reason else err}). "
            "Use a checkpoint with model.safetensors; for weights you trust, load them once with "
            "`torch.load(..., weights_only=False)` and re-save with `save_pretrained` (safetensors)."
        )
    if os.path.isdir(value):
        return ValueError(f"`--model` {value!r} could not be loaded: {err}")
    offline = getattr(constants, "HF_HUB_OFFLINE", False)
    if offline or _caused_by(
        err,
        (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError),
        ("couldn't connect", "offline mode"),
    ):
        return ValueError(
            f"`--model` {value!r} is not a local directory and is not in the Hugging Face cache, and the Hub cannot "
            f"be reached (offline). Download it once with network access (e.g. `hf download {value}`), or pass a "
            "local directory with a config.json; set HF_HUB_OFFLINE=1 only when the cache already holds the model."
        )
    if _caused_by(err, (GatedRepoError,), ("gated repo",)):
        return ValueError(
            f"`--model` {value!r} is a gated Hub repository: accept its licence on the Hub, then pass `token` "
            f"(or run `hf auth login`). ({err})"
        )
    return ValueError(f"{_not_found_message(value)} ({err})")


def _load_config(value: str, hub_kwargs: dict[str, Any], **kwargs: Any):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(value, **hub_kwargs, **kwargs)
    except OSError as err:
        raise _location_error(value, err) from err
    except ValueError as err:
        if "trust_remote_code" in str(err):
            if hub_kwargs.get("trust_remote_code"):
                raise
            raise ValueError(
                f"`--model` {value!r} needs custom Python code from its repository to load (its config.json has an "
                "`auto_map`). hf_finetune does not run it unless you pass `--trust-remote-code`: do that only for a "
                "repository you trust, after reading its .py files."
            ) from err
        raise ValueError(
            f"`--model` {value!r} has a config.json transformers cannot read as a model config ({err}). "
            f"Supported model types: {', '.join(supported_model_types())}."
        ) from err


def _apply_config_overrides(config: Any, overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        if key in _LABEL_FIELDS:
            raise ValueError(f"`{key}` cannot be overridden: the labels come from the `id2label` argument.")
        applied = []
        for target in (config, getattr(config, "vision_config", None)):
            if target is not None and key in target.to_dict():
                setattr(target, key, value)
                applied.append(type(target).__name__)
        if config.model_type == "timm_wrapper" and key in _TIMM_MODEL_KWARGS and _timm_accepts(config, key):
            config.model_args = {**(config.model_args or {}), key: value}
            applied.append(f"timm.create_model({config.architecture!r})")
        if applied:
            logger.info("Config override %s=%r applied to %s.", key, value, ", ".join(applied))
        else:
            logger.warning(
                "Config override `%s=%r` ignored: %s (%s) has no such field.",
                key,
                value,
                type(config).__name__,
                config.model_type,
            )


def _timm_accepts(config: Any, key: str) -> bool:
    """Whether the timm model class behind `config.architecture` takes keyword `key` (probed on the meta device)."""
    import timm

    try:
        with torch.device("meta"):
            probe = timm.create_model(config.architecture, pretrained=False, num_classes=0)
    except Exception:  # noqa: BLE001 - a probe failure only means we cannot forward the override
        return False
    return key in inspect.signature(type(probe).__init__).parameters


def _refresh_head(
    model: nn.Module, original: Any, id2label: dict[int, str], loading_info: dict[str, Any], source: str
) -> None:
    """Re-initialises head weights that came from the checkpoint unless its labels are exactly ours."""
    head = split_stages(model).head
    fresh = set(loading_info.get("missing_keys", ())) | {
        key[0] if isinstance(key, tuple) else key for key in loading_info.get("mismatched_keys", ())
    }
    loaded = [name for name in head.param_names if name not in fresh]
    if not loaded:
        logger.info("New %d-class head for %s.", len(id2label), source)
        return
    original_labels = {int(k): v for k, v in (getattr(original, "id2label", None) or {}).items()}
    if original_labels == id2label:
        logger.info("Keeping the head of %s: its labels are exactly the requested ones.", source)
        return
    logger.info("Re-initialising the head of %s: its labels differ from the requested ones.", source)
    with torch.no_grad():
        for module_name in head.module_names:
            for module in model.get_submodule(module_name).modules():
                for tensor in itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False)):
                    if hasattr(tensor, "_is_hf_initialized"):
                        del tensor._is_hf_initialized
                module.__dict__.pop("_is_hf_initialized", None)
                if hasattr(model, "_init_weights"):
                    model._init_weights(module)
                elif hasattr(module, "reset_parameters"):
                    module.reset_parameters()


def _load_processor(value: str, hub_kwargs: dict[str, Any]) -> Any:
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(value, **hub_kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"`--model` {value!r} has no usable image processor ({err}). hf_finetune takes the input size and "
            "normalisation from the checkpoint's own preprocessor_config.json (or timm pretrained_cfg), never from "
            "defaults: add one with `AutoImageProcessor.save_pretrained`."
        ) from err

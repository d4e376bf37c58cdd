"""TODO docstring."""

from __future__ import annotations

import itertools
import logging
import math
import re
from typing import TYPE_CHECKING

from torch import nn

from hf_finetune.backbones.stages import EMBEDDINGS, HEAD, NORM, TRUNCATION_FIELD, Stage, StageMap

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)


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


# Norm layers that need not subclass torch's (FrozenBatchNorm2d, model-specific RMSNorm/LayerNorm classes).
_NORM_CLASS_NAME = re.compile(r"Norm(\dd)?$")


_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


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

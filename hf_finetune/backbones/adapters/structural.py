"""The structural cut every transformers family (and the generic fallback) starts from.

A classifier is cut along its own module tree: the `nn.ModuleList`/`nn.Sequential` holding most of the parameters is
the block list (the downsampling stages of hierarchical models, the layers of ViTs); what the forward path registers
before it is the embeddings stage, what it registers after it is the final norm, and what the classifier class adds
around the backbone is the head. A family adapter only says how the entries of the block list group into stages.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from hf_finetune.backbones.stages import EMBEDDINGS, HEAD, NORM
from hf_finetune.backbones.tree import NORM_TYPES, StageGroups, param_count, under

# `(model, [(child name, child), ...]) -> [[child name, ...], ...]`: the block list's entries grouped into stages.
BlockGrouper = Callable[[nn.Module, list[tuple[str, nn.Module]]], list[list[str]]]


def one_block_per_stage(model: nn.Module, children: list[tuple[str, nn.Module]]) -> list[list[str]]:
    """Every entry of the block list is its own stage (ViTs' layers, hierarchical models' downsampling stages)."""
    return [[name] for name, _ in children]


def find_block_list(model: nn.Module, exclude: tuple[str, ...]) -> str | None:
    """The qualified name of the ModuleList/Sequential (>= 2 children with parameters) holding the most parameters.

    Hierarchical models nest lists (stages -> blocks); the outer list always holds more parameters than any inner
    one, so the downsampling stages win, which is the grain we want for CNNs and Swin.
    """
    best: tuple[int, int, str] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or any(under(name, e) for e in exclude):
            continue
        if sum(1 for child in module.children() if param_count(child) > 0) < 2:
            continue
        candidate = (param_count(module), -name.count("."), name)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    return None if best is None else best[2]


def structural_groups(
    model: nn.Module, group_blocks: BlockGrouper = one_block_per_stage, head_modules: tuple[str, ...] = ()
) -> StageGroups:
    """Stages cut along the module tree around the main block list (see the module docstring).

    Args:
        model (`torch.nn.Module`):
            The image classifier (not wrapped by peft).
        group_blocks (`BlockGrouper`, *optional*, defaults to one stage per entry):
            How the entries of the block list (those with parameters) group into stages.
        head_modules (`tuple[str, ...]`, *optional*, defaults to `()`):
            Modules known to be the classifier (timm's `get_classifier()`): the head, kept out of the block search.

    Raises:
        `ValueError`: the model has no block list.
    """
    blocks_name = find_block_list(model, exclude=head_modules)
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
            if any(under(qualified, h) for h in head_modules):
                continue  # the classifier, already in the head; its ancestors are split around it
            if not after:
                embeddings.append(qualified)
            elif depth == 0 and not isinstance(child, NORM_TYPES):
                # Whatever the classifier class adds after the backbone is task-specific: the head.
                head.append(qualified)
            else:
                norm.append(qualified)
        # Parameters held directly by a module on the path (tokens, scalars) enter before the blocks.
        for param_name, _ in module.named_parameters(recurse=False):
            (head if depth == 0 else embeddings).append(prefix + param_name)
        module, prefix = getattr(module, part), prefix + part + "."

    block_list = model.get_submodule(blocks_name)
    children = [(name, child) for name, child in block_list.named_children() if param_count(child) > 0]
    groups: StageGroups = [(EMBEDDINGS, embeddings)]
    for index, members in enumerate(group_blocks(model, children)):
        groups.append((f"blocks.{index}", [f"{blocks_name}.{m}" for m in members]))
    groups.append((NORM, norm))
    groups.append((HEAD, head))
    return groups

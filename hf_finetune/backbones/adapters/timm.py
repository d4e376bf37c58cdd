"""timm models, bare or inside transformers' `TimmWrapperForImageClassification`.

timm describes its own depth: `group_matcher(coarse=True)` orders the blocks (what timm's layer-wise decay uses),
`get_classifier()` is the head, `global_pool` says how the head pools tokens and `no_weight_decay()` lists the
parameters timm exempts. A timm model without a group matcher gets the generic structural cut around its classifier.
"""

from __future__ import annotations

import fnmatch
import re

from torch import nn

from hf_finetune.backbones.adapters.base import GENERIC, BackboneAdapter, register_family
from hf_finetune.backbones.stages import EMBEDDINGS, HEAD, NORM
from hf_finetune.backbones.tree import StageGroups, find_timm_model, module_qualname, under


class TimmAdapter(BackboneAdapter):
    """Every model holding a timm model (see the module docstring); the family is `"timm:<timm module>"`, e.g.
    `"timm:efficientnet"`."""

    name = "timm"

    def matches(self, model: nn.Module) -> bool:
        return find_timm_model(model)[0] is not None

    def stage_groups(self, model: nn.Module) -> tuple[StageGroups, str]:
        timm_model, prefix = find_timm_model(model)
        if hasattr(timm_model, "group_matcher"):
            return _matcher_groups(timm_model, prefix)
        classifier = _classifier_name(timm_model)
        return GENERIC.stage_groups(model, head_modules=(prefix + classifier,) if classifier else ())

    def token_pooling(self, model: nn.Module) -> str:
        """`"cls"` for timm models with `global_pool="token"` (ViTs), `"mean"` otherwise."""
        timm_model, _ = find_timm_model(model)
        return "cls" if getattr(timm_model, "global_pool", None) == "token" else "mean"

    def no_weight_decay_names(self, model: nn.Module) -> set[str]:
        """What the timm model lists in `no_weight_decay()`: names relative to it, possibly with wildcards."""
        timm_model, _ = find_timm_model(model)
        if not hasattr(timm_model, "no_weight_decay"):
            return set()
        full_prefix = module_qualname(model, timm_model)
        full_prefix = f"{full_prefix}." if full_prefix else ""
        patterns = set(timm_model.no_weight_decay())
        return {
            full_prefix + name
            for name, _ in timm_model.named_parameters()
            if any(fnmatch.fnmatch(name, p) or under(name, p) for p in patterns)
        }


def _classifier_name(timm_model: nn.Module) -> str | None:
    """The qualified name of `get_classifier()` inside the timm model (`None` when it is no module)."""
    classifier = timm_model.get_classifier()
    return module_qualname(timm_model, classifier) if isinstance(classifier, nn.Module) else None


def _matcher_groups(timm_model: nn.Module, prefix: str) -> tuple[StageGroups, str]:
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

    classifier_name = _classifier_name(timm_model)
    head: list[str] = []
    norm: list[str] = []
    keyed: dict[tuple, list[str]] = {}
    for name, _ in timm_model.named_parameters():
        if classifier_name is not None and under(name, classifier_name):
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

    groups: StageGroups = []
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


register_family(TimmAdapter())

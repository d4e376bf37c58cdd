"""What a family adapter is, the registry of families, and the generic fallback used when none matches.

Modelled on peft's tuner registry: each family is one `BackboneAdapter` subclass in its own module, registered with
`register_family(...)` at the end of that module; `adapter_for(model)` returns the first registered family that
claims the model, or `GENERIC`. Adding a family means adding one adapter (and importing its module in
`adapters/__init__.py`); `split_stages`, `token_pooling` and the weight-decay rules never name a family.
"""

from __future__ import annotations

import logging

from torch import nn

from hf_finetune.backbones.adapters.structural import one_block_per_stage, structural_groups
from hf_finetune.backbones.tree import StageGroups

logger = logging.getLogger(__name__)


def model_type_of(model: nn.Module) -> str | None:
    """The transformers `config.model_type` of `model` (`None` for a model without a config)."""
    return getattr(getattr(model, "config", None), "model_type", None)


class BackboneAdapter:
    """How hf_finetune reads one family of image classifiers: its stages, how its head pools tokens, its own
    weight-decay exemptions.

    The defaults fit a transformers family claimed by `model_types`: the structural cut around the block list (see
    `adapters.structural`), blocks grouped by `group_blocks` (one stage per entry), the family reported as the
    `model_type`, tokens averaged, no exemptions beyond the generic rules of `targets.no_weight_decay_names`. Every
    method receives the classifier itself (a peft wrapper already removed).

    Attributes:
        name (`str`): the registry key.
        model_types (`frozenset[str]`): the transformers `model_type`s the family covers.
    """

    name: str = ""
    model_types: frozenset[str] = frozenset()

    def matches(self, model: nn.Module) -> bool:
        """Whether this family describes `model`."""
        return model_type_of(model) in self.model_types

    def stage_groups(self, model: nn.Module) -> tuple[StageGroups, str]:
        """`([(stage name, [module or parameter prefixes]), ...], family)`: input to output, the head last."""
        return structural_groups(model, self.group_blocks), model_type_of(model)

    def group_blocks(self, model: nn.Module, children: list[tuple[str, nn.Module]]) -> list[list[str]]:
        """The block list's entries (those with parameters) grouped into stages; one stage per entry by default."""
        return one_block_per_stage(model, children)

    def token_pooling(self, model: nn.Module) -> str:
        """How the head turns a token sequence `[B, N, D]` into one vector: `"cls"` (the first token) or `"mean"`."""
        return "mean"

    def no_weight_decay_names(self, model: nn.Module) -> set[str]:
        """Parameter names the family's own code exempts from weight decay (none by default)."""
        return set()


class GenericAdapter(BackboneAdapter):
    """Any model no registered family claims: the same structural cut, flagged `"generic"` with a warning so the user
    checks the stage table."""

    name = "generic"

    def matches(self, model: nn.Module) -> bool:
        return True

    def stage_groups(self, model: nn.Module, head_modules: tuple[str, ...] = ()) -> tuple[StageGroups, str]:
        """The structural cut; `head_modules` are modules known to be the classifier (timm's `get_classifier()`)."""
        logger.warning(
            "No stage adapter for %s (model_type=%r): splitting it generically around its largest block list. "
            "Check the logged stage table before relying on layer-wise settings.",
            type(model).__name__,
            model_type_of(model),
        )
        return structural_groups(model, head_modules=head_modules), self.name


GENERIC = GenericAdapter()

_FAMILIES: dict[str, BackboneAdapter] = {}


def register_family(adapter: BackboneAdapter) -> BackboneAdapter:
    """Adds `adapter` to the families `adapter_for` asks, after those registered before it.

    Raises:
        `ValueError`: another family is registered under the same `name`.
    """
    if not adapter.name or adapter.name in _FAMILIES:
        raise ValueError(
            f"Cannot register {type(adapter).__name__}: its `name` {adapter.name!r} is empty or already registered "
            f"(registered: {', '.join(_FAMILIES)}). Give the adapter a unique `name`."
        )
    _FAMILIES[adapter.name] = adapter
    return adapter


def adapter_for(model: nn.Module) -> BackboneAdapter:
    """The first registered family that claims `model` (not wrapped by peft), else `GENERIC`."""
    return next((adapter for adapter in _FAMILIES.values() if adapter.matches(model)), GENERIC)

"""Turns decisions into the arguments a run uses, without writing into the caller's argument objects.

A run's recipe fields come from three places, in this order: the user's flags, the advisor's plan (or, on resume,
the plan recorded when the run started) and, for fields nothing decided, `config.choices.FALLBACKS`. Each step
returns a new `RunArguments`, so the objects a user passed in stay as they were and a run can be replayed from
what it recorded.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from hf_finetune.config.choices import with_fallbacks
from hf_finetune.config.finetune import FinetuneArguments
from hf_finetune.config.sources import DataArguments, ModelArguments
from hf_finetune.config.training import FinetuneTrainingArguments
from hf_finetune.recipe.advisor import ADVISOR_FIELDS, UNDECIDED_VALUES, RecipePlan

_SECTIONS = ("finetune", "data", "training", "model")


@dataclass(frozen=True)
class RunArguments:
    """The four argument groups of one run, as decided so far. Never changed in place: `replace` returns a new one
    whose changed groups are copies.

    Args:
        model (`ModelArguments`): which backbone.
        data (`DataArguments`): which images.
        finetune (`FinetuneArguments`): the recipe.
        training (`FinetuneTrainingArguments`): the Trainer's arguments.
    """

    model: ModelArguments
    data: DataArguments
    finetune: FinetuneArguments
    training: FinetuneTrainingArguments

    def owner(self, name: str) -> str:
        """The group (`"finetune"`, `"data"`, `"training"` or `"model"`) that holds field `name`."""
        for section in _SECTIONS:
            if hasattr(getattr(self, section), name):
                return section
        raise AttributeError(f"No argument group has a field `{name}`.")

    def get(self, name: str) -> Any:
        return getattr(getattr(self, self.owner(name)), name)

    def replace(self, **values: Any) -> RunArguments:
        """A new `RunArguments` with `values` set; the groups they touch are shallow copies, the others shared."""
        groups = {section: getattr(self, section) for section in _SECTIONS}
        copied: set[str] = set()
        for name, value in values.items():
            section = self.owner(name)
            if section not in copied:
                groups[section] = copy.copy(groups[section])
                copied.add(section)
            setattr(groups[section], name, value)  # on the copy made just above
        return RunArguments(**groups)

    def with_fallbacks(self) -> tuple[RunArguments, list[str]]:
        """Every field nothing decided set to `FALLBACKS`; returns the new arguments and the names filled."""
        data, filled_data = with_fallbacks(self.data)
        finetune, filled_finetune = with_fallbacks(self.finetune)
        training, filled_training = with_fallbacks(self.training)
        return RunArguments(self.model, data, finetune, training), [*filled_data, *filled_finetune, *filled_training]


def explicit_fields(arguments: RunArguments) -> dict[str, Any]:
    """The advisor-managed fields the user set (not None; strategy / truncate_after not "auto")."""
    fixed = {name: arguments.get(name) for name in ADVISOR_FIELDS}
    return {k: v for k, v in fixed.items() if v is not None and v not in UNDECIDED_VALUES.get(k, ())}


def apply_plan(plan: RecipePlan, arguments: RunArguments) -> RunArguments:
    """The arguments with the plan's advisor-made choices (fields the user set are left alone)."""
    return arguments.replace(**{name: choice.value for name, choice in plan.choices.items() if choice.source != "flag"})


def apply_recorded_plan(recorded: dict[str, Any], arguments: RunArguments) -> tuple[RunArguments, list[str]]:
    """The arguments with the advisor's choices recorded in an earlier attempt's `run_config.json` (`recipe`) for
    the fields still undecided now, so a resumed run keeps the plan it started with (a re-measured throughput could
    otherwise change, say, the number of epochs mid-run). Returns them and the names of the fields set.
    """
    undecided = set(ADVISOR_FIELDS) - set(explicit_fields(arguments))
    values = {
        name: choice["value"]
        for name, choice in (recorded.get("choices") or {}).items()
        if name in undecided and choice.get("source") == "advisor"
    }
    return arguments.replace(**values), list(values)

"""Turns decisions into the arguments a run uses, without writing into the caller's argument objects.

A run's recipe fields come from three places, in this order: the user's flags, the advisor's plan (or, on resume,
the plan recorded when the run started) and, for fields nothing decided, `config.choices.FALLBACKS`. Each step
returns new argument objects, so the objects a user passed in stay as they were and a run can be replayed from
what it recorded.
"""

from __future__ import annotations

from typing import Any

from hf_finetune.recipe.advisor import ADVISOR_FIELDS, UNDECIDED_VALUES, RecipePlan


def _owner(name: str, data_args: Any, finetune_args: Any, training_args: Any) -> Any:
    return next(obj for obj in (finetune_args, data_args, training_args) if hasattr(obj, name))


def apply_plan(plan: RecipePlan, data_args: Any, finetune_args: Any, training_args: Any) -> None:
    """Writes the plan's advisor-made choices into the argument objects (fields the user set are left alone)."""
    for name, choice in plan.choices.items():
        if choice.source != "flag":
            setattr(_owner(name, data_args, finetune_args, training_args), name, choice.value)


def apply_recorded_plan(recorded: dict[str, Any], data_args: Any, finetune_args: Any, training_args: Any) -> list[str]:
    """Re-applies the advisor's choices recorded in an earlier attempt's `run_config.json` (`recipe`) to the
    fields still undecided now, so a resumed run keeps the plan it started with (a re-measured throughput could
    otherwise change, say, the number of epochs mid-run). Returns the names of the fields set.
    """
    undecided = set(ADVISOR_FIELDS) - set(explicit_fields(data_args, finetune_args, training_args))
    applied = []
    for name, choice in (recorded.get("choices") or {}).items():
        if name in undecided and choice.get("source") == "advisor":
            setattr(_owner(name, data_args, finetune_args, training_args), name, choice["value"])
            applied.append(name)
    return applied


def explicit_fields(data_args: Any, finetune_args: Any, training_args: Any) -> dict[str, Any]:
    """The advisor-managed fields the user set (not None; strategy / truncate_after not "auto")."""
    fixed = {name: getattr(_owner(name, data_args, finetune_args, training_args), name) for name in ADVISOR_FIELDS}
    return {k: v for k, v in fixed.items() if v is not None and v not in UNDECIDED_VALUES.get(k, ())}

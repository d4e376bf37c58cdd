"""Text of the model card that is computed, not templated: the advisor's plan in words, the head LR the run used,
the command as the user typed it, and local paths kept out of a card that will be published."""

from __future__ import annotations

import json
import os
from typing import Any


def recipe_context(recipe: Any) -> dict[str, Any] | None:
    """The advisor's recipe (a later `recipe` key of run_config.json) as settings + reasons, whatever its shape."""
    if not recipe:
        return None
    if not isinstance(recipe, dict):
        return {"settings": [], "reasons": [str(recipe)]}
    if isinstance(recipe.get("choices"), dict):  # a recorded `RecipePlan.to_dict()`
        return plan_context(recipe)
    reasons: list[str] = []
    settings: list[tuple[str, str]] = []
    for key, value in recipe.items():
        if key.lower() in ("why", "reason", "reasons", "rationale", "explanation", "notes"):
            reasons.extend(value if isinstance(value, list) else [value])
        elif isinstance(value, dict):
            settings.extend(
                (f"{key}.{k}", json.dumps(v) if isinstance(v, (dict, list)) else str(v))
                for k, v in value.items()
                if k != "stage_probe"  # its own table on the card
            )
        else:
            settings.append((key, json.dumps(value) if isinstance(value, list) else str(value)))
    return {"settings": settings, "reasons": [str(r) for r in reasons]}


def plan_context(plan: dict[str, Any]) -> dict[str, Any]:
    """The advisor's plan as the card shows it: the measured case, then one row per choice the chosen strategy reads
    (value and reason in words; fields it never reads stay in the full configuration below)."""
    measured = plan.get("measurements") or {}
    facts = [
        f"{measured[key]} {text}" for key, text in (("num_train", "train images"), ("num_classes", "classes"))
        if measured.get(key) is not None
    ]
    if isinstance(measured.get("knn_lift"), (int, float)):
        facts.append(f"k-NN lift over chance on frozen features {measured['knn_lift']:.2f}")
    settings = [("case", str(plan.get("case")) + (f" ({', '.join(facts)})" if facts else ""))]
    for name, choice in plan["choices"].items():
        if not isinstance(choice, dict) or str(choice.get("reason", "")).startswith("unused"):
            continue
        who = "your flag" if choice.get("source") == "flag" else "advisor"
        reason = str(choice.get("reason", "")).replace("|", "/")  # a pipe would end the table cell
        settings.append((name, f"`{choice.get('value')}` ({who}): {reason}"))
    return {"settings": settings, "reasons": []}


def head_learning_rate(finetune: dict[str, Any], training: dict[str, Any]) -> str:
    """The head's LR as the run used it: `--head-learning-rate`, else the multiplier times the top stage's LR."""
    if finetune.get("head_learning_rate"):
        return f"{finetune['head_learning_rate']:g}"
    multiplier, base = finetune.get("head_lr_multiplier"), training.get("learning_rate")
    if isinstance(multiplier, (int, float)) and isinstance(base, (int, float)):
        return f"{multiplier * base:g} ({multiplier:g} x the top stage LR)"
    return "the top stage LR times `--head-lr-multiplier`"


def redact_local_paths(value: Any) -> Any:
    """`value` (JSON-like) with every absolute local path shortened to its last component: a card is published,
    the folders of the machine it was trained on are nobody's business and mean nothing elsewhere."""
    if isinstance(value, dict):
        return {key: redact_local_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_local_paths(item) for item in value]
    if isinstance(value, str) and len(value) > 1 and os.path.isabs(value):
        return f"<local>/{os.path.basename(value.rstrip(os.sep)) or value}"
    return value


def user_command(command: list[str]) -> str:
    """The command as the user typed it (`python -m hf_finetune ...`), local paths shortened."""
    args = list(command)
    if args and (args[0].endswith(("__main__.py", "hf_finetune")) or args[0] == "-m"):
        args = args[1:]
    return " ".join(["python", "-m", "hf_finetune", *redact_local_paths(args)])

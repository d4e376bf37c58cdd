"""The model card (`README.md` of the output directory), generated from what a run recorded.

Everything on the card comes from the run's own files: `run_config.json` (arguments, seeds, versions, splits, freeze
events, and an advisor `recipe` when there is one), `schedule.json` (per-epoch trainable stages, per-group LRs,
losses, validation metrics, per-step LR history) and `test_report.json` (test metrics, per-class table, confusion
matrix, and a linear-probe `baseline` when one was run). The body is the Jinja template `templates/model_card.md.jinja`
of this sub-package (package data, so a wheel install has it; `model_card_templates/` of the repository is the same
file), rendered through huggingface_hub's `ModelCard.from_template`; the metadata is a `ModelCardData` whose
`eval_results` become the Hub's `model-index`.

    python -m hf_finetune card OUTPUT_DIR [--repo-id user/name] [--license apache-2.0]
"""

from __future__ import annotations

import json
import logging
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

from hf_finetune.backbones.errors import looks_like_local_path
from hf_finetune.config.files import (
    CARD_FILE,
    CONFUSION_MATRIX_FILE,
    EXAMPLES_DIR,
    LR_SCHEDULE_FILE,
    RUN_CONFIG_FILE,
    SCHEDULE_FILE,
    TEST_REPORT_FILE,
    TRAINING_CURVES_FILE,
)
from hf_finetune.evaluation.plots import plot_lr_schedule, plot_training_curves, stage_lr_history
from hf_finetune.sharing.card_after_training import after_training_context
from hf_finetune.sharing.card_audit import audit_context
from hf_finetune.sharing.card_text import head_learning_rate, recipe_context, redact_local_paths, user_command

logger = logging.getLogger(__name__)

TEMPLATE_NAME = "model_card.md.jinja"

# Package data (pyproject.toml), so a wheel install renders cards as a source checkout does. pip installs packages as
# plain files, and `ModelCard.from_template` needs a file path: the resource is used as one.
TEMPLATE_DIR = Path(str(resources.files("hf_finetune.sharing") / "templates"))

_FALLBACK_LICENSE = "other"


def default_template_path() -> Path:
    """The packaged `templates/model_card.md.jinja` (a copy of the repository's `model_card_templates/`)."""
    path = TEMPLATE_DIR / TEMPLATE_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"The model card template {str(path)!r} is missing from the installed hf_finetune: reinstall it "
            "(`pip install --force-reinstall hf_finetune`), or pass `template_path`."
        )
    return path


def _read_json(output_dir: str, name: str, required: bool = True) -> dict[str, Any]:
    path = os.path.join(output_dir, name)
    if not os.path.isfile(path):
        if required:
            raise ValueError(
                f"`{path}` is missing: the model card is generated from a finished run's records "
                f"({RUN_CONFIG_FILE}, {SCHEDULE_FILE}, {TEST_REPORT_FILE}). Pass the --output-dir of a finished run."
            )
        return {}
    with open(path) as f:
        return json.load(f)


def _is_hub_id(value: str | None) -> bool:
    """Whether `value` names a Hub repository (not a local path): only those belong in the card's metadata."""
    return bool(value) and not os.path.exists(value) and not looks_like_local_path(value)


def _card_license_of(model_ref: str) -> str | None:
    """The licence a base model states (its README.md metadata or timm `pretrained_cfg.license`), offline only."""
    from huggingface_hub import ModelCard, try_to_load_from_cache

    def local(name: str) -> str | None:
        if os.path.isdir(model_ref):
            path = os.path.join(model_ref, name)
            return path if os.path.isfile(path) else None
        if _is_hub_id(model_ref):
            cached = try_to_load_from_cache(model_ref, name)
            return cached if isinstance(cached, str) else None
        return None

    readme = local("README.md")
    if readme:
        try:
            license_id = ModelCard.load(readme, ignore_metadata_errors=True).data.license
        except Exception:  # noqa: BLE001 - a malformed base card only means we cannot read its licence
            license_id = None
        if license_id:
            return str(license_id)
    config = local("config.json")
    if config:
        with open(config) as f:
            license_id = (json.load(f).get("pretrained_cfg") or {}).get("license")
        if license_id:
            return str(license_id)
    return None


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_lr(value: float | None) -> str:
    return "·" if not value else f"{value:.1e}"


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (e.g. test accuracy on `total` images)."""
    if total <= 0:
        return (0.0, 1.0)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _compact_stages(names: list[str], backbone: list[str]) -> str:
    """The trainable stages of an epoch in a few words: 'head only', 'blocks.5 and above (3/9) + head', ..."""
    trained = [name for name in backbone if name in names]
    if not trained:
        return "head only"
    if len(trained) == len(backbone):
        return f"all {len(backbone)} backbone stages + head"
    if len(trained) > 1 and trained == backbone[-len(trained):]:  # the usual case: a top slice of the backbone
        return f"{trained[0]} and above ({len(trained)}/{len(backbone)}) + head"
    return ", ".join(reversed(trained)) + " + head"


def _timeline_rows(schedule: dict[str, Any], backbone: list[str]) -> list[dict[str, str]]:
    rows = []
    for record in schedule.get("epochs", []):
        validation = record.get("validation", {})
        rows.append(
            {
                "epoch": str(record["epoch"]),
                "steps": f"{record.get('first_step', '?')}–{record.get('last_step', '?')}",
                "trainable": _compact_stages(record.get("trainable_stages", []), backbone),
                "train_loss": _fmt(record.get("train_loss")),
                "val_loss": _fmt(validation.get("loss")),
                "val_accuracy": _fmt(validation.get("accuracy")),
                "val_macro_f1": _fmt(validation.get("macro_f1")),
            }
        )
    return rows


def _lr_rows(schedule: dict[str, Any], stages: list[str], freeze_events: list[dict]) -> list[dict[str, Any]]:
    """Per stage (head first): when it was unfrozen, its peak LR, and its LR at the end of each epoch."""
    curves = stage_lr_history(schedule.get("lr_history", {}))
    unfrozen_at = {"head": "start"}
    for event in freeze_events:
        for name in event.get("trainable", []) if event.get("reason") == "start" else event.get("unfrozen", []):
            unfrozen_at.setdefault(name, "start" if event.get("reason") == "start" else f"epoch {event['epoch']}")
    rows = []
    for stage in ["head", *reversed(stages)]:
        lr_end = []
        for record in schedule.get("epochs", []):
            values = [lr for group, lr in record.get("lr_end", {}).items() if group.split("/")[0] == stage]
            lr_end.append(_fmt_lr(values[0] if values else None))
        rows.append(
            {
                "stage": stage,
                "unfrozen": unfrozen_at.get(stage, "never"),
                "peak": _fmt_lr(max(curves.get(stage, [0.0]) or [0.0])),
                "lr_end": lr_end,
            }
        )
    return rows


def _baseline_context(baseline: Any, report: dict[str, Any]) -> dict[str, Any] | None:
    """The linear-probe baseline (a later `baseline` key of test_report.json) beside the fine-tune."""
    if not isinstance(baseline, dict) or not baseline:
        return None
    rows = []
    for key, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        if isinstance(baseline.get(key), (int, float)):
            rows.append({"metric": f"test {name}", "baseline": _fmt(float(baseline[key])), "finetune": _fmt(report.get(key))})
    extras = [
        (key, _fmt(value) if isinstance(value, float) else str(value))
        for key, value in baseline.items()
        if key not in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "labels") and not isinstance(value, (dict, list))
    ]
    return {"rows": rows, "extras": extras}


def _selection_context(selection: Any) -> dict[str, Any] | None:
    """Which model the run kept after its fine-tune (probe, fine-tune or their interpolation) and on what estimate."""
    if not isinstance(selection, dict) or "chosen" not in selection:
        return None
    rows = [
        {"alpha": f"{c['alpha']:g}", "macro_f1": _fmt(c.get("validation_macro_f1")), "std": _fmt(c.get("bootstrap_std")),
         "loss": _fmt(c.get("validation_loss")), "kept": c["alpha"] == selection.get("alpha"),
         "lead": "" if c.get("lead_std") is None else f"{c['lead']:+.4f} ± {c['lead_std']:.4f}"}
        for c in selection.get("candidates", [])
    ]
    return {"chosen": selection["chosen"].replace("_", " "), "alpha": selection.get("alpha"),
            "estimate": selection.get("estimate", ""), "reason": selection.get("reason", ""), "rows": rows}


def _card_identity(config: dict[str, Any], output_dir: str, repo_id: str | None, license: str | None) -> dict[str, Any]:
    """What the card is about: the model's name and repository, its base model, its dataset and its licence.

    The keys are template variables; `_card_metadata` reads them too.
    """
    model_ref = config["model"]["model"]
    dataset_ref = config["data"]["dataset"]
    repo_id = repo_id or config.get("training", {}).get("hub_model_id")
    dataset_is_hub = _is_hub_id(dataset_ref)
    return dict(
        model_name=(repo_id or os.path.basename(os.path.abspath(output_dir))).split("/")[-1],
        repo_id=repo_id,
        model_ref=model_ref,
        base_model_is_hub=_is_hub_id(model_ref),
        dataset_ref=dataset_ref,
        dataset_name=dataset_ref if dataset_is_hub else os.path.basename(os.path.normpath(dataset_ref)),
        dataset_is_hub=dataset_is_hub,
        license_id=license or config.get("share", {}).get("license") or _card_license_of(model_ref) or _FALLBACK_LICENSE,
    )


def _card_metadata(config: dict[str, Any], report: dict[str, Any], identity: dict[str, Any]) -> Any:
    """The card's YAML metadata (`ModelCardData`): the test metrics become the Hub's `model-index`."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset_ref, dataset_is_hub = identity["dataset_ref"], identity["dataset_is_hub"]
    common = dict(
        task_type="image-classification",
        task_name="Image Classification",
        dataset_type=dataset_ref if dataset_is_hub else "imagefolder",
        dataset_name=identity["dataset_name"],
        dataset_config=config["data"].get("dataset_config"),
        dataset_split="test",
    )
    eval_results = [
        EvalResult(metric_type="accuracy", metric_name="Test accuracy", metric_value=float(report["accuracy"]), **common),
        EvalResult(
            metric_type="f1", metric_name="Test macro-F1", metric_value=float(report["macro_f1"]),
            metric_args={"average": "macro"}, **common,
        ),
    ]
    tags = ["image-classification", "vision", "hf_finetune", config.get("finetune", {}).get("strategy", "fine-tuned")]
    if str(config.get("stage_family", "")).startswith("timm:"):
        tags.append("timm")
    if config.get("peft"):
        tags += ["peft", "lora"]
    return ModelCardData(
        base_model=identity["model_ref"] if identity["base_model_is_hub"] else None,
        datasets=[dataset_ref] if dataset_is_hub else None,
        library_name="transformers",
        pipeline_tag="image-classification",
        license=identity["license_id"],
        tags=tags,
        metrics=["accuracy", "f1"],
        model_name=identity["model_name"],
        eval_results=eval_results,
    )


def _card_context(
    output_dir: str, config: dict[str, Any], report: dict[str, Any], schedule: dict[str, Any], identity: dict[str, Any]
) -> dict[str, Any]:
    """The template's variables: `identity`, then the run's records reshaped into the card's tables."""
    freeze_events = config.get("freeze_events", [])
    labels = report["labels"]
    num_test = int(report["num_samples"])
    correct = sum(report["confusion_matrix"][i][i] for i in range(len(labels)))
    ci_low, ci_high = wilson_interval(correct, num_test)
    stages = [stage["name"] for stage in config.get("stages", []) if stage["name"] != "head"]
    examples_dir = os.path.join(output_dir, EXAMPLES_DIR)
    return dict(
        **identity,
        labels=labels,
        splits=config.get("splits", {}),
        preprocessing=config.get("preprocessing", {}),
        data=config["data"],
        finetune=config.get("finetune", {}),
        peft=config.get("peft"),
        accuracy=_fmt(report["accuracy"]),
        macro_f1=_fmt(report["macro_f1"]),
        accuracy_ci=f"{ci_low:.3f}–{ci_high:.3f}",
        num_test=num_test,
        per_class=[
            {"label": name, **{k: _fmt(v) for k, v in metrics.items() if k != "support"}, "support": metrics["support"]}
            for name, metrics in report["per_class"].items()
        ],
        confusion_matrix=report["confusion_matrix"],
        confusion_matrix_image=CONFUSION_MATRIX_FILE,
        lr_schedule_image=LR_SCHEDULE_FILE,
        training_curves_image=TRAINING_CURVES_FILE,
        timeline=_timeline_rows(schedule, stages),
        lr_rows=_lr_rows(schedule, stages, freeze_events),
        epochs=[record["epoch"] for record in schedule.get("epochs", [])],
        freeze_events=[e for e in freeze_events if e.get("unfrozen")],
        stages=config.get("stages", []),
        recipe=recipe_context(config.get("recipe")),
        truncation=config.get("truncation"),
        stage_probe=((config.get("recipe") or {}).get("measurements") or {}).get("stage_probe"),
        baseline=_baseline_context(report.get("baseline"), report),
        selection=_selection_context(config.get("model_selection")),
        seeds=config.get("seeds", {}),
        versions=config.get("versions", {}),
        command=user_command(config.get("command", [])),
        head_lr=head_learning_rate(config.get("finetune", {}), config.get("training", {})),
        model_ref_shown=redact_local_paths(identity["model_ref"]),
        best_checkpoint=config.get("best_checkpoint"),
        best_validation_macro_f1=_fmt(config.get("best_validation_macro_f1")),
        epochs_run=config.get("epochs_run"),
        training=config.get("training", {}),
        full_config=json.dumps(redact_local_paths({**config, "command": user_command(config.get("command", []))}), indent=2, default=str),
        examples=sorted(os.listdir(examples_dir)) if os.path.isdir(examples_dir) else [],
        examples_dir=EXAMPLES_DIR,
        **after_training_context(output_dir, report, config),  # calibration, mistakes, TTA, ONNX export
        **audit_context(output_dir, config, report),  # the data audit (data_audit.json)
    )


def build_model_card(
    output_dir: str,
    *,
    repo_id: str | None = None,
    license: str | None = None,
    template_path: str | os.PathLike | None = None,
    write_plots: bool = True,
) -> Any:
    """Builds the model card of a finished run from its records.

    Args:
        output_dir (`str`):
            The run's output directory (holding `run_config.json`, `schedule.json`, `test_report.json`).
        repo_id (`str`, *optional*, defaults to `None`):
            Hub repository the model lives in (usage snippet, model-index name). Default: `--hub-model-id` of the run,
            else the output directory's name with a local-path snippet.
        license (`str`, *optional*, defaults to `None`):
            Licence id for the metadata. Default: the run's `--license`, else the base model's stated licence, else
            `"other"`.
        template_path (`str` or `os.PathLike`, *optional*, defaults to `None`):
            A Jinja template; default the packaged `templates/model_card.md.jinja` (see `default_template_path`).
        write_plots (`bool`, *optional*, defaults to `True`):
            (Re)draw `lr_schedule.png` and `training_curves.png` into `output_dir`.

    Returns:
        `huggingface_hub.ModelCard`: the card (not yet saved).
    """
    from huggingface_hub import ModelCard

    config = _read_json(output_dir, RUN_CONFIG_FILE)
    report = _read_json(output_dir, TEST_REPORT_FILE)
    schedule = _read_json(output_dir, SCHEDULE_FILE, required=False)
    if write_plots and schedule.get("epochs"):  # a linear probe has no epochs: no empty plots
        plot_lr_schedule(schedule, config.get("freeze_events", []), os.path.join(output_dir, LR_SCHEDULE_FILE))
        best = str(config.get("best_checkpoint") or "").rpartition("checkpoint-")[2]
        plot_training_curves(
            schedule, os.path.join(output_dir, TRAINING_CURVES_FILE), config.get("freeze_events", []),
            int(best) if best.isdigit() else None, (report.get("baseline") or {}).get("macro_f1"),
        )
    identity = _card_identity(config, output_dir, repo_id, license)
    context = _card_context(output_dir, config, report, schedule, identity)
    template = Path(template_path) if template_path else default_template_path()
    return ModelCard.from_template(_card_metadata(config, report, identity), template_path=str(template), **context)


def write_model_card(output_dir: str, **kwargs: Any) -> str:
    """Builds the card (see `build_model_card`) and writes it as `output_dir/README.md`; returns the path."""
    card = build_model_card(output_dir, **kwargs)
    path = os.path.join(output_dir, CARD_FILE)
    card.save(path)
    logger.info("Model card written to %s", path)
    return path

"""The model card: generated after every run from the run's own records, valid Hub metadata, plots, CLI."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from conftest import SHARED, copy_run
from hf_finetune.cli.main import main
from hf_finetune.sharing.model_card import build_model_card, wilson_interval


def _card(out) -> str:
    return (out / "README.md").read_text()


def check_card_matches_records(out) -> None:
    """Every check of the issue's "done means", shared by the tiny-model and the real-model tests."""
    report = json.loads((out / "test_report.json").read_text())
    config = json.loads((out / "run_config.json").read_text())
    schedule = json.loads((out / "schedule.json").read_text())
    text = _card(out)

    card = ModelCard.load(out / "README.md")  # metadata parses as a Hub model card
    data = card.data
    assert data.pipeline_tag == "image-classification" and data.library_name == "transformers"
    assert data.license and "image-classification" in data.tags
    results = {r.metric_type: r for r in data.eval_results}
    assert set(results) == {"accuracy", "f1"}
    assert results["accuracy"].metric_value == pytest.approx(report["accuracy"])
    assert results["f1"].metric_value == pytest.approx(report["macro_f1"])
    assert results["f1"].metric_args == {"average": "macro"} and results["accuracy"].dataset_split == "test"

    # Freeze timeline and per-group LR tables, one row per recorded epoch / stage.
    assert "| epoch | steps | trainable | train loss | val loss | val accuracy | val macro-F1 |" in text
    for record in schedule["epochs"]:
        assert re.search(rf"^\| {record['epoch']} \| {record['first_step']}–{record['last_step']} \|", text, re.M)
    lr_header = "| stage | trainable from | peak LR |" + "".join(f" epoch {r['epoch']} |" for r in schedule["epochs"])
    assert lr_header in text
    for stage in config["stages"]:
        assert re.search(rf"^\| {re.escape(stage['name'])} \| ", text, re.M), stage["name"]
    for event in config["freeze_events"][1:]:
        assert f"epoch {event['epoch']} (step {event['step']}, {event['reason']}): {', '.join(event['unfrozen'])}" in text
    # Seeds, per-class table, images, full config.
    assert f"`seed={config['seeds']['seed']}`" in text
    for label, metrics in report["per_class"].items():
        assert f"| {label} | {metrics['precision']:.4f} | {metrics['recall']:.4f} | {metrics['f1']:.4f} | {metrics['support']} |" in text
    for image in ("confusion_matrix.png", "lr_schedule.png", "training_curves.png"):
        assert f"]({image})" in text and (out / image).stat().st_size > 5000
    assert '"freeze_events"' in text and 'pipeline("image-classification"' in text


def test_card_is_written_after_a_run_and_matches_its_records(finished_run_dir):
    check_card_matches_records(finished_run_dir)
    text = _card(finished_run_dir)
    assert "It sorts an image into one of 3 classes: `cat`, `dog`, `fish`." in text
    assert "## Limitations" in text and "### Linear-probe baseline" not in text  # --baseline false
    config = json.loads((finished_run_dir / "run_config.json").read_text())
    assert ("### Recipe chosen by the advisor" in text) == bool(config.get("recipe"))
    # A local base checkpoint is no Hub id: the metadata leaves base_model out rather than naming a path.
    assert ModelCard.load(finished_run_dir / "README.md").data.base_model is None


def test_card_renders_advisor_recipe_and_baseline_when_present(finished_run_dir, tmp_path):
    out = copy_run(finished_run_dir, tmp_path / "run")
    config = json.loads((out / "run_config.json").read_text())
    config["recipe"] = {"case": "small data, similar domain", "strategy": "head_then_unfreeze", "why": ["245 images", "kNN accuracy 0.91"]}
    (out / "run_config.json").write_text(json.dumps(config))
    report = json.loads((out / "test_report.json").read_text())
    report["baseline"] = {"accuracy": 0.5, "macro_f1": 0.4, "method": "logistic regression on frozen features"}
    (out / "test_report.json").write_text(json.dumps(report))

    assert main(["card", str(out)]) == 0
    text = _card(out)
    assert "### Recipe chosen by the advisor" in text
    assert "- kNN accuracy 0.91" in text and "| case | small data, similar domain |" in text
    assert "### Linear-probe baseline" in text
    assert f"| test accuracy | 0.5000 | {report['accuracy']:.4f} |" in text
    assert f"| test macro-F1 | 0.4000 | {report['macro_f1']:.4f} |" in text
    assert "- method: logistic regression on frozen features" in text


def test_card_command_regenerates_card_and_plots_with_repo_id_and_license(finished_run_dir, tmp_path, capsys):
    out = copy_run(finished_run_dir, tmp_path / "run")
    for name in ("README.md", "lr_schedule.png", "training_curves.png"):
        (out / name).unlink()
    assert main(["card", str(out), "--repo-id", "me/ants-vs-bees", "--license", "mit"]) == 0
    assert "model card ->" in capsys.readouterr().out
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "mit" and card.data.model_name == "ants-vs-bees"
    assert 'pipeline("image-classification", model="me/ants-vs-bees")' in card.text
    assert (out / "lr_schedule.png").is_file() and (out / "training_curves.png").is_file()


def test_license_comes_from_the_base_models_card(finished_run_dir, tmp_path, tiny_checkpoint):
    out = copy_run(finished_run_dir, tmp_path / "run")
    base = copy_run(Path(tiny_checkpoint("vit")), tmp_path / "base")
    (base / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# base\n")
    config = json.loads((out / "run_config.json").read_text())
    config["model"]["model"] = str(base)
    (out / "run_config.json").write_text(json.dumps(config))
    assert build_model_card(str(out), write_plots=False).data.license == "cc-by-4.0"
    (base / "README.md").unlink()
    assert build_model_card(str(out), write_plots=False).data.license == "other"


def test_card_of_a_directory_without_records_names_the_missing_file(tmp_path, capsys):
    assert main(["card", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"`{tmp_path / 'run_config.json'}` is missing" in err and "finished run" in err


def test_wilson_interval():
    low, high = wilson_interval(143, 153)
    assert low < 143 / 153 < high and high - low < 0.1
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.slow
def test_default_run_on_real_assets_writes_a_valid_card(tmp_path):
    """The issue's main check on efficientnet_lite0 + hymenoptera (about 2 minutes on 2 CPU cores)."""
    out = tmp_path / "ants"
    start = time.time()
    argv = ["--model", str(SHARED / "models/efficientnet_lite0"), "--dataset", str(SHARED / "data/hymenoptera"), "--output-dir", str(out), "--disable-tqdm", "true"]
    assert main(argv) == 0
    print(f"efficientnet_lite0 run: {time.time() - start:.0f} s")
    check_card_matches_records(out)
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "apache-2.0"  # from the base model's own card
    assert "timm" in card.data.tags

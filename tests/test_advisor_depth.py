"""The advisor's depth choice: truncation at the stage probe's best block when it beats the top stage by more than the
CV noise on small data, full depth otherwise; end to end, the cut is made after the feature pass and recorded."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial

import numpy as np
import pytest

from conftest import FAST_RUN_FLAGS, write_image_folder
from helpers import assert_mentions, measured
from hf_finetune.cli.main import main
from hf_finetune.probing.stage_probe import MIN_CLEAR_GAIN, StageProbe, StageScore
from hf_finetune.recipe.advisor import plan_recipe, propose_truncation

NAMES = ["embeddings", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "norm"]


def curve(folds: dict[str, list[float]]) -> dict:
    stages = [
        StageScore(name, index, 16, float(np.mean(scores)), float(np.std(scores, ddof=1)), scores, 1.0)
        for index, (name, scores) in enumerate(folds.items())
    ]
    return StageProbe(stages=stages, folds=len(stages[0].fold_scores), seed=0).to_dict()


CLEAR = curve({
    "embeddings": [0.60, 0.62, 0.61, 0.59, 0.60],
    "blocks.0": [0.80, 0.82, 0.79, 0.81, 0.80],
    "blocks.1": [0.90, 0.92, 0.91, 0.89, 0.93],  # best: +0.08 over the top on every fold
    "blocks.2": [0.86, 0.88, 0.87, 0.85, 0.86],
    "blocks.3": [0.84, 0.85, 0.83, 0.82, 0.84],
    "norm": [0.82, 0.84, 0.83, 0.81, 0.85],
})
NOISY = curve({
    "embeddings": [0.60, 0.62, 0.61, 0.59, 0.60],
    "blocks.0": [0.80, 0.82, 0.79, 0.81, 0.80],
    "blocks.1": [0.93, 0.84, 0.91, 0.82, 0.90],  # best on average (+0.02) but not on every fold
    "blocks.2": [0.86, 0.85, 0.87, 0.85, 0.86],
    "blocks.3": [0.86, 0.85, 0.85, 0.84, 0.86],
    "norm": [0.85, 0.86, 0.84, 0.86, 0.82],
})


# The backbone that CLEAR and NOISY probe has five unfreeze units.
five_units = partial(measured, backbone_units=5)


def test_truncation_when_the_best_block_clearly_beats_the_top():
    plan = plan_recipe(five_units(stage_probe=CLEAR))
    choice = plan.choices["truncate_after"]
    assert choice.value == "blocks.1" and choice.source == "advisor"
    assert_mentions(choice.reason, "best block blocks.1 0.910", "top norm 0.830", "+0.080", "cut after blocks.1", "3 stage(s)")
    # The unfreeze schedule is planned over the kept stages (embeddings, blocks.0, blocks.1 = 3 units).
    assert plan.value("top_k") == 1
    assert plan.value("stages_per_unfreeze") * (plan.value("num_train_epochs") // 2) >= 3
    assert plan.to_dict()["measurements"]["stage_probe"]["best"] == "blocks.1"


def test_no_truncation_within_the_noise_for_large_data_or_without_a_probe():
    value, reason = propose_truncation(five_units(stage_probe=NOISY))
    assert value == "none"
    assert_mentions(reason, "CV noise", "2 SE", "0.01")
    value, reason = propose_truncation(five_units(per_class=800, stage_probe=CLEAR))
    assert value == "none"
    assert_mentions(reason, "800 images per class")
    value, reason = propose_truncation(five_units())
    assert value == "none"
    assert_mentions(reason, "full depth", "no stage probe")
    # The top stage being the best is never a reason to cut.
    top_best = {**CLEAR, "stages": [*CLEAR["stages"][:-1], {**CLEAR["stages"][-1], "macro_f1_mean": 0.95, "fold_scores": [0.95] * 5}]}
    assert propose_truncation(five_units(stage_probe=top_best))[0] == "none"


def test_the_flag_wins():
    plan = plan_recipe(five_units(stage_probe=CLEAR), fixed={"truncate_after": "none"})
    assert plan.choices["truncate_after"].value == "none" and plan.choices["truncate_after"].source == "flag"
    plan = plan_recipe(five_units(stage_probe=CLEAR), fixed={"truncate_after": "auto"})  # auto = the advisor decides
    assert plan.choices["truncate_after"].value == "blocks.1"


def run_with_rigged_stage_probe(kind, scores, tiny_checkpoint, tmp_path, monkeypatch):
    """`--truncate-after auto --baseline true` on a tiny `kind` model whose stage probe reports `scores` (one per
    stage, checked against the real probe's stages); returns the output directory."""
    import hf_finetune.recipe.prepare as recipe

    real = recipe.probe_stages

    def rigged(stage_features, num_labels, **kwargs):
        probe = real(stage_features, num_labels, **kwargs)
        assert [s.name for s in probe.stages] == list(scores)
        stages = [replace(s, macro_f1_mean=scores[s.name], fold_scores=[scores[s.name]] * len(s.fold_scores)) for s in probe.stages]
        return replace(probe, stages=stages)

    monkeypatch.setattr(recipe, "probe_stages", rigged)
    folder = write_image_folder(tmp_path / "images", per_class=10)
    out = tmp_path / "out"
    argv = ["--model", tiny_checkpoint(kind), "--dataset", str(folder), "--output-dir", str(out), *FAST_RUN_FLAGS]
    assert main([*argv, "--truncate-after", "auto", "--baseline", "true"]) == 0
    return out


def test_advisor_cut_end_to_end(tiny_checkpoint, tmp_path, monkeypatch):
    """`--truncate-after auto`: the stage probe runs on the feature pass, the advisor cuts, the run trains the cut
    model, and run_config.json / the card record the curve and the reason."""
    # One entry per stage of the tiny ViT; blocks.0 rigged best.
    out = run_with_rigged_stage_probe("vit", {"embeddings": 0.5, "blocks.0": 0.9, "blocks.1": 0.7, "norm": 0.6}, tiny_checkpoint, tmp_path, monkeypatch)
    config = json.loads((out / "run_config.json").read_text())
    choice = config["recipe"]["choices"]["truncate_after"]
    assert choice["value"] == "blocks.0" and "cut after blocks.0" in choice["reason"]
    assert [s["name"] for s in config["recipe"]["measurements"]["stage_probe"]["stages"]] == ["embeddings", "blocks.0", "blocks.1", "norm"]
    assert config["truncation"]["after"] == "blocks.0" and config["finetune"]["truncate_after"] == "blocks.0"
    assert [s["name"] for s in config["stages"]] == ["embeddings", "blocks.0", "norm", "head"]
    # The baseline and the probe head were fitted on the truncated model's features (a separate cache entry).
    assert config["features"]["full_depth"]["model_key"] != config["features"]["model_key"]
    card = (out / "README.md").read_text()
    assert "cut after stage `blocks.0`" in card and "| blocks.0 | 32 | 0.9000 ± " in card and choice["reason"] in card


def test_an_advisor_cut_of_a_cnn_reuses_the_captured_stage(tiny_checkpoint, tmp_path, monkeypatch):
    """A CNN's head reads the cut stage's pooled output, which the full-depth pass captured: no second pass."""
    scores = {"embeddings": 0.5, "blocks.0": 0.6, "blocks.1": 0.9, "blocks.2": 0.7, "blocks.3": 0.6}
    out = run_with_rigged_stage_probe("resnet", scores, tiny_checkpoint, tmp_path, monkeypatch)
    config = json.loads((out / "run_config.json").read_text())
    assert config["truncation"]["after"] == "blocks.1"
    features = config["features"]
    assert features["from_stage"] == "blocks.1" and features["computed"] == 0 and features["feature_dim"] == config["truncation"]["feature_dim"]
    assert features["full_depth"]["computed"] == sum(features["images"].values())


def test_strategy_flag_without_truncate_after_skips_the_probe(tiny_checkpoint, tmp_path):
    folder = write_image_folder(tmp_path / "images", per_class=10)
    out = tmp_path / "out"
    argv = ["--model", tiny_checkpoint("resnet"), "--dataset", str(folder), "--output-dir", str(out), *FAST_RUN_FLAGS]
    assert main([*argv, "--num-train-epochs", "1"]) == 0
    config = json.loads((out / "run_config.json").read_text())
    assert config["recipe"]["measurements"]["stage_probe"] is None
    assert config["recipe"]["choices"]["truncate_after"]["value"] == "none" and config["truncation"] is None


@pytest.mark.parametrize("kind", ["resnet"])
def test_default_auto_run_records_the_stage_probe(kind, tiny_checkpoint, tmp_path):
    folder = write_image_folder(tmp_path / "images", per_class=8)
    out = tmp_path / "out"
    assert main(["--model", tiny_checkpoint(kind), "--dataset", str(folder), "--output-dir", str(out), "--disable-tqdm", "true", "--num-train-epochs", "1"]) == 0
    config = json.loads((out / "run_config.json").read_text())
    probe = config["recipe"]["measurements"]["stage_probe"]
    assert [s["name"] for s in probe["stages"]] == ["embeddings", "blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert config["recipe"]["choices"]["truncate_after"]["reason"]
    assert "Stage probe (linear probe on each frozen backbone stage" in (out / "README.md").read_text()


def test_a_top_stage_clearly_outdone_by_a_block_makes_the_data_different_whatever_the_knn_lift():
    similar = five_units(knn_bacc=0.95)  # k-NN lift 0.90 on 2 classes: "similar" by the lift alone
    assert similar.domain == "similar" and plan_recipe(similar).value("strategy") == "linear_probe"
    outdone = five_units(knn_bacc=0.95, stage_probe=CLEAR)
    assert outdone.top_stage_outdone and outdone.domain == "different"
    plan = plan_recipe(outdone)
    assert plan.case == "small + different" and plan.value("strategy") == "head_then_unfreeze"
    assert_mentions(plan.choices["strategy"].reason, "lift over chance 0.90", "different all the same", "best block blocks.1")
    # Without a k-NN measurement (too few images per class) colour images count as similar; the stage probe still
    # overrules that, and the reason says so.
    unmeasured = plan_recipe(five_units(knn_bacc=None, stage_probe=CLEAR))
    assert unmeasured.case == "small + different"
    assert_mentions(unmeasured.choices["strategy"].reason, "lift over chance n/a", "different all the same")
    # Weaker evidence than a cut needs: NOISY's block is ahead by 1.3 SE, too little to truncate, enough to fine-tune.
    assert propose_truncation(five_units(knn_bacc=0.95, stage_probe=NOISY))[0] == "none"
    assert five_units(knn_bacc=0.95, stage_probe=NOISY).domain == "different"
    # A block ahead within one standard error (or a top stage that is the best) leaves the k-NN call standing.
    top = [0.85, 0.86, 0.84, 0.86, 0.82]
    within = curve({"embeddings": [0.6] * 5, "blocks.0": [0.7] * 5, "blocks.1": [0.90, 0.81, 0.88, 0.82, 0.83],
                    "blocks.2": [x - 0.01 for x in top], "blocks.3": [x - 0.02 for x in top], "norm": top})
    gain = five_units(stage_probe=within).block_gain
    assert 0 < gain.diff < gain.se  # +0.002, SE 0.02
    assert five_units(knn_bacc=0.95, stage_probe=within).domain == "similar"


def test_a_lead_under_the_floor_leaves_the_knn_call_whatever_its_standard_errors():
    # hymenoptera / mobilenet_v2 seed 2: blocks.5 ahead of the top by +0.0097 at 1.6 SE on one split (+0.003 over
    # three shuffles): under MIN_CLEAR_GAIN, so the k-NN lift's "similar" stands and the probe is kept.
    top = [0.95, 0.97, 0.96, 0.94, 0.98]
    flat = {"embeddings": [0.6] * 5, "blocks.0": [0.7] * 5, "blocks.1": [0.8] * 5, "blocks.2": [0.85] * 5}
    under = curve({**flat, "blocks.3": [0.965, 0.975, 0.97, 0.95, 0.985], "norm": top})  # +0.008 on every fold
    gain = five_units(stage_probe=under).block_gain
    assert 0 < gain.diff < MIN_CLEAR_GAIN and gain.diff > 4 * gain.se
    assert five_units(knn_bacc=0.95, stage_probe=under).domain == "similar"
    assert plan_recipe(five_units(knn_bacc=0.95, stage_probe=under)).value("strategy") == "linear_probe"
    # The same folds, each 0.004 higher: at the floor, the stage probe makes the data "different".
    at = curve({**flat, "blocks.3": [x + 0.004 for x in [0.965, 0.975, 0.97, 0.95, 0.985]], "norm": top})
    assert five_units(knn_bacc=0.95, stage_probe=at).domain == "different"

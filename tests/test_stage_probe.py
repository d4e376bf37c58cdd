"""The stage probe: one forward pass gives every backbone stage's pooled output (cached per stage), a cross-validated
linear probe scores each stage, and `python -m hf_finetune probe` writes the curve."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import assert_mentions
from hf_finetune import DataArguments, load_model_and_processor, load_splits, split_stages
from hf_finetune.cli.main import main
from hf_finetune.probing.features import FeatureSet, compute_split_features
from hf_finetune.backbones.taps import extract_features
from hf_finetune.probing.stage_probe import PROBE_REPEATS, StageProbe, StageScore, best_block_gain, paired_difference, probe_stages


def _features(kind, tiny_checkpoint, image_folder, cache_dir, **kwargs):
    splits = load_splits(DataArguments(dataset=str(image_folder)), seed=0)
    model, processor = load_model_and_processor(tiny_checkpoint(kind), splits.id2label)
    features = compute_split_features(
        model, processor, splits, model_name_or_path=tiny_checkpoint(kind), cache_dir=str(cache_dir), stages=True, **kwargs
    )
    return splits, model, processor, features


@pytest.mark.parametrize("kind", ["vit", "resnet", "mobilenet_v2", "timm", "swin", "convnext"])
def test_one_entry_per_backbone_stage(kind, tiny_checkpoint, image_folder, tmp_path):
    splits, model, _, features = _features(kind, tiny_checkpoint, image_folder, tmp_path)
    backbone = [stage.name for stage in split_stages(model).backbone]
    assert list(features.stages) == backbone
    for feature_set in features.stages.values():
        assert feature_set.features.shape[0] == len(splits.train)
        assert np.array_equal(feature_set.labels, features.train.labels)
    probe = probe_stages(features.stages, len(splits.labels), folds=3, seed=0)
    assert [(s.name, s.index) for s in probe.stages] == [(name, i) for i, name in enumerate(backbone)]
    for score in probe.stages:
        assert score.feature_dim == features.stages[score.name].features.shape[1]
        assert len(score.fold_scores) == 3 * PROBE_REPEATS and 0.0 <= score.macro_f1_mean <= 1.0
    assert probe.top.name == backbone[-1]


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_top_stage_features_are_what_the_head_reads(kind, tiny_checkpoint, image_folder, tmp_path):
    # ViT: CLS token of the final layernorm; ResNet: global average of the last stage's map.
    splits, model, processor, features = _features(kind, tiny_checkpoint, image_folder, tmp_path)
    top = split_stages(model).backbone[-1].name
    assert np.allclose(features.stages[top].features, features.train.features, atol=1e-5)


def test_stage_features_are_cached_per_stage(tiny_checkpoint, image_folder, tmp_path):
    _features("resnet", tiny_checkpoint, image_folder, tmp_path)
    splits, model, processor, again = _features("resnet", tiny_checkpoint, image_folder, tmp_path)
    assert again.computed == 0
    # A head-only pass of the same model reuses the head cache written by the stage pass.
    head_only = compute_split_features(model, processor, splits, model_name_or_path=tiny_checkpoint("resnet"), cache_dir=str(tmp_path))
    assert head_only.computed == 0 and head_only.stages == {}
    images = list(splits.train.with_format(None)["image"])
    assert np.allclose(head_only.train.features, extract_features(model, processor, images), atol=1e-5)


def test_probe_prefers_the_stage_that_separates_the_classes():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 30)
    separable = rng.normal(size=(60, 4)) + labels[:, None] * 3.0
    noise = rng.normal(size=(60, 4))
    stages = {"blocks.0": FeatureSet(separable, labels), "blocks.1": FeatureSet(noise, labels)}
    probe = probe_stages(stages, 2, folds=5, seed=0)
    assert probe.best.name == "blocks.0" and probe.top.name == "blocks.1"
    assert probe.best.macro_f1_mean > 0.9 > 0.75 > probe.top.macro_f1_mean
    diff, se = paired_difference(probe.best, probe.top)
    assert diff == pytest.approx(np.mean(np.subtract(probe.best.fold_scores, probe.top.fold_scores)))
    assert se > 0


def test_repeated_folds_start_with_the_single_split_and_keep_its_error_scale():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 20)
    stages = {name: FeatureSet(rng.normal(size=(60, 6)) + labels[:, None] * scale, labels) for name, scale in (("blocks.0", 0.8), ("norm", 0.5))}
    # One C, so that the first shuffle's folds score the same as the single split's (C is chosen over all folds).
    single = probe_stages(stages, 3, folds=5, repeats=1, seed=3, c_grid=(1.0,))
    repeated = probe_stages(stages, 3, folds=5, repeats=3, seed=3, c_grid=(1.0,))
    assert repeated.repeats == 3 and repeated.folds == 5
    for one, many in zip(single.stages, repeated.stages):
        assert len(many.fold_scores) == 15 and many.fold_scores[:5] == one.fold_scores
        assert many.fold_scores[5:10] != one.fold_scores  # another shuffle
    # The advisor's single split is unchanged by the move to RepeatedStratifiedKFold: its first shuffle is the
    # StratifiedKFold(shuffle=True) split of the same seed.
    from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold

    zeros = np.zeros(len(labels))
    first = list(RepeatedStratifiedKFold(n_splits=5, n_repeats=3, random_state=3).split(zeros, labels))[:5]
    alone = list(StratifiedKFold(5, shuffle=True, random_state=3).split(zeros, labels))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, alone))
    # The error of the lead is one 5-fold split's, s / sqrt(5), not shrunk by the repeats (s / sqrt(15)).
    diffs = np.subtract(repeated.stages[0].fold_scores, repeated.stages[1].fold_scores)
    gain = best_block_gain(repeated)
    assert gain.diff == pytest.approx(diffs.mean())
    assert gain.se == pytest.approx(diffs.std(ddof=1) / np.sqrt(5))
    assert "5-fold CV x3" in gain.describe()
    # A record written before repeats existed reads as one split, its error over all its folds.
    payload = single.to_dict()
    del payload["repeats"]
    old = StageProbe.from_dict(payload)
    assert old.repeats == 1 and best_block_gain(old).se == pytest.approx(best_block_gain(single).se)
    assert repeated.to_dict()["repeats"] == 3


def test_probe_needs_two_images_per_class():
    labels = np.array([0, 0, 0, 1])
    assert probe_stages({"blocks.0": FeatureSet(np.ones((4, 2)), labels)}, 2) is None


def test_paired_difference_is_over_shared_folds():
    a = StageScore("blocks.0", 1, 4, 0.9, 0.0, [0.9, 0.92, 0.88], 1.0)
    b = StageScore("norm", 2, 4, 0.8, 0.0, [0.8, 0.82, 0.78], 1.0)
    diff, se = paired_difference(a, b)
    assert diff == pytest.approx(0.1) and se == pytest.approx(0.0, abs=1e-12)


def test_probe_command_writes_json_and_plot(tiny_checkpoint, image_folder, tmp_path, capsys):
    out = tmp_path / "probe"
    argv = ["probe", "--model", tiny_checkpoint("mobilenet_v2"), "--dataset", str(image_folder), "--output-dir", str(out), "--folds", "3"]
    assert main(argv) == 0
    payload = json.loads((out / "stage_probe.json").read_text())
    names = [stage["name"] for stage in payload["stages"]]
    assert names[0] == "embeddings" and names[-1] == "norm" and len(names) == 8
    assert set(payload["stages"][0]) == {"name", "index", "feature_dim", "macro_f1_mean", "macro_f1_std", "fold_scores", "C"}
    assert payload["best"] in names and payload["top"] == "norm" and payload["folds"] == 3
    assert payload["model"] == tiny_checkpoint("mobilenet_v2") and payload["features"]["images"]["train"] > 0
    assert (out / "stage_probe.png").stat().st_size > 1000
    assert "hf_finetune probe: best stage" in capsys.readouterr().out
    # The second run reads every stage from the cache.
    assert main([*argv[:5], "--output-dir", str(tmp_path / "again"), "--folds", "3"]) == 0
    assert json.loads((tmp_path / "again" / "stage_probe.json").read_text())["features"]["computed"] == 0


def test_probe_command_errors(tiny_checkpoint, image_folder, tmp_path, capsys):
    argv = ["probe", "--model", tiny_checkpoint("resnet"), "--dataset", str(image_folder), "--output-dir", str(tmp_path)]
    assert main([*argv, "--folds", "1"]) == 2
    assert_mentions(capsys.readouterr().err, "`--folds`", "got 1", "at least 2")
    assert main([*argv, "--repeats", "0"]) == 2
    assert_mentions(capsys.readouterr().err, "`--repeats`", "got 0", "at least 1")


def test_stage_pooling_of_token_models_follows_the_head(tiny_checkpoint, image_folder, tmp_path):
    from hf_finetune.backbones.split import token_pooling
    from hf_finetune.backbones.taps import pool_stage_output

    splits = load_splits(DataArguments(dataset=str(image_folder)), seed=0)
    pools = {kind: token_pooling(load_model_and_processor(tiny_checkpoint(kind), splits.id2label)[0]) for kind in ("vit", "swin", "beit", "timm_vit", "timm")}
    assert pools == {"vit": "cls", "swin": "mean", "beit": "mean", "timm_vit": "cls", "timm": "mean"}
    tokens = torch.arange(24, dtype=torch.float32).reshape(1, 4, 6)
    assert torch.equal(pool_stage_output(tokens, "cls"), tokens[:, 0])
    assert torch.equal(pool_stage_output(tokens, "mean"), tokens.mean(1))
    maps = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    assert pool_stage_output(maps).shape == (2, 3)
    assert torch.equal(pool_stage_output(maps.permute(0, 2, 3, 1), channels_last=True), pool_stage_output(maps))

"""Stratified k-fold with a t-interval, and reproducibility: the same --seed gives the same test report."""

from __future__ import annotations

import json

import pytest
from scipy import stats

from hf_finetune import DataArguments, load_splits
from hf_finetune.cli.main import main
from hf_finetune.evaluation.metrics import without_timing
from hf_finetune.evaluation.kfold import kfold_splits, t_interval


def test_t_interval():
    ci = t_interval([1.0, 2.0, 3.0])
    half = stats.t.ppf(0.975, 2) * 1.0 / 3**0.5
    assert ci["mean"] == 2.0 and ci["std"] == 1.0 and ci["half_width"] == pytest.approx(half)
    assert (ci["low"], ci["high"]) == pytest.approx((2 - half, 2 + half))
    with pytest.raises(ValueError, match="at least 2"):
        t_interval([0.5])


def test_folds_are_stratified_cover_train_plus_validation_and_keep_the_test_split(image_folder):
    splits = load_splits(DataArguments(dataset=str(image_folder)), seed=0)
    folds = kfold_splits(splits, 3, seed=0)
    pool = len(splits.train) + len(splits.validation)
    assert len(folds) == 3
    validation_sizes = [len(f.validation) for f in folds]
    assert sum(validation_sizes) == pool and all(len(f.train) + len(f.validation) == pool for f in folds)
    for fold in folds:
        counts = fold.counts()["validation"]
        assert max(counts.values()) - min(counts.values()) <= 1  # stratified
        assert fold.test["label"] == splits.test["label"] and len(fold.test) == len(splits.test)
    with pytest.raises(ValueError, match="`--kfold` 20 needs at least 20"):
        kfold_splits(splits, 20, seed=0)


def test_kfold_run_writes_mean_and_interval(tiny_checkpoint, image_folder, tmp_path, capsys):
    out = tmp_path / "kfold"
    argv = ["--model", tiny_checkpoint("vit"), "--dataset", str(image_folder), "--output-dir", str(out), "--kfold", "2",
            "--strategy", "linear_probe", "--disable-tqdm", "true"]
    assert main(argv) == 0
    assert "2-fold test macro-F1" in capsys.readouterr().out
    report = json.loads((out / "kfold_report.json").read_text())
    assert report["k"] == 2 and len(report["folds"]) == 2 and "test split is held out" in report["design"]
    f1 = report["test_macro_f1"]
    assert f1["low"] <= f1["mean"] <= f1["high"] and f1["n"] == 2
    assert f1["mean"] == pytest.approx(sum(f["test_macro_f1"] for f in report["folds"]) / 2)
    for fold in report["folds"]:
        assert (out / f"fold-{fold['fold']}" / "test_report.json").is_file()


def test_same_seed_same_test_report(tiny_checkpoint, image_folder, tmp_path):
    def run(name: str, seed: str) -> dict:
        out = tmp_path / name
        argv = ["--model", tiny_checkpoint("resnet"), "--dataset", str(image_folder), "--output-dir", str(out),
                "--strategy", "head_then_unfreeze", "--num-train-epochs", "2", "--augmentation", "strong", "--mixup", "on",
                "--head-dropout", "0.2", "--per-device-train-batch-size", "8", "--seed", seed, "--disable-tqdm", "true"]
        assert main(argv) == 0
        config = json.loads((out / "run_config.json").read_text())
        assert config["seeds"]["seed"] == int(seed)
        return json.loads((out / "test_report.json").read_text())

    first, second = run("a", "3"), run("b", "3")
    assert "seconds" in first["baseline"] and "seconds" not in without_timing(first)["baseline"]
    assert json.dumps(without_timing(first), sort_keys=True) == json.dumps(without_timing(second), sort_keys=True)

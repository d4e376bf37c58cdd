"""On the real assets (slow, `pytest -m slow`): the advisor separates hymenoptera (close to ImageNet) from
pneumoniamnist (far from it), and the cached-feature probe beats chance by a wide margin on both."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SHARED
from hf_finetune import DataArguments, load_splits, measure_dataset, plan_recipe
from hf_finetune.config.sources import ModelArguments
from hf_finetune.probing.linear_probe import baseline_report
from hf_finetune.probing.features import compute_split_features
from hf_finetune.training.callbacks.freezing import unfreeze_units
from hf_finetune.backbones.split import split_stages
from hf_finetune.recipe.prepare import load_model

ASSETS = SHARED if SHARED.is_dir() else Path("/work/shared")
MODEL = ASSETS / "models" / "efficientnet_lite0"


@pytest.mark.slow
@pytest.mark.parametrize(
    "dataset,case,strategy,min_probe_f1",
    [("hymenoptera", "small + similar", "linear_probe", 0.9), ("pneumoniamnist", "large + different", "full", 0.8)],
)
def test_advisor_on_real_data(dataset, case, strategy, min_probe_f1):
    path = ASSETS / "data" / dataset
    if not (MODEL / "config.json").is_file() or not path.is_dir():
        pytest.skip("real assets not available")
    splits = load_splits(DataArguments(dataset=str(path)), seed=42)
    model, processor = load_model(ModelArguments(model=str(MODEL)), splits, None, 42)
    features = compute_split_features(model, processor, splits, model_name_or_path=str(MODEL))
    measurements = measure_dataset(splits, features, len(unfreeze_units(split_stages(model))), 224, seed=42)
    plan = plan_recipe(measurements, time_budget_minutes=10)
    assert plan.case == case and plan.value("strategy") == strategy
    report, _ = baseline_report(features, splits.labels)
    assert report["macro_f1"] >= min_probe_f1

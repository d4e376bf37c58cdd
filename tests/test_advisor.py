"""The recipe advisor: the four cases of the transfer-learning heuristics, explicit flags winning, the time budget,
class imbalance and label noise; end to end, the plan recorded in run_config.json and the baseline in the report."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from hf_finetune.recipe.advisor import ADVISOR_FIELDS, plan_recipe, undecided_fields
from hf_finetune.recipe.measure import SIMILAR_LIFT

from hf_finetune.recipe.measure import LARGE_IMAGES_PER_CLASS, knn_cross_validated_accuracy
from hf_finetune.cli.main import main
from helpers import assert_mentions, measured, parse_time_error


SMALL, LARGE = 100, 1200
SIMILAR, DIFFERENT = 0.97, 0.80  # k-NN balanced accuracy on 2 classes: lift 0.94 / 0.60


def test_the_four_cases_get_four_different_strategies():
    plans = {
        (size, domain): plan_recipe(measured(n, bacc))
        for size, n in (("small", SMALL), ("large", LARGE))
        for domain, bacc in (("similar", SIMILAR), ("different", DIFFERENT))
    }
    assert {key: plan.case for key, plan in plans.items()} == {key: f"{key[0]} + {key[1]}" for key in plans}
    strategies = {key: plan.value("strategy") for key, plan in plans.items()}
    assert strategies == {
        ("small", "similar"): "linear_probe",
        ("large", "similar"): "top_k",
        ("small", "different"): "head_then_unfreeze",
        ("large", "different"): "full",
    }
    # Small + different: earlier layers train (every stage unfrozen by mid-run) from the probe head, with crops and
    # flips only (heavier augmentation moves the inputs away from what the head was fitted on), strongest dropout.
    hard = plans[("small", "different")]
    assert hard.value("augmentation") == "light" and hard.value("mixup") == "auto"
    assert hard.value("stages_per_unfreeze") * (hard.value("num_train_epochs") // 2) >= 8
    assert hard.value("head_dropout") > plans[("large", "different")].value("head_dropout")
    # LP-FT on few images: a smaller step, and the fitted probe head at the backbone's LR; more data: 3e-4, head 10x.
    assert (hard.value("learning_rate"), hard.value("head_lr_multiplier")) == (1e-4, 1.0)
    for key in (("large", "similar"), ("large", "different")):
        assert (plans[key].value("learning_rate"), plans[key].value("head_lr_multiplier")) == (3e-4, 10.0)
    # Large + similar freezes the early layers: the top third trains.
    assert plans[("large", "similar")].value("top_k") == 3
    # Linear probe: no training epochs, no augmentation.
    probe = plans[("small", "similar")]
    assert probe.value("num_train_epochs") == 0 and probe.value("augmentation") == "none"
    # Lower layers get relatively more LR when the domain differs.
    assert plans[("large", "different")].value("layer_decay") > plans[("large", "similar")].value("layer_decay")
    for plan in plans.values():
        assert set(plan.choices) == set(ADVISOR_FIELDS)  # every advisor-managed field is decided, with a reason
        assert all(choice.reason and choice.source == "advisor" for choice in plan.choices.values())
        assert "strategy" in plan.format() and plan.case in plan.format()


def test_thresholds_and_grayscale_decide_size_and_domain():
    assert measured(LARGE_IMAGES_PER_CLASS - 1, SIMILAR).size == "small"
    assert measured(LARGE_IMAGES_PER_CLASS, SIMILAR).size == "large"
    chance = 0.5
    at_threshold = chance + SIMILAR_LIFT * (1 - chance)
    assert measured(SMALL, at_threshold + 1e-6).domain == "similar"
    assert measured(SMALL, at_threshold - 1e-3).domain == "different"
    # Grayscale images (X-ray, microscopy) count as a different domain however separable the features are.
    assert measured(SMALL, 0.99, grayscale=0.9).domain == "different"
    assert plan_recipe(measured(SMALL, 0.99, grayscale=0.9)).value("strategy") == "head_then_unfreeze"


def test_explicit_flags_win_and_the_rest_is_planned_around_them():
    plan = plan_recipe(measured(SMALL, SIMILAR), fixed={"strategy": "full", "augmentation": "light", "layer_decay": None})
    assert plan.choices["strategy"].value == "full" and plan.choices["strategy"].source == "flag"
    assert plan.choices["augmentation"].value == "light" and plan.choices["augmentation"].source == "flag"
    assert "--augmentation" in plan.choices["augmentation"].reason
    # Undecided fields are still the advisor's, chosen for a model that trains.
    assert plan.choices["layer_decay"].source == "advisor"
    assert plan.value("num_train_epochs") > 0 and plan.value("mixup") != "off"
    assert plan_recipe(measured(SMALL, SIMILAR), fixed={"strategy": "auto"}).value("strategy") == "linear_probe"


def test_time_budget_sets_the_epochs_from_measured_throughput():
    m = measured(LARGE, DIFFERENT, fps=50.0)  # 2400 train + 400 validation images
    plan = plan_recipe(m, time_budget_minutes=10)
    epoch_seconds = (2400 * 2 + 400) / 50.0  # full fine-tune: forward + backward (BACKWARD_COST 1) per training image
    assert plan.estimated_epoch_seconds == pytest.approx(epoch_seconds)
    assert plan.value("num_train_epochs") == int(10 * 60 * 0.85 // epoch_seconds)
    assert "budget" in plan.choices["num_train_epochs"].reason
    # A bigger budget buys more epochs, up to the cap; no budget: the standard 10.
    assert plan_recipe(m, time_budget_minutes=30).value("num_train_epochs") > plan.value("num_train_epochs")
    assert plan_recipe(m, time_budget_minutes=10_000).value("num_train_epochs") == 12
    assert plan_recipe(m).value("num_train_epochs") == 10
    # Too little budget for MIN_FINETUNE_EPOCHS epochs of fine-tuning: the linear probe, unless the user chose.
    short = plan_recipe(m, time_budget_minutes=2)
    assert short.value("strategy") == "linear_probe" and short.value("num_train_epochs") == 0
    assert "fit the 2 min budget" in short.choices["strategy"].reason
    forced = plan_recipe(m, time_budget_minutes=2, fixed={"strategy": "full"})
    assert forced.value("strategy") == "full" and forced.value("num_train_epochs") == 1


def test_fields_only_another_strategy_reads_need_no_advisor():
    every_other = {name: 1 for name in ADVISOR_FIELDS if name not in ("top_k", "stages_per_unfreeze", "head_epochs")}
    # the depth is the advisor's only under --strategy auto, or when --truncate-after auto asks for it
    no_depth = {k: v for k, v in every_other.items() if k != "truncate_after"}
    assert undecided_fields({**no_depth, "strategy": "full"}, "full") == []
    assert undecided_fields({**no_depth, "strategy": "full"}, "full", auto_depth=True) == ["truncate_after"]
    # strategy fixed to full: top_k, stages_per_unfreeze and head_epochs are unused, nothing is left to decide
    assert undecided_fields({**every_other, "strategy": "full"}, "full") == []
    # head_then_unfreeze reads its unfreeze schedule but not top_k
    assert undecided_fields({**every_other, "strategy": "head_then_unfreeze"}, "head_then_unfreeze") == ["head_epochs", "stages_per_unfreeze"]
    assert undecided_fields({**every_other, "strategy": "top_k"}, "top_k") == ["top_k"]
    # strategy auto: every field not given is decided
    no_strategy = {k: v for k, v in every_other.items() if k != "strategy"}
    assert undecided_fields(no_strategy, "auto") == ["strategy", "head_epochs", "top_k", "stages_per_unfreeze"]


def test_imbalance_picks_a_weighted_loss_and_noisy_labels_raise_smoothing():
    balanced = measured(SMALL, DIFFERENT)
    skewed = replace(balanced, class_counts=[300, 30])
    assert plan_recipe(balanced).value("class_balance") == "none"
    assert plan_recipe(skewed).value("class_balance") == "weighted_loss"
    assert "10.0" in plan_recipe(skewed).choices["class_balance"].reason
    assert plan_recipe(balanced).value("label_smoothing_factor") == 0.1
    assert plan_recipe(balanced, noisy_labels=True).value("label_smoothing_factor") == 0.2
    assert plan_recipe(balanced, noisy_labels=True, fixed={"label_smoothing_factor": 0.0}).value("label_smoothing_factor") == 0.0


def test_knn_cross_validation_measures_separability():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    separable = np.where(labels[:, None] == 0, 1.0, -1.0) * np.ones((40, 8)) + rng.normal(0, 0.1, (40, 8))
    noise = rng.normal(0, 1, (40, 8))
    assert knn_cross_validated_accuracy(separable, labels) == 1.0
    assert knn_cross_validated_accuracy(noise, labels) < 0.8
    assert knn_cross_validated_accuracy(separable[:21], labels[:21]) is None  # one image of class 1: no CV


def _gray_folder(root, per_class=10, size=36):
    """Grayscale images whose classes differ only in texture frequency."""
    rng = np.random.default_rng(1)
    for index, name in enumerate(("normal", "sick")):
        folder = root / name
        folder.mkdir(parents=True)
        for k in range(per_class):
            x = np.linspace(0, (3 + 6 * index) * np.pi, size)
            pixels = 127 + 60 * np.sin(x)[None, :] + rng.normal(0, 20, (size, size))
            Image.fromarray(np.clip(pixels, 0, 255).astype("uint8"), mode="L").save(folder / f"{k}.png")
    return root


@pytest.mark.parametrize(
    "kind,folder_kind,expected_case,expected_strategy",
    [("vit", "colour", "small + similar", "linear_probe"), ("resnet", "gray", "small + different", "head_then_unfreeze")],
)
def test_auto_run_end_to_end(kind, folder_kind, expected_case, expected_strategy, tiny_checkpoint, image_folder, tmp_path, capsys):
    folder = image_folder if folder_kind == "colour" else _gray_folder(tmp_path / "gray")
    out = tmp_path / "out"
    argv = ["--model", tiny_checkpoint(kind), "--dataset", str(folder), "--output-dir", str(out), "--time-budget", "0.2",
            "--per-device-train-batch-size", "8", "--disable-tqdm", "true"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"hf_finetune recipe ({expected_case})" in printed and "linear-probe baseline" in printed

    config = json.loads((out / "run_config.json").read_text())
    recipe = config["recipe"]
    assert recipe["case"] == expected_case
    assert {"num_train", "class_counts", "knn_balanced_accuracy", "knn_lift_over_chance", "grayscale_fraction",
            "forward_images_per_second", "size", "domain"} <= set(recipe["measurements"])
    assert recipe["choices"]["strategy"]["value"] == expected_strategy
    assert all(choice["reason"] and choice["source"] == "advisor" for choice in recipe["choices"].values())
    # The plan was applied: the resolved arguments are the advisor's choices.
    assert config["finetune"]["strategy"] == expected_strategy
    assert config["data"]["augmentation"] == recipe["choices"]["augmentation"]["value"]
    assert config["training"]["num_train_epochs"] == recipe["choices"]["num_train_epochs"]["value"]

    report = json.loads((out / "test_report.json").read_text())
    baseline = report["baseline"]
    assert {"accuracy", "macro_f1", "per_class", "seconds"} <= set(baseline)
    assert set(baseline["per_class"]) == set(report["labels"])
    if expected_strategy == "linear_probe":
        # The saved model is the probe: same test predictions as the baseline, no training epochs.
        assert report["confusion_matrix"] == baseline["confusion_matrix"]
        assert json.loads((out / "schedule.json").read_text())["epochs"] == []
    else:
        assert config["epochs_run"] >= 1


@pytest.mark.parametrize(
    "flags,fragments",
    [
        # The flag, the bad value, and what is valid (the fix).
        (["--strategy", "guess"], ("`--strategy`", "'guess'", "'auto', 'linear_probe'")),
        (["--augmentation", "extreme"], ("`--augmentation`", "'extreme'", "'none', 'light', 'medium', 'strong'")),
        (["--mixup", "sometimes"], ("`--mixup`", "'sometimes'", "'off', 'on', 'auto'")),
        (["--class-balance", "oversample"], ("`--class-balance`", "'oversample'", "'none', 'weighted_loss', 'sampler'")),
        (["--optimizer", "adam"], ("`--optimizer`", "'adam'", "'adamw', 'radam', 'sgd', 'trainer'")),
        (["--lr-schedule", "step"], ("`--lr-schedule`", "'step'", "'trainer', 'plateau', 'one_cycle', 'cyclic'")),
        (["--time-budget", "-5"], ("`--time-budget`", "-5.0", "positive number of minutes")),
        (["--head-dropout", "1.5"], ("`--head-dropout`", "1.5", "[0, 1)")),
        (["--kfold", "1"], ("`--kfold`", "got 1", "0 (off)", "at least 2")),
        (["--l2sp", "-1"], ("`--l2sp`", "-1.0", ">= 0")),
    ],
)
def test_recipe_flags_are_checked_at_parse_time(flags, fragments, capsys, tmp_path):
    assert_mentions(parse_time_error(flags, tmp_path, capsys), *fragments)


def test_help_says_which_choices_the_advisor_makes():
    from hf_finetune.cli.main import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "auto (default: the recipe advisor" in text
    for flag in ("--layer-decay", "--augmentation", "--head-init", "--mixup", "--num-train-epochs", "--label-smoothing-factor"):
        assert flag in text
    assert text.count("[default: advisor]") >= 10  # the brief --help
    assert " ".join(build_parser(show_all=True).format_help().split()).count("chosen by the recipe advisor") >= 10


def test_a_resume_keeps_the_plan_of_the_first_attempt(tiny_checkpoint, tmp_path):
    from hf_finetune.cli.main import parse_args
    from hf_finetune.data.splits import load_splits
    from hf_finetune.recipe.prepare import load_model, prepare_recipe
    from hf_finetune.recipe.resolve import RunArguments

    folder = _gray_folder(tmp_path / "gray")
    argv = ["--model", tiny_checkpoint("resnet"), "--dataset", str(folder), "--output-dir", str(tmp_path / "out"),
            "--time-budget", "0.2", "--augmentation", "none"]
    model_args, data_args, finetune_args, training_args, _ = parse_args(argv)
    splits = load_splits(data_args, seed=training_args.seed)
    model, processor = load_model(model_args, splits, None, training_args.seed)
    requested = RunArguments(model_args, data_args, finetune_args, training_args)
    first = prepare_recipe(model, processor, splits, requested).record["recipe"]
    assert finetune_args.strategy == "auto" and training_args.num_train_epochs is None  # decisions are not written back
    # What the first attempt decided differs from what a re-measurement would give (e.g. a slower machine now).
    first["choices"]["num_train_epochs"]["value"] = 2.0
    first["choices"]["strategy"]["value"] = "full"
    first["choices"]["truncate_after"] = {"value": "blocks.0", "reason": "doctored", "source": "advisor"}

    model_args, data_args, finetune_args, training_args, _ = parse_args(argv)
    model, processor = load_model(model_args, splits, None, training_args.seed)
    resumed = prepare_recipe(model, processor, splits, RunArguments(model_args, data_args, finetune_args, training_args), first)
    decided = resumed.arguments
    assert decided.finetune.strategy == "full" and decided.training.num_train_epochs == 2.0
    assert decided.data.augmentation == "none"  # the flag, not a recorded choice
    assert "augmentation" not in resumed.record["recipe"]["reused_on_resume"]
    assert {"strategy", "num_train_epochs", "layer_decay"} <= set(resumed.record["recipe"]["reused_on_resume"])
    assert resumed.record["recipe"]["choices"]["strategy"]["value"] == "full"
    # The recorded cut is made again, so the model matches the checkpoints the resume continues from.
    from hf_finetune.backbones.truncation import truncation_of

    assert decided.finetune.truncate_after == "blocks.0" and truncation_of(resumed.model)["after"] == "blocks.0"


def test_interpolation_only_after_an_advisor_chosen_fine_tune_from_the_probe_head():
    from types import SimpleNamespace

    from hf_finetune.recipe.advisor import Choice
    from hf_finetune.recipe.prepare import PreparedRecipe, interpolates

    def prepared(source):
        plan = SimpleNamespace(choices={"strategy": Choice("full", "why", source)})
        return PreparedRecipe(model=None, plan=plan, probe=SimpleNamespace(validation_macro_f1=0.9))

    args = SimpleNamespace(peft="none", head_init="probe")
    assert interpolates(prepared("advisor"), args)
    assert not interpolates(prepared("flag"), args)  # --strategy given: the user asked for a fine-tune
    assert not interpolates(prepared("advisor"), SimpleNamespace(peft="lora", head_init="probe"))
    assert not interpolates(prepared("advisor"), SimpleNamespace(peft="none", head_init="random"))
    assert not interpolates(PreparedRecipe(model=None), args)  # no plan, no probe


def test_a_fine_tune_that_never_beats_its_probe_start_saves_the_probe(tiny_checkpoint, tmp_path, monkeypatch):
    import hf_finetune.pipeline.select as select_module

    real = select_module._scores

    def probe_scored_higher(logits, labels):
        macro_f1, loss = real(logits, labels)
        scored.append(macro_f1)
        return (2.0 if len(scored) == 1 else macro_f1), loss  # alpha 0 (the probe start) is scored first

    scored: list[float] = []
    monkeypatch.setattr(select_module, "_scores", probe_scored_higher)
    folder = _gray_folder(tmp_path / "gray")
    out = tmp_path / "out"
    argv = ["--model", tiny_checkpoint("resnet"), "--dataset", str(folder), "--output-dir", str(out),
            "--num-train-epochs", "1", "--per-device-train-batch-size", "8", "--disable-tqdm", "true",
            "--ema", "0"]  # no moving-average scoring before the interpolation's: alpha 0 is scored first
    assert main(argv) == 0
    config = json.loads((out / "run_config.json").read_text())
    assert config["finetune"]["strategy"] == "head_then_unfreeze" and config["epochs_run"] == 1
    selection = config["model_selection"]
    assert selection["chosen"] == "linear_probe" and selection["alpha"] == 0.0
    assert [c["alpha"] for c in selection["candidates"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    card = (out / "README.md").read_text()
    assert "### Model kept: linear probe" in card and "| 0 | 2.0000 |" in card  # the rigged probe score, kept
    report = json.loads((out / "test_report.json").read_text())
    # The evaluated (and saved) model is the probe refitted on train + validation: its test predictions are the
    # baseline's.
    assert report["confusion_matrix"] == report["baseline"]["confusion_matrix"]

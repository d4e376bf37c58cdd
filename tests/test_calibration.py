"""Calibration: ECE and reliability bins, the temperature fitted on validation, and its folding into the head
(argmax unchanged, validation NLL not increased); the run's report, diagram and card."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hf_finetune.backbones.loading import load_model_and_processor
from hf_finetune.evaluation.calibration import (
    expected_calibration_error,
    fit_temperature,
    fold_temperature,
    negative_log_likelihood,
    reliability_bins,
    softmax,
)


def _overconfident(seed: int = 0, n: int = 400, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a 70%-accurate model scaled up 5x: far more confident than it is right."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes))
    right = rng.random(n) < 0.7
    logits[np.arange(n)[right], labels[right]] += 2.0
    return logits * 5.0, labels


def test_ece_of_known_cases():
    labels = np.array([0, 1, 0, 1])
    # Always 100% sure and always right: calibrated. Always 100% sure, half right: ECE 0.5.
    assert expected_calibration_error(np.eye(2)[labels], labels) == pytest.approx(0.0)
    assert expected_calibration_error(np.eye(2)[[0, 1, 1, 0]], labels) == pytest.approx(0.5)
    # 60% sure everywhere, 60% right: calibrated; one bin holds all four.
    probabilities = np.tile([0.6, 0.4], (5, 1))
    assert expected_calibration_error(probabilities, np.array([0, 0, 0, 1, 1])) == pytest.approx(0.0, abs=1e-12)
    bins = reliability_bins(probabilities, np.array([0, 0, 0, 1, 1]))
    assert [b["count"] for b in bins if b["count"]] == [5] and len(bins) == 15


def test_temperature_fixes_an_overconfident_model():
    logits, labels = _overconfident()
    temperature = fit_temperature(logits, labels)
    assert temperature > 2.0  # softened
    assert negative_log_likelihood(logits, labels, temperature) < negative_log_likelihood(logits, labels)
    test_logits, test_labels = _overconfident(seed=1)
    before = expected_calibration_error(softmax(test_logits), test_labels)
    after = expected_calibration_error(softmax(test_logits / temperature), test_labels)
    assert after < before / 2


def test_temperature_is_one_when_validation_says_nothing():
    labels = np.array([0, 1, 2, 0])
    assert fit_temperature(np.eye(3)[labels] * 4.0, labels) == 1.0  # separable: the NLL only falls as T -> 0
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_folding_divides_the_logits_and_keeps_the_argmax(kind, tiny_checkpoint):
    model, _processor = load_model_and_processor(tiny_checkpoint(kind), {0: "a", 1: "b", 2: "c"})
    model.eval()
    pixels = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(pixel_values=pixels).logits.numpy()
    labels = np.random.default_rng(0).integers(0, 3, 12)
    temperature = 2.5
    folded = fold_temperature(model, temperature)
    assert folded
    with torch.no_grad():
        after = model(pixel_values=pixels).logits.numpy()
    np.testing.assert_allclose(after, before / temperature, rtol=1e-5, atol=1e-6)
    assert (after.argmax(-1) == before.argmax(-1)).all()
    # With the fitted T the validation NLL never increases.
    fitted = fit_temperature(before, labels)
    assert negative_log_likelihood(before, labels, fitted) <= negative_log_likelihood(before, labels) + 1e-12
    with pytest.raises(ValueError, match="positive"):
        fold_temperature(model, 0.0)


def test_run_reports_calibration(finished_run_dir):
    report = json.loads((finished_run_dir / "test_report.json").read_text())
    calibration = report["calibration"]
    assert calibration["temperature"] > 0 and math.isfinite(calibration["temperature"])
    for split in ("validation", "test"):
        assert {"ece", "nll"} <= set(calibration[split]["before"]) and {"ece", "nll"} <= set(calibration[split]["after"])
    assert calibration["validation"]["after"]["nll"] <= calibration["validation"]["before"]["nll"] + 1e-9
    # The default leaves a validation split of a few images per class alone: T would be noise.
    assert calibration["temperature"] == 1.0 and not calibration["applied"]
    assert calibration["decision"].startswith("default: off, the validation split has")
    assert (finished_run_dir / "reliability_diagram.png").is_file()
    card = (finished_run_dir / "README.md").read_text()
    assert "### Calibration" in card and "reliability_diagram.png" in card


def test_calibration_default_follows_training_and_validation_size():
    from hf_finetune.evaluation.calibration import MIN_CALIBRATION_IMAGES_PER_CLASS, calibration_decision

    enough = [MIN_CALIBRATION_IMAGES_PER_CLASS, 40]
    assert calibration_decision(None, True, enough)[0] is True
    assert calibration_decision(None, True, [MIN_CALIBRATION_IMAGES_PER_CLASS - 1, 40])[0] is False
    on_probe, why = calibration_decision(None, False, enough)
    assert on_probe is False and "linear probe" in why
    assert calibration_decision(True, False, [1]) == (True, "--calibrate true")  # the flag wins either way
    assert calibration_decision(False, True, enough) == (False, "--calibrate false")


def test_a_temperature_within_five_percent_of_one_is_negligible():
    from hf_finetune.evaluation.calibration import negligible

    assert negligible(1.03) and negligible(0.96)
    assert not negligible(1.06) and not negligible(0.75)  # eurosat's label-smoothed fine-tune: T = 0.735


def test_default_run_with_a_large_enough_validation_split_folds_a_temperature(tmp_path, tiny_checkpoint):
    from conftest import FAST_RUN_FLAGS, write_image_folder
    from hf_finetune.cli.main import main

    data = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=20, splits=("train", "val", "test"), size=24)
    for k in range(4):  # mislabelled validation images, so the model is not perfect there and T has something to fit
        (data / "val" / "a" / f"img_{k:03d}.png").rename(data / "val" / "b" / f"swapped_{k}.png")
        (data / "val" / "b" / f"img_{k:03d}.png").rename(data / "val" / "a" / f"swapped_{k}.png")
    out = tmp_path / "out"
    argv = ["--model", tiny_checkpoint("vit"), "--dataset", str(data), "--output-dir", str(out), *FAST_RUN_FLAGS,
            "--num-train-epochs", "1", "--audit", "off"]
    assert main(argv) == 0
    calibration = json.loads((out / "test_report.json").read_text())["calibration"]
    assert calibration["decision"] == "default: on, a trained network and 20+ validation images per class"
    assert calibration["applied"] and calibration["folded_into"] and calibration["temperature"] != 1.0
    assert calibration["validation"]["after"]["nll"] <= calibration["validation"]["before"]["nll"] + 1e-9


def test_the_default_leaves_out_a_negligible_temperature_that_the_flag_still_folds():
    from hf_finetune.evaluation.calibration import choose_temperature, fit_temperature, negligible, softmax

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(3000, 3))
    # Labels drawn from the logits' own softmax: a calibrated model, so the fitted T lies near 1 but not at it.
    labels = np.array([rng.choice(3, p=p) for p in softmax(logits)])
    fitted = fit_temperature(logits, labels)
    assert fitted != 1.0 and negligible(fitted)
    temperature, why = choose_temperature(None, True, logits, labels, 3)
    assert temperature == 1.0 and "within 5% of 1" in why
    assert choose_temperature(True, True, logits, labels, 3) == (fitted, "--calibrate true")
    assert choose_temperature(None, True, logits / 0.5, labels, 3)[0] == pytest.approx(2.0, rel=0.1)  # overconfident
    assert choose_temperature(None, True, logits, labels, 4)[0] == 1.0  # a class without validation images: off

"""The after-training options of `FinetuneArguments`: test-time augmentation, the weights' moving average, the
interpretation split and temperature scaling (help texts and checks)."""

from __future__ import annotations

TTA_HELP = (
    "Test-time augmentation: also evaluate the test split with the logits averaged over the image, its mirror image "
    "and three crops (test_report.json `tta`, beside the plain numbers, which stay what `pipeline` returns). "
    "`python -m hf_finetune predict --tta` predicts the same way."
)
EMA_HELP = (
    "Exponential moving average of the weights with this decay per optimizer step (e.g. 0.999; timm's ModelEmaV3, "
    "its decay warmed up over the first steps), "
    "scored on validation beside the raw weights at every evaluation; the better of the two is kept "
    "(run_config.json `ema`). 0 turns it off. Default: chosen by the recipe advisor: 0.999 when the run trains "
    "(on eurosat the average scored higher than the raw weights in every paired seed), off for the linear probe."
)
INTERPRET_SPLIT_HELP = (
    "Split of the top-losses gallery and the most-confused class pairs: test, or validation for iterating without "
    "looking at test images."
)
CALIBRATE_HELP = (
    "Temperature scaling: fit T on the validation split and divide the head's last linear layer by it, so the saved "
    "model returns calibrated probabilities (argmax unchanged); T and the ECE before/after go to test_report.json "
    "`calibration` (the ECE and reliability diagram are reported either way). Default: on for a trained network whose "
    "validation split has 20+ images of every class (on eurosat it lowered the test ECE 2-3x), off for the linear "
    "probe (already calibrated) and smaller validation splits, where T was noise; a fitted T within 5% of 1 is not "
    "folded by default (docs/benchmarks.md)."
)


def check_ema_decay(decay: float | None) -> None:
    """`--ema` must be a decay in [0, 1): 0 follows the raw weights, 0.999 averages over roughly the last 1,000 steps."""
    if decay is not None and not 0.0 <= decay < 1.0:
        raise ValueError(
            f"`--ema` is the moving average's decay per optimizer step and must be in [0, 1), got {decay!r}: "
            "e.g. `--ema 0.999` averages over about the last 1,000 steps (use fewer, e.g. 0.99, for short runs)."
        )

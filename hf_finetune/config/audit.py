"""The data audit's flags (`--audit`, `--dedupe`, `--near-duplicate-threshold`, `--drop-suspect-labels`): their
defaults, help texts and checks, kept here so `FinetuneArguments` only declares the fields."""

from __future__ import annotations

from typing import Any

AUDIT_MODES = ("auto", "on", "off")
# Centred cosine similarity of the cached head features from which two images count as near duplicates.
# Calibrated on the shared sets with efficientnet_lite0 (docs/data_audit.md): on hymenoptera, flipped and JPEG-q70
# copies of a photo score 0.88-0.99 (median 0.94) and the closest distinct photos 0.70; eurosat's featureless tiles
# (open water, bare fields) score up to 0.999 with each other, and are reported as the near-identical images they are.
NEAR_DUPLICATE_THRESHOLD = 0.85
# `--audit auto` runs the audit when it costs less than this share of the run (free when the run's own feature pass
# ran: the audit then reads its features).
AUDIT_COST_SHARE = 0.10

AUDIT_HELP = (
    "Data audit before training: exact and near duplicates within and across splits, suspect labels (out-of-fold "
    "probe probabilities), class counts, image sizes and modes (data_audit.json, suspect_labels.png, the card's Data "
    "section; with test images that have a twin in train, test_report.json `leakage` gives the test metrics with and "
    f"without them). auto: when it costs under {AUDIT_COST_SHARE:.0%} of the run (nearly free with the cached features "
    "the advisor uses); on: always; off: never."
)
DEDUPE_HELP = (
    "Drop the held-out copy (validation or test image) of every exact or near duplicate pair across splits before "
    "training; the dropped files are listed in data_audit.json and run_config.json."
)
THRESHOLD_HELP = (
    "Centred cosine similarity of the frozen head features from which two images count as near duplicates "
    "(flipped or re-encoded copies of a photo score ~0.9-0.99 with a pretrained backbone, distinct photos mostly "
    "below 0.7; raise it where many distinct images look alike, lower it to catch looser copies such as burst photos)."
)
DROP_SUSPECTS_HELP = (
    "Drop the K most suspect train/validation labels found by the audit before training (listed in "
    "data_audit.json). Test images are never dropped for their labels."
)


def check_audit_arguments(args: Any) -> None:
    """The audit flags' checks (`FinetuneArguments.__post_init__`): a clear error naming the flag and the fix."""
    if args.audit not in AUDIT_MODES:
        raise ValueError(f"`--audit` must be one of {AUDIT_MODES}, got {args.audit!r}.")
    if not 0.0 < args.near_duplicate_threshold <= 1.0:
        raise ValueError(
            f"`--near-duplicate-threshold` must lie in (0, 1], got {args.near_duplicate_threshold}: it is a cosine "
            f"similarity (default {NEAR_DUPLICATE_THRESHOLD})."
        )
    if args.drop_suspect_labels < 0:
        raise ValueError(f"`--drop-suspect-labels` must be >= 0, got {args.drop_suspect_labels}.")
    if args.audit == "off" and (args.dedupe or args.drop_suspect_labels):
        flag = "--dedupe" if args.dedupe else "--drop-suspect-labels"
        raise ValueError(f"`{flag}` acts on the data audit's findings, but `--audit off` turns it off: drop one of the two.")

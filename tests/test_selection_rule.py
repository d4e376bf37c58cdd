"""Model selection after LP-FT (pipeline/select.py): alpha 0.5 is kept unless another candidate leads it on validation
by more than one standard error of the paired difference; the resamples are paired and fixed by the seed."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score

from hf_finetune.evaluation.intervals import paired_bootstrap_macro_f1
from hf_finetune.pipeline.select import ALPHAS, MIDDLE_ALPHA, Candidate, _kept


def _candidates(leads, stds, losses=None):
    losses = losses or [0.5] * len(ALPHAS)
    return [Candidate(a, 0.8 + lead, loss, 0.02, lead, std) for a, lead, std, loss in zip(ALPHAS, leads, stds, losses)]


def test_the_middle_is_kept_unless_a_lead_exceeds_its_paired_standard_error():
    # alpha 1 leads by 0.02, but its paired std is 0.03: noise, the middle stays.
    assert _kept(_candidates([-0.05, 0.0, 0.0, 0.01, 0.02], [0.04, 0.02, 0.0, 0.02, 0.03])).alpha == MIDDLE_ALPHA
    # alpha 1's lead of 0.04 exceeds its std 0.03; alpha 0.75 leads beyond its noise too but scores lower.
    assert _kept(_candidates([-0.05, 0.0, 0.0, 0.02, 0.04], [0.04, 0.02, 0.0, 0.01, 0.03])).alpha == 1.0
    # The probe start can win the same way (its saved model is then the probe refitted on train + validation).
    assert _kept(_candidates([0.05, 0.01, 0.0, -0.01, -0.02], [0.02, 0.02, 0.0, 0.02, 0.03])).alpha == 0.0
    # Leaders tied on macro-F1: the lower validation loss.
    tied = _candidates([0.04, 0.0, 0.0, 0.0, 0.04], [0.01, 0.02, 0.0, 0.02, 0.01], losses=[0.6, 0.5, 0.5, 0.5, 0.4])
    assert _kept(tied).alpha == 1.0


def test_paired_resamples_are_fixed_by_the_seed_and_shared_by_the_models():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    good = np.where(rng.random(60) < 0.8, labels, (labels + 1) % 3)
    worse = np.where(rng.random(60) < 0.6, labels, (labels + 2) % 3)
    first = paired_bootstrap_macro_f1(labels, [good, worse, good], 3, samples=50, seed=7)
    assert first.shape == (3, 50)
    np.testing.assert_array_equal(first, paired_bootstrap_macro_f1(labels, [good, worse, good], 3, samples=50, seed=7))
    assert not np.array_equal(first, paired_bootstrap_macro_f1(labels, [good, worse, good], 3, samples=50, seed=8))
    np.testing.assert_array_equal(first[0], first[2])  # the same predictions on the same resamples: the same scores
    # Each resample's score is scikit-learn's macro-F1 of the images drawn.
    index = np.random.default_rng(7).integers(0, 60, size=(50, 60))
    for s in (0, 13, 49):
        expected = f1_score(labels[index[s]], worse[index[s]], average="macro", zero_division=0)
        assert abs(first[1, s] - expected) < 1e-12

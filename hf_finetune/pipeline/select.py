"""Model selection on the validation split: with `--ema`, the raw best checkpoint or the best moving average of the
weights (`choose_ema`); after a fine-tune from the linear-probe head (LP-FT), the probe, the fine-tune, or a
weight-space interpolation of the two (WiSE-FT, `choose_interpolation`).

Every candidate is scored the same way on the same images: the validation split, which neither the fine-tune nor the
probe start was fitted on. Small validation splits are noisy, and picking the highest of five scores picks noise as
often as signal (benchmarks/selection_noise.py replays the choice on smaller subsets of real runs' validation
splits). So the interpolation half-way (alpha 0.5, WiSE-FT's untuned default) is kept unless another candidate
beats it on validation by more than one standard error of the paired difference, estimated on resamples of the
validation images (every candidate on the same resamples). When the probe (alpha 0) is kept, the saved model is the
probe refitted on train + validation (`LinearProbe.full_weight`), which has seen more data at the same `C`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import f1_score

from hf_finetune.data.splits import DataSplits
from hf_finetune.evaluation.calibration import negative_log_likelihood
from hf_finetune.evaluation.intervals import paired_bootstrap_macro_f1
from hf_finetune.probing.linear_probe import LinearProbe, write_probe_into_head
from hf_finetune.training.callbacks.ema import EmaCallback
from hf_finetune.training.interpolation import State, capture_state, load_interpolation
from hf_finetune.training.trainer import FinetuneTrainer

logger = logging.getLogger(__name__)

# Interpolation weights tried: 0 = the probe start, 1 = the fine-tune.
ALPHAS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
# The candidate kept unless another beats it beyond the noise: WiSE-FT's untuned mixing weight (Wortsman et al. 2022
# found it close to the best tuned weight on every distribution they measured).
MIDDLE_ALPHA = 0.5
BOOTSTRAP_SAMPLES = 200


@dataclass
class Candidate:
    """One model scored on the validation split; `lead` is its macro-F1 minus the middle candidate's, `lead_std`
    that difference's standard deviation over paired resamples of the validation images."""

    alpha: float
    validation_macro_f1: float
    validation_loss: float
    bootstrap_std: float
    lead: float = 0.0
    lead_std: float = 0.0


def _scores(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Macro-F1 and cross-entropy of `logits` against `labels`."""
    macro_f1 = float(f1_score(labels, logits.argmax(-1), average="macro", zero_division=0))
    return macro_f1, negative_log_likelihood(logits, labels)


def _scored(logits: np.ndarray, labels: np.ndarray, num_classes: int, seed: int) -> dict[str, float]:
    """`_scores` and the macro-F1's standard deviation over the seed's resamples of the images, as recorded."""
    macro_f1, loss = _scores(logits, labels)
    spread = paired_bootstrap_macro_f1(labels, [logits.argmax(-1)], num_classes, BOOTSTRAP_SAMPLES, seed)[0]
    return {"validation_macro_f1": macro_f1, "validation_loss": loss, "bootstrap_std": float(np.std(spread))}


def _validation_logits(trainer: FinetuneTrainer, splits: DataSplits) -> tuple[np.ndarray, np.ndarray]:
    output = trainer.predict(splits.validation, metric_key_prefix="selection")
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    return np.asarray(logits, dtype=np.float64), np.asarray(output.label_ids)


def choose_ema(trainer: FinetuneTrainer, splits: DataSplits, ema: EmaCallback, seed: int) -> dict[str, Any]:
    """`--ema`: scores the trainer's model (the raw best checkpoint) and the best moving average on validation, loads
    the better into the trainer's model (ties keep the raw weights) and returns what `run_config.json` records
    under `ema`."""
    num_classes = len(splits.labels)
    raw = _scored(*_validation_logits(trainer, splits), num_classes, seed)
    record = {**ema.summary(), "raw": raw}
    if ema.best_state is None:
        return {**record, "chosen": "raw", "reason": "the moving average was never evaluated"}
    raw_state = capture_state(trainer.model)
    trainer.model.load_state_dict(ema.best_state)
    averaged = _scored(*_validation_logits(trainer, splits), num_classes, seed)
    better = (round(averaged["validation_macro_f1"], 6), -averaged["validation_loss"]) > (
        round(raw["validation_macro_f1"], 6), -raw["validation_loss"])
    if not better:
        trainer.model.load_state_dict(raw_state)
    logger.info("Moving average (decay %g) vs raw weights on validation: macro-F1 %.4f vs %.4f; keeping the %s weights.",
                ema.decay, averaged["validation_macro_f1"], raw["validation_macro_f1"], "averaged" if better else "raw")
    return {**record, "averaged": averaged, "chosen": "ema" if better else "raw",
            "reason": "the best moving average scored higher on validation than the raw best checkpoint" if better
            else "the moving average did not score higher on validation than the raw best checkpoint"}


def _set_leads(candidates: list[Candidate], resampled: np.ndarray, anchor: float = MIDDLE_ALPHA) -> None:
    """Each candidate's `lead` over the `anchor` candidate and its std over the paired resamples (`resampled`:
    candidates x resamples, from `paired_bootstrap_macro_f1`)."""
    base = next(i for i, c in enumerate(candidates) if c.alpha == anchor)
    for c, scores in zip(candidates, resampled):
        c.lead = c.validation_macro_f1 - candidates[base].validation_macro_f1
        c.lead_std = float(np.std(scores - resampled[base]))


def _kept(candidates: list[Candidate], anchor: float = MIDDLE_ALPHA) -> Candidate:
    """The `anchor` candidate, or the best (by macro-F1, ties to the lower loss) of those that lead it (`lead`,
    measured from the anchor) by more than one paired standard error."""
    leaders = [c for c in candidates if c.alpha != anchor and c.lead > c.lead_std]
    if not leaders:
        return next(c for c in candidates if c.alpha == anchor)
    return max(leaders, key=lambda c: (round(c.validation_macro_f1, 6), -c.validation_loss))


def choose_interpolation(
    trainer: FinetuneTrainer,
    splits: DataSplits,
    start: State,
    probe: LinearProbe,
    seed: int,
) -> dict[str, Any]:
    """Scores the interpolations between `start` (the probe-initialised model before training) and the trainer's
    model (the fine-tune's best checkpoint) on validation, loads the one kept (`_kept`) into the trainer's model and
    returns what `run_config.json` records under `model_selection`."""
    end = capture_state(trainer.model)
    scores, predictions = [], []
    for alpha in ALPHAS:
        load_interpolation(trainer.model, start, end, alpha)
        logits, labels = _validation_logits(trainer, splits)
        predictions.append(logits.argmax(-1))
        scores.append(_scores(logits, labels))
    # One set of resamples for every candidate: each row's spread is its bootstrap std, row differences its lead's.
    resampled = paired_bootstrap_macro_f1(labels, predictions, len(splits.labels), BOOTSTRAP_SAMPLES, seed)
    candidates = [Candidate(alpha, macro_f1, loss, float(np.std(row)))
                  for alpha, (macro_f1, loss), row in zip(ALPHAS, scores, resampled)]
    _set_leads(candidates, resampled)
    best = _kept(candidates)
    load_interpolation(trainer.model, start, end, best.alpha)
    if best.alpha == 0.0:
        write_probe_into_head(trainer.model, probe, full=True)
    chosen = {0.0: "linear_probe", 1.0: "fine_tune"}.get(best.alpha, "interpolation")
    logger.info(
        "Model selection on %d validation images: %s (alpha %.2f, macro-F1 %.4f +/- %.4f); %s",
        len(splits.validation), chosen, best.alpha, best.validation_macro_f1, best.bootstrap_std,
        ", ".join(f"{c.alpha:g}: {c.validation_macro_f1:.3f}" for c in candidates),
    )
    lead = f"{best.lead:+.4f} +/- {best.lead_std:.4f}"
    return {
        "chosen": chosen,
        "alpha": best.alpha,
        "estimate": f"validation macro-F1 on {len(splits.validation)} images; alpha {MIDDLE_ALPHA:g} is kept unless "
        f"another candidate leads it by more than one standard error of the paired difference ({BOOTSTRAP_SAMPLES} "
        "resamples of the validation images; among those that do, the highest macro-F1, ties to the lower loss)",
        "candidates": [asdict(c) for c in candidates],
        "probe_cv_macro_f1": probe.cv_macro_f1,
        "reason": {
            "linear_probe": f"the probe start led the half-way interpolation by more than the noise ({lead}), so the "
            "saved model is the probe (refitted on train + validation)",
            "fine_tune": f"the fine-tuned model led the half-way interpolation by more than the noise ({lead})",
            "interpolation": f"the weight-space average {1 - best.alpha:g} x probe start + {best.alpha:g} x fine-tune "
            + ("is kept: no candidate led it by more than the noise" if best.alpha == MIDDLE_ALPHA
               else f"led the half-way one by more than the noise ({lead})"),
        }[chosen],
    }

"""The stage-wise probe: how well the frozen features of every backbone stage separate the classes.

One forward pass over the data (`features.compute_split_features(..., stages=True)`, through
`backbones.taps.FeatureTaps`, each stage cached under its own key) gives the pooled output of every stage the backbone
adapter knows (`split_stages(...).backbone`: embeddings, blocks.i, norm). A linear probe, the baseline's logistic
regression (`linear_probe.search_c`), is scored on each stage's train features under stratified k-fold
cross-validation, optionally repeated over shuffles (train split only: validation and test are never looked at),
with the regularisation `C` chosen per stage by its mean CV macro-F1. The curve says where the pretrained features stop
helping: on data far from the pretraining domain, a middle stage can beat the top one (the case for truncation,
`--truncate-after`).

    python -m hf_finetune probe --model M --dataset D --output-dir OUT   # OUT/stage_probe.json + stage_probe.png
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hf_finetune.config.files import STAGE_PROBE_FILE, STAGE_PROBE_PLOT
from hf_finetune.evaluation.plots import plot_stage_probe
from hf_finetune.probing.features import FeatureSet
from hf_finetune.probing.linear_probe import PROBE_C_GRID, best_c, search_c

logger = logging.getLogger(__name__)

PROBE_FOLDS = 5
# Shuffles of the k-fold split. The advisor reads one: its truncation bar (2 SE of one split) was set, and measured to
# pay off on pneumoniamnist, on one split. `probe --repeats 3` shows how far a lead moves with the split
# (benchmarks/stage_probe_repeats.py).
PROBE_REPEATS = 1


@dataclass
class StageScore:
    """Cross-validated linear-probe score of one backbone stage.

    Attributes:
        name (`str`): stage name (`embeddings`, `blocks.i`, `norm`).
        index (`int`): position in the backbone, input to output (embeddings = 0), as `--truncate-after` and
            `--train-stages` take it.
        feature_dim (`int`): size of the pooled features.
        macro_f1_mean, macro_f1_std (`float`): mean and sample std of the fold macro-F1s at the chosen `C`.
        fold_scores (`list[float]`): macro-F1 of each fold, repeat after repeat (the same folds for every stage).
        C (`float`): the inverse regularisation strength with the best mean CV macro-F1.
    """

    name: str
    index: int
    feature_dim: int
    macro_f1_mean: float
    macro_f1_std: float
    fold_scores: list[float]
    C: float


@dataclass
class StageProbe:
    """The probe curve: one `StageScore` per backbone stage, input to output, over `repeats` shuffles of a
    `folds`-fold split."""

    stages: list[StageScore]
    folds: int
    seed: int
    seconds: float = 0.0
    repeats: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> StageScore:
        """The stage with the best mean CV macro-F1 (ties: the deeper stage, which removes less)."""
        return max(reversed(self.stages), key=lambda s: s.macro_f1_mean)

    @property
    def top(self) -> StageScore:
        """The last backbone stage: the features the full model's head reads."""
        return self.stages[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stages": [asdict(stage) for stage in self.stages],
            "best": self.best.name,
            "top": self.top.name,
            "folds": self.folds,
            "repeats": self.repeats,
            "seed": self.seed,
            "seconds": round(self.seconds, 3),
            "method": f"logistic regression on pooled stage outputs, stratified {self.folds}-fold CV on the train "
            f"split, {self.repeats} shuffle(s) "
            f"(C from {list(PROBE_C_GRID)} by mean CV macro-F1)",
            **self.extra,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "StageProbe":
        stages = [StageScore(**stage) for stage in payload["stages"]]
        folds = int(payload.get("folds", len(stages[0].fold_scores)))
        return cls(stages=stages, folds=folds, seed=int(payload.get("seed", 0)), repeats=int(payload.get("repeats", 1)))


def paired_difference(a: StageScore, b: StageScore, folds: int | None = None) -> tuple[float, float]:
    """Mean and standard error of `a - b` over the shared CV folds (paired: both were scored on the same folds).

    With repeated k-fold (`folds` = k, fewer than the scores), the error stays that of one k-fold split, s / sqrt(k),
    not divided by sqrt(repeats): the repeats steady the mean but re-split the same images (Nadeau and Bengio, 2003:
    the corrected variance of the mean, (1 / (R k) + 1 / (k - 1)) s^2, stays above s^2 / (k - 1) for any R).
    """
    diffs = np.asarray(a.fold_scores) - np.asarray(b.fold_scores)
    n = min(folds or len(diffs), len(diffs))
    se = float(diffs.std(ddof=1) / math.sqrt(n)) if len(diffs) > 1 else math.inf
    return float(diffs.mean()), se


# A block below the top stage beats it "clearly" when its lead (mean CV macro-F1) exceeds CLEAR_GAIN_SE standard errors
# of the fold-paired difference (every stage is scored on the same folds) and is at least MIN_CLEAR_GAIN macro-F1.
CLEAR_GAIN_SE = 2.0
# The smallest lead any decision acts on, whatever its standard errors: under it the CV noise of one split decides
# (hymenoptera / mobilenet_v2 seed 2: +0.0097 at 1.6 SE on one split, +0.003 over three).
MIN_CLEAR_GAIN = 0.01


@dataclass
class BlockGain:
    """The best block below the top stage, its lead over the top stage (`diff`) and that lead's fold-paired `se`."""

    block: StageScore
    top: StageScore
    diff: float
    se: float
    folds: int
    repeats: int = 1

    def beyond(self, standard_errors: float) -> bool:
        """The lead exceeds `standard_errors` fold-paired standard errors and is at least `MIN_CLEAR_GAIN`."""
        return self.diff > standard_errors * self.se and self.diff >= MIN_CLEAR_GAIN

    @property
    def clear(self) -> bool:
        """The lead is beyond the CV noise (`CLEAR_GAIN_SE`) and large enough to matter."""
        return self.beyond(CLEAR_GAIN_SE)

    def describe(self) -> str:
        cv = f"{self.folds}-fold CV" + (f" x{self.repeats}" if self.repeats > 1 else "")
        return (f"stage probe ({cv} macro-F1): best block {self.block.name} {self.block.macro_f1_mean:.3f} "
                f"vs top {self.top.name} {self.top.macro_f1_mean:.3f}, difference {self.diff:+.3f} (fold-paired SE {self.se:.3f})")


def best_block_gain(probe: StageProbe) -> BlockGain | None:
    """The best `blocks.*` stage below the top and its lead over the top; None when there is no such block."""
    blocks = [s for s in probe.stages if s.name.startswith("blocks.") and s.name != probe.top.name]
    if not blocks:
        return None
    best = max(reversed(blocks), key=lambda s: s.macro_f1_mean)
    diff, se = paired_difference(best, probe.top, probe.folds)
    return BlockGain(best, probe.top, diff, se, folds=probe.folds, repeats=probe.repeats)


def probe_stages(
    stage_features: dict[str, FeatureSet],
    num_labels: int,
    *,
    folds: int = PROBE_FOLDS,
    repeats: int = PROBE_REPEATS,
    seed: int = 0,
    c_grid: tuple[float, ...] = PROBE_C_GRID,
) -> StageProbe | None:
    """Scores a linear probe on each stage's features under stratified k-fold cross-validation.

    Args:
        stage_features (`dict[str, FeatureSet]`): train features per stage, input to output (`SplitFeatures.stages`).
        num_labels (`int`): number of classes.
        folds (`int`, defaults to 5): CV folds (fewer when the smallest class has fewer images).
        repeats (`int`, defaults to 1): shuffles of the fold split, every stage scored on the same folds.
        seed (`int`, defaults to 0): seed of the fold split and the solver.
        c_grid (`tuple[float, ...]`): inverse regularisation strengths tried per stage.

    Returns:
        `StageProbe`, or `None` when a class has fewer than 2 train images (no cross-validation possible).
    """
    from sklearn.model_selection import RepeatedStratifiedKFold

    if not stage_features:
        return None
    start = time.perf_counter()
    labels = next(iter(stage_features.values())).labels
    present = np.unique(labels)
    smallest = int(np.bincount(labels)[present].min()) if len(labels) else 0
    k = min(folds, smallest)
    if k < 2 or len(present) < 2:
        logger.warning("Stage probe skipped: the smallest class has %d train image(s); cross-validation needs 2.", smallest)
        return None
    # The first shuffle is StratifiedKFold(k, shuffle=True, random_state=seed)'s split.
    cv = RepeatedStratifiedKFold(n_splits=k, n_repeats=repeats, random_state=seed)
    splits = list(cv.split(np.zeros(len(labels)), labels))
    scores = []
    for index, (name, features) in enumerate(stage_features.items()):
        x = features.features
        per_fold = [
            search_c(FeatureSet(x[train], labels[train]), FeatureSet(x[held], labels[held]), num_labels, c_grid, seed)[2]
            for train, held in splits
        ]
        means = {C: float(np.mean([fold[C] for fold in per_fold])) for C in c_grid}
        chosen = best_c(means)
        fold_scores = [round(fold[chosen], 6) for fold in per_fold]
        scores.append(
            StageScore(
                name=name,
                index=index,
                feature_dim=int(x.shape[1]),
                macro_f1_mean=round(float(np.mean(fold_scores)), 6),
                macro_f1_std=round(float(np.std(fold_scores, ddof=1)), 6),
                fold_scores=fold_scores,
                C=chosen,
            )
        )
        logger.debug("Stage probe %-10s dim %5d: CV macro-F1 %.4f +/- %.4f (C=%g)", name, x.shape[1], scores[-1].macro_f1_mean, scores[-1].macro_f1_std, chosen)
    probe = StageProbe(stages=scores, folds=k, seed=seed, seconds=time.perf_counter() - start, repeats=repeats)
    if scores:  # one line; the per-stage curve is in run_config.json (recipe) and stage_probe.png of `probe`
        logger.info("Stage probe over %d stages (%d-fold CV x%d, macro-F1): best %s %.3f, top %s %.3f (%.1fs)",
                    len(scores), k, repeats, probe.best.name, probe.best.macro_f1_mean, probe.top.name, probe.top.macro_f1_mean, probe.seconds)
    return probe


def write_stage_probe(probe: StageProbe, output_dir: str, extra: dict[str, Any] | None = None) -> tuple[str, str]:
    """Writes `stage_probe.json` and `stage_probe.png` into `output_dir`; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    payload = {**(extra or {}), **probe.to_dict()}
    json_path = os.path.join(output_dir, STAGE_PROBE_FILE)
    with open(json_path, "w") as f:
        json.dump(payload, f, indent=2)
    plot_path = plot_stage_probe(payload, os.path.join(output_dir, STAGE_PROBE_PLOT))
    return json_path, plot_path

"""`python -m hf_finetune probe --model M --dataset D`: the stage probe alone (a cross-validated linear probe on
every backbone stage's pooled features), written to `stage_probe.json` and `stage_probe.png`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from hf_finetune.cli.feature_command import FeatureCommandArguments, frozen_features, parse_and_run
from hf_finetune.config.files import STAGE_PROBE_FILE
from hf_finetune.config.sources import DataArguments, ModelArguments
from hf_finetune.probing.stage_probe import PROBE_FOLDS, PROBE_REPEATS, StageProbe, probe_stages, write_stage_probe

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class StageProbeArguments(FeatureCommandArguments):
    """`python -m hf_finetune probe`: where to write, how many CV folds and shuffles of them (plus the split seed and
    the feature-pass options every frozen-feature command has)."""

    output_dir: str = field(metadata={"help": "Where stage_probe.json and stage_probe.png are written."})
    folds: int = field(default=PROBE_FOLDS, metadata={"help": "Stratified cross-validation folds on the train split."})
    repeats: int = field(
        default=PROBE_REPEATS, metadata={"help": "Shuffles of the fold split; every stage is scored on each."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.folds < 2:
            raise ValueError(f"`--folds` must be at least 2, got {self.folds}.")
        if self.repeats < 1:
            raise ValueError(f"`--repeats` must be at least 1, got {self.repeats}.")


def run_stage_probe(model_args: ModelArguments, data_args: DataArguments, args: StageProbeArguments) -> StageProbe:
    """Loads the splits and the model, runs the feature pass (every stage) and the probe, writes the results."""
    splits, features = frozen_features(model_args, data_args, args, stages=True)
    probe = probe_stages(features.stages, len(splits.labels), folds=args.folds, repeats=args.repeats, seed=args.seed)
    if probe is None:
        raise ValueError(
            f"`--dataset` {data_args.dataset!r}: the stage probe cross-validates on the train split and needs at least "
            "2 train images in every class."
        )
    extra = {"model": model_args.model, "dataset": data_args.dataset, "num_train": len(splits.train), "features": features.summary()}
    write_stage_probe(probe, args.output_dir, extra)
    return probe


def probe_main(argv: list[str]) -> int:
    """`python -m hf_finetune probe --model M --dataset D --output-dir OUT`."""
    parsed = parse_and_run(
        argv, StageProbeArguments, "python -m hf_finetune probe",
        "Linear probe on the frozen, pooled output of every backbone stage (stratified k-fold CV on the "
        "train split): writes OUTPUT_DIR/stage_probe.json and stage_probe.png.",
        run_stage_probe,
    )
    if parsed is None:
        return 2
    args, probe = parsed
    best, top = probe.best, probe.top
    for stage in probe.stages:  # the curve the summary line condenses
        print(f"  {stage.name:<12} dim {stage.feature_dim:>5}  CV macro-F1 {stage.macro_f1_mean:.4f} +/- {stage.macro_f1_std:.4f}")
    print(
        f"hf_finetune probe: best stage {best.name} (CV macro-F1 {best.macro_f1_mean:.4f} +/- {best.macro_f1_std:.4f}), "
        f"top stage {top.name} ({top.macro_f1_mean:.4f} +/- {top.macro_f1_std:.4f}) -> "
        f"{os.path.join(args.output_dir, STAGE_PROBE_FILE)}"
    )
    return 0

"""`python -m hf_finetune audit --model M --dataset D`: the data audit alone, no training. Writes data_audit.json
(class counts, image sizes and modes, exact and near duplicates within and across splits, suspect labels),
suspect_labels.png and duplicate_pairs.png into `--output-dir`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from hf_finetune.cli.feature_command import FeatureCommandArguments, frozen_features, parse_and_run
from hf_finetune.config.audit import NEAR_DUPLICATE_THRESHOLD, THRESHOLD_HELP
from hf_finetune.config.files import DATA_AUDIT_FILE
from hf_finetune.config.sources import DataArguments, ModelArguments
from hf_finetune.probing.audit import DataAudit, audit_data, write_data_audit

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class AuditArguments(FeatureCommandArguments):
    """`python -m hf_finetune audit`: where to write and the near-duplicate threshold (plus the split seed and the
    feature-pass options every frozen-feature command has)."""

    output_dir: str = field(default="data_audit", metadata={"help": "Where data_audit.json and the galleries are written."})
    near_duplicate_threshold: float = field(default=NEAR_DUPLICATE_THRESHOLD, metadata={"help": THRESHOLD_HELP})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.near_duplicate_threshold <= 1.0:
            raise ValueError(f"`--near-duplicate-threshold` must lie in (0, 1], got {self.near_duplicate_threshold}.")


def run_audit(model_args: ModelArguments, data_args: DataArguments, args: AuditArguments) -> DataAudit:
    """Loads the splits (as a run with `--seed` would make them) and the model, runs the cached feature pass and
    the audit, and writes its files."""
    splits, features = frozen_features(model_args, data_args, args)
    audit = audit_data(splits, features, seed=args.seed, threshold=args.near_duplicate_threshold)
    write_data_audit(audit, splits, args.output_dir)
    return audit


def audit_main(argv: list[str]) -> int:
    """`python -m hf_finetune audit --model M --dataset D [--output-dir OUT]`."""
    parsed = parse_and_run(
        argv, AuditArguments, "python -m hf_finetune audit",
        "Data audit without training: duplicates within and across splits (content hash, and cosine "
        "similarity of the frozen features), suspect labels (out-of-fold linear probe), class counts, image sizes "
        "and modes. Writes OUTPUT_DIR/data_audit.json, suspect_labels.png and duplicate_pairs.png.",
        run_audit,
    )
    if parsed is None:
        return 2
    args, audit = parsed
    summary = audit.summary()
    pairs = ", ".join(f"{kind} {n['exact']} exact + {n['near']} near" for kind, n in summary["pairs_by_kind"].items()) or "none"
    print(
        f"hf_finetune audit: duplicate pairs: {pairs}; {summary['test_with_twin']} test image(s) with a twin in "
        f"train/validation; suspect labels: {summary['suspect_labels'] or 'none'} -> "
        f"{os.path.join(args.output_dir, DATA_AUDIT_FILE)}"
    )
    return 0

"""`python -m hf_finetune audit --model M --dataset D`: the data audit alone, no training. Writes data_audit.json
(class counts, image sizes and modes, exact and near duplicates within and across splits, suspect labels),
suspect_labels.png and duplicate_pairs.png into `--output-dir`."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from hf_finetune.config.audit import NEAR_DUPLICATE_THRESHOLD, THRESHOLD_HELP
from hf_finetune.config.files import DATA_AUDIT_FILE
from hf_finetune.config.sources import DataArguments, ModelArguments
from hf_finetune.data.splits import load_splits
from hf_finetune.probing.audit import DataAudit, audit_data, write_data_audit
from hf_finetune.recipe.prepare import feature_pass, load_model

logger = logging.getLogger(__name__)


@dataclass
class AuditArguments:
    """`python -m hf_finetune audit`: where to write, the split seed and the near-duplicate threshold."""

    output_dir: str = field(default="data_audit", metadata={"help": "Where data_audit.json and the galleries are written."})
    seed: int = field(
        default=42, metadata={"help": "Seed of the train/validation/test split (as `--seed` of a run) and of the probe's folds."}
    )
    near_duplicate_threshold: float = field(default=NEAR_DUPLICATE_THRESHOLD, metadata={"help": THRESHOLD_HELP})
    batch_size: int = field(default=32, metadata={"help": "Images per forward pass of the feature pass."})
    feature_cache_dir: str | None = field(
        default=None, metadata={"help": "Where frozen features are cached (default: ~/.cache/hf_finetune/features)."}
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.near_duplicate_threshold <= 1.0:
            raise ValueError(f"`--near-duplicate-threshold` must lie in (0, 1], got {self.near_duplicate_threshold}.")
        if self.batch_size < 1:
            raise ValueError(f"`--batch-size` must be >= 1, got {self.batch_size}.")


def run_audit(model_args: ModelArguments, data_args: DataArguments, args: AuditArguments) -> DataAudit:
    """Loads the splits (as a run with `--seed` would make them) and the model, runs the cached feature pass and
    the audit, and writes its files."""
    splits = load_splits(data_args, seed=args.seed)
    model, processor = load_model(model_args, splits, None, args.seed)
    features = feature_pass(model, processor, splits, model_args, args.feature_cache_dir, args.batch_size)
    audit = audit_data(splits, features, seed=args.seed, threshold=args.near_duplicate_threshold)
    write_data_audit(audit, splits, args.output_dir)
    return audit


def audit_main(argv: list[str]) -> int:
    """`python -m hf_finetune audit --model M --dataset D [--output-dir OUT]`."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        (ModelArguments, DataArguments, AuditArguments),
        prog="python -m hf_finetune audit",
        description="Data audit without training: duplicates within and across splits (content hash, and cosine "
        "similarity of the frozen features), suspect labels (out-of-fold linear probe), class counts, image sizes "
        "and modes. Writes OUTPUT_DIR/data_audit.json, suspect_labels.png and duplicate_pairs.png.",
    )
    try:
        model_args, data_args, args = parser.parse_args_into_dataclasses(args=argv)
        audit = run_audit(model_args, data_args, args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = audit.summary()
    pairs = ", ".join(f"{kind} {n['exact']} exact + {n['near']} near" for kind, n in summary["pairs_by_kind"].items()) or "none"
    print(
        f"hf_finetune audit: duplicate pairs: {pairs}; {summary['test_with_twin']} test image(s) with a twin in "
        f"train/validation; suspect labels: {summary['suspect_labels'] or 'none'} -> "
        f"{os.path.join(args.output_dir, DATA_AUDIT_FILE)}"
    )
    return 0

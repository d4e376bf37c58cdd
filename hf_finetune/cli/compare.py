"""`python -m hf_finetune compare RUN_DIR...`: finished runs side by side, as a table and one plot.

    python -m hf_finetune compare runs/vit runs/convnext runs/effnet [--output-dir comparison]

Prints the table (Markdown), writes compare_runs.csv and compare_runs.png (macro-F1 vs wall time with intervals).
"""

from __future__ import annotations

import argparse
import logging

from hf_finetune.cli.console import refused
from hf_finetune.sharing.compare import compare_runs, format_table, write_comparison

logger = logging.getLogger(__name__)


def compare_main(argv: list[str]) -> int:
    """`python -m hf_finetune compare RUN_DIR...`."""
    parser = argparse.ArgumentParser(
        prog="python -m hf_finetune compare",
        description="Compare finished runs: model, dataset, strategy, test accuracy and macro-F1 with 95%% intervals, "
        "baseline, wall time and date; writes compare_runs.csv and compare_runs.png.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="--output-dir folders of finished runs (or --kfold runs).")
    parser.add_argument("--output-dir", default=".", help="Where compare_runs.csv and compare_runs.png go (default: .).")
    args = parser.parse_args(argv)
    try:
        rows = compare_runs(args.run_dirs)
    except ValueError as err:
        return refused(err)
    csv_path, plot_path = write_comparison(rows, args.output_dir)
    print(format_table(rows))
    print(f"hf_finetune compare: {len(rows)} run(s) -> {csv_path}, {plot_path}")
    return 0

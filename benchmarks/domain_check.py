"""What the advisor's similarity measures say about each shared model x dataset, beside what the frozen features can
actually do: the k-NN lift (today's "similar" / "different" call), the grayscale share, the cross-validated linear
probe over train + validation, and the stage probe (is the top stage the best one to read?).

    python benchmarks/domain_check.py                        # every shared model x dataset
    python benchmarks/domain_check.py --datasets eurosat     # a slice

Writes benchmarks/results/domain_check.json and .md. Features come from the feature cache (one forward pass per
model and dataset, with every stage captured), so a rerun costs seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = ROOT.parent / "shared" if (ROOT.parent / "shared").is_dir() else Path("/work/shared")


def check(model_path: Path, dataset: Path, seed: int) -> dict[str, Any]:
    from hf_finetune import DataArguments, load_splits
    from hf_finetune.backbones.split import split_stages
    from hf_finetune.config.sources import ModelArguments
    from hf_finetune.data.transforms import resolve_preprocessing
    from hf_finetune.probing.linear_probe import fit_linear_probe
    from hf_finetune.probing.stage_probe import probe_stages
    from hf_finetune.recipe.measure import measure_dataset
    from hf_finetune.recipe.prepare import feature_pass, load_model
    from hf_finetune.training.callbacks.freezing import unfreeze_units

    splits = load_splits(DataArguments(dataset=str(dataset)), seed=seed)
    model, processor = load_model(ModelArguments(model=str(model_path)), splits, None, seed)
    features = feature_pass(model, processor, splits, ModelArguments(model=str(model_path)), None, 32, stages=True)
    side = min(resolve_preprocessing(processor).size)
    m = measure_dataset(splits, features, len(unfreeze_units(split_stages(model))), side, seed=seed)
    probe = fit_linear_probe(features.train, features.validation, len(splits.labels), seed=seed)
    stages = probe_stages(features.stages, len(splits.labels), seed=seed)
    m.stage_probe = stages.to_dict() if stages else None
    gain = m.block_gain
    return {
        "model": model_path.name, "dataset": dataset.name, "seed": seed, "train_images": m.num_train,
        "classes": m.num_classes, "knn_lift": m.knn_lift, "grayscale_fraction": m.grayscale_fraction,
        "knn_call": m.knn_domain, "domain_today": m.domain,
        "block_gain": None if gain is None else {"block": gain.block.name, "diff": gain.diff, "se": gain.se, "clear": gain.clear},
        "probe_cv_macro_f1": probe.cv_macro_f1, "probe_cv_std": probe.cv_std,
        "stage_best": stages.best.name if stages else None, "stage_top": stages.top.name if stages else None,
        "stage_best_macro_f1": stages.best.macro_f1_mean if stages else None,
        "stage_top_macro_f1": stages.top.macro_f1_mean if stages else None,
    }


def asset_parser(doc: str, output: str, seeds: list[int]) -> argparse.ArgumentParser:
    """The options of a script over the shared models x datasets x seeds."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(DEFAULT_SHARED))
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--datasets", nargs="*")
    parser.add_argument("--seeds", nargs="*", type=int, default=seeds)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / output))
    return parser


def assets(options: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    """(model folders, dataset folders) the options select; every shared one by default. A dataset is a folder name
    under <shared>/data, or a path (e.g. a subset made by run_all.py)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    shared = Path(options.shared)
    models = options.models or sorted(p.name for p in (shared / "models").iterdir() if p.is_dir())
    datasets = options.datasets or sorted(p.name for p in (shared / "data").iterdir() if p.is_dir())
    return [shared / "models" / m for m in models], [Path(d) if os.sep in d else shared / "data" / d for d in datasets]


def main(argv: list[str] | None = None) -> int:
    options = asset_parser(__doc__, "domain_check", [0]).parse_args(argv)
    models, datasets = assets(options)
    rows = [check(m, d, seed) for d in datasets for m in models for seed in options.seeds]
    Path(options.output + ".json").write_text(json.dumps(rows, indent=2))
    lines = [f"`python benchmarks/domain_check.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"), "",
             "| dataset | model | seed | train | k-NN lift | grayscale | k-NN call | best block - top (SE) | call today | "
             "probe CV macro-F1 | best stage (CV F1) | top stage (CV F1) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gain = r["block_gain"]
        lead = "-" if gain is None else f"{gain['block']} {gain['diff']:+.3f} ({gain['se']:.3f}){', clear' if gain['clear'] else ''}"
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['seed']} | {r['train_images']} | {r['knn_lift']:.2f} | "
            f"{r['grayscale_fraction']:.0%} | {r['knn_call']} | {lead} | "
            f"{r['domain_today']} | {r['probe_cv_macro_f1']:.3f} ± {r['probe_cv_std']:.3f} | "
            f"{r['stage_best']} ({r['stage_best_macro_f1']:.3f}) | {r['stage_top']} ({r['stage_top_macro_f1']:.3f}) |"
        )
    Path(options.output + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

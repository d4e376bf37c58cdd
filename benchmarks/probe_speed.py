"""Is the cached-feature linear probe at least 20x faster than one epoch of full fine-tuning?

    flock /tmp/hff-heavy.lock python benchmarks/probe_speed.py

On --model / --dataset (default efficientnet_lite0 on hymenoptera), measures:
    cold probe   feature pass over train+validation+test into an empty cache + probe fit (C search)
    warm probe   the same with the cache filled (what every later run, seed or fold pays)
    one epoch    of `--strategy full` fine-tuning (training + the epoch's validation pass, the Trainer's
                 train_runtime), no feature pass or baseline
Writes benchmarks/results/probe_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" if (ROOT.parent / "shared").is_dir() else Path("/work/shared")
sys.path.insert(0, str(ROOT))


def probe_seconds(model_path: str, dataset: str, cache_dir: str, seed: int) -> dict:
    from hf_finetune import DataArguments, load_splits
    from hf_finetune.config.sources import ModelArguments
    from hf_finetune.probing.features import compute_split_features
    from hf_finetune.probing.linear_probe import baseline_report
    from hf_finetune.recipe.prepare import load_model

    splits = load_splits(DataArguments(dataset=dataset), seed=seed)
    model, processor = load_model(ModelArguments(model=model_path), splits, None, seed)
    start = time.perf_counter()
    features = compute_split_features(model, processor, splits, model_name_or_path=model_path, cache_dir=cache_dir)
    report, _ = baseline_report(features, splits.labels, seed=seed)
    total = time.perf_counter() - start
    return {"seconds": round(total, 3), "feature_seconds": round(features.seconds, 3), "probe_fit_seconds": report["seconds"],
            "computed": features.computed, "test_macro_f1": report["macro_f1"]}


def one_epoch_seconds(model_path: str, dataset: str, seed: int) -> dict:
    from transformers.trainer_utils import TrainOutput

    from hf_finetune.cli.main import parse_args
    from hf_finetune.pipeline.assemble import prepare_run

    out = tempfile.mkdtemp(prefix="probe_speed_")
    args = parse_args(["--model", model_path, "--dataset", dataset, "--output-dir", out, "--strategy", "full",
                       "--num-train-epochs", "1", "--baseline", "false", "--head-init", "random", "--layer-decay", "0.7",
                       "--augmentation", "light", "--mixup", "off", "--head-dropout", "0", "--drop-path-rate", "0",
                       "--label-smoothing-factor", "0.1", "--class-balance", "none", "--top-k", "2", "--head-epochs", "0",
                       "--stages-per-unfreeze", "1", "--seed", str(seed), "--disable-tqdm", "true", "--save-strategy", "no",
                       "--load-best-model-at-end", "false"])
    model_args, data_args, finetune_args, training_args, share_args = args
    run = prepare_run(model_args, data_args, finetune_args, training_args, share_args=share_args)
    output: TrainOutput = run.trainer.train()
    return {"seconds": round(output.metrics["train_runtime"], 3), "train_images": len(run.splits.train),
            "validation_images": len(run.splits.validation)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHARED / "models" / "efficientnet_lite0"))
    parser.add_argument("--dataset", default=str(SHARED / "data" / "hymenoptera"))
    parser.add_argument("--seed", type=int, default=42)
    options = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="probe_speed_cache_")
    cold = probe_seconds(options.model, options.dataset, cache, options.seed)
    warm = probe_seconds(options.model, options.dataset, cache, options.seed)
    epoch = one_epoch_seconds(options.model, options.dataset, options.seed)
    result = {
        "model": options.model, "dataset": options.dataset, "machine": f"{os.cpu_count()} CPU cores",
        "cold_probe": cold, "warm_probe": warm, "one_full_finetune_epoch": epoch,
        "speedup_warm": round(epoch["seconds"] / warm["seconds"], 1),
        "speedup_cold": round(epoch["seconds"] / cold["seconds"], 2),
    }
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "results" / "probe_speed.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

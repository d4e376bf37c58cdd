"""The measured effect of `--tta`, `--ema` and `--calibrate` on test metrics (issue 16), over seeds.

For every (dataset, strategy, seed) two runs of `python -m hf_finetune` with the same seed, differing only in `--ema`:
    base   --tta true --calibrate true
    ema    --tta true --calibrate true --ema DECAY
From each run's test_report.json: plain test macro-F1, the same with test-time augmentation (`tta`), and the test ECE
and NLL before / after the temperature fitted on validation (`calibration`). `--ema`'s effect is the ema run's plain
macro-F1 minus the base run's (the ema run keeps the average or the raw weights, whichever is better on validation;
`run_config.json` -> `ema` says which). A strategy that trains no epochs (`linear_probe`) gets the base run only.

    python benchmarks/after_training_check.py --datasets hymenoptera --strategies auto head_then_unfreeze
    python benchmarks/after_training_check.py --datasets eurosat --seeds 0

Writes `<output>.json` (every run) and `<output>.md` (mean +/- std per dataset and strategy). Runs already in the
JSON are skipped, so an interrupted check resumes. Each run holds `--lock` (flock) when given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = ROOT.parent / "shared" if (ROOT.parent / "shared").is_dir() else Path("/work/shared")


def run_once(model: Path, dataset: Path, strategy: str, seed: int, ema: float | None, out: Path, lock: str | None) -> dict[str, Any]:
    command = [sys.executable, "-m", "hf_finetune", "--model", str(model), "--dataset", str(dataset), "--output-dir",
               str(out), "--seed", str(seed), "--tta", "true", "--calibrate", "true", "--disable-tqdm", "true",
               "--overwrite-output-dir", "true", "--audit", "off", "--example-images", "0"]
    if strategy != "auto":
        command += ["--strategy", strategy]
    if ema is not None:
        command += ["--ema", str(ema)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["flock", lock, *command] if lock else command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    report = json.loads((out / "test_report.json").read_text())
    config = json.loads((out / "run_config.json").read_text())
    calibration = report["calibration"]["test"]
    record = {
        "macro_f1": report["macro_f1"], "accuracy": report["accuracy"], "tta_macro_f1": report["tta"]["macro_f1"],
        "ece_before": calibration["before"]["ece"], "ece_after": calibration["after"]["ece"],
        "nll_before": calibration["before"]["nll"], "nll_after": calibration["after"]["nll"],
        "temperature": report["calibration"]["temperature"], "strategy_run": config["finetune"]["strategy"],
        "kept": (config.get("model_selection") or {}).get("chosen"), "ema_kept": (config.get("ema") or {}).get("chosen"),
    }
    shutil.rmtree(out, ignore_errors=True)  # weights and plots are not results
    return record


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def markdown(runs: list[dict[str, Any]], argv: list[str]) -> str:
    lines = [f"`python benchmarks/after_training_check.py {' '.join(argv)}`", "",
             "| dataset | strategy (ran) | seeds | test macro-F1 | with --tta | with --ema | ema kept | ECE before -> after T | NLL before -> after T |",
             "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["dataset"], r["strategy"]), []).append(r)
    for (dataset, strategy), rs in sorted(groups.items()):
        base = sorted((r for r in rs if r["ema"] is None), key=lambda r: r["seed"])
        ema = {r["seed"]: r for r in rs if r["ema"] is not None}
        ran = ", ".join(sorted({r["strategy_run"] for r in base}))
        ema_f1 = [ema[r["seed"]]["macro_f1"] for r in base if r["seed"] in ema]
        kept = ", ".join(f"{k} {sum(e['ema_kept'] == k for e in ema.values())}" for k in sorted({e["ema_kept"] for e in ema.values()} - {None}))
        lines.append(
            f"| {dataset} | {strategy} ({ran}) | {[r['seed'] for r in base]} | {_mean_std([r['macro_f1'] for r in base])} | "
            f"{_mean_std([r['tta_macro_f1'] for r in base])} | {_mean_std(ema_f1) if ema_f1 else 'n/a (no training)'} | "
            f"{kept or '-'} | {_mean_std([r['ece_before'] for r in base])} -> {_mean_std([r['ece_after'] for r in base])} | "
            f"{_mean_std([r['nll_before'] for r in base])} -> {_mean_std([r['nll_after'] for r in base])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(DEFAULT_SHARED))
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--datasets", nargs="*", default=["hymenoptera", "eurosat"])
    parser.add_argument("--strategies", nargs="*", default=["auto"])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--work-dir", default="/tmp/hff-after-training")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "after_training_check"))
    parser.add_argument("--lock", help="hold this lock file (flock) during each run")
    options = parser.parse_args(argv)
    argv = list(argv if argv is not None else sys.argv[1:])
    shared, work = Path(options.shared), Path(options.work_dir)
    json_path, md_path = Path(options.output + ".json"), Path(options.output + ".md")
    runs = json.loads(json_path.read_text())["runs"] if json_path.is_file() else []
    for dataset in options.datasets:
        for strategy in options.strategies:
            for seed in options.seeds:
                for ema in (None, options.ema):
                    key = {"dataset": dataset, "strategy": strategy, "seed": seed, "ema": ema}
                    if any(all(r[k] == v for k, v in key.items()) for r in runs):
                        continue
                    base = next((r for r in runs if r["dataset"] == dataset and r["strategy"] == strategy
                                 and r["seed"] == seed and r["ema"] is None), None)
                    if ema is not None and base is not None and base["strategy_run"] == "linear_probe":
                        continue  # no training epochs: nothing to average
                    out = work / f"{dataset}-{strategy}-{seed}-{'ema' if ema is not None else 'base'}"
                    record = run_once(shared / "models" / options.model, shared / "data" / dataset, strategy, seed, ema, out, options.lock)
                    runs.append({**key, **record})
                    print(f"{dataset} {strategy} seed {seed} ema {ema}: macro-F1 {record['macro_f1']:.4f}, "
                          f"tta {record['tta_macro_f1']:.4f}, ECE {record['ece_before']:.4f} -> {record['ece_after']:.4f}", flush=True)
                    json_path.parent.mkdir(parents=True, exist_ok=True)
                    json_path.write_text(json.dumps({"model": options.model, "argv": argv, "runs": runs}, indent=2))
                    md_path.write_text(markdown(runs, argv))
    print(md_path.read_text() if md_path.is_file() else "no runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does `--strategy auto` beat the baselines on the real assets?

For each seed, with /work/shared/models/efficientnet_lite0 (or --model):
    pneumoniamnist (far from ImageNet):  auto (default flags + --time-budget)  vs  plain full fine-tune
                                         (`--strategy full --layer-decay 1.0`, same budget)  vs  the linear probe
                                         (the `baseline` of the auto run's test_report.json)
    hymenoptera (close to ImageNet):     auto (default flags)  vs  the linear probe
Target: auto > probe and auto > full on pneumoniamnist test macro-F1; auto >= probe on hymenoptera.

    flock /tmp/hff-heavy.lock python benchmarks/recipe_check.py --seeds 0 1 2              # default settings
    python benchmarks/recipe_check.py --time-budget 8 --extra --dataloader-num-workers 8   # a budget; extra flags

Writes benchmarks/results/recipe_check.json (every run: command, figures, wall time) and recipe_check.md (table).
Runs already in the JSON are skipped, so an interrupted check resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from run_all import machine_description  # benchmarks/ is the script's directory

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" if (ROOT.parent / "shared").is_dir() else Path("/work/shared")
RESULTS = ROOT / "benchmarks" / "results"


def configurations(model: str, budget: float | None, shared: Path) -> dict[str, list[str]]:
    pneumonia = str(shared / "data" / "pneumoniamnist")
    ants = str(shared / "data" / "hymenoptera")
    budget_flags = [] if budget is None else ["--time-budget", str(budget)]
    return {
        "pneumonia/auto": ["--model", model, "--dataset", pneumonia, *budget_flags],
        "pneumonia/full": ["--model", model, "--dataset", pneumonia, *budget_flags, "--strategy", "full", "--layer-decay", "1.0"],
        "hymenoptera/auto": ["--model", model, "--dataset", ants],
    }


def run(name: str, flags: list[str], seed: int, out_root: Path) -> dict:
    output_dir = out_root / name.replace("/", "_") / f"seed{seed}"
    command = [sys.executable, "-m", "hf_finetune", *flags, "--seed", str(seed), "--output-dir", str(output_dir),
               "--overwrite-output-dir", "--disable-tqdm", "true"]
    start = time.perf_counter()
    log_path = output_dir.parent / f"seed{seed}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"{name} seed {seed} failed (exit {code}); see {log_path}")
    report = json.loads((output_dir / "test_report.json").read_text())
    config = json.loads((output_dir / "run_config.json").read_text())
    recipe = config.get("recipe", {})
    return {
        "name": name,
        "seed": seed,
        "command": " ".join(["python", "-m", "hf_finetune", *command[3:]]),
        "wall_seconds": round(wall, 1),
        "test_accuracy": report["accuracy"],
        "test_macro_f1": report["macro_f1"],
        "baseline_accuracy": report.get("baseline", {}).get("accuracy"),
        "baseline_macro_f1": report.get("baseline", {}).get("macro_f1"),
        "case": recipe.get("case"),
        "strategy": config["finetune"]["strategy"],
        "epochs_run": config.get("epochs_run"),
        "num_train_epochs": config["training"]["num_train_epochs"],
        "estimated_epoch_seconds": recipe.get("estimated_epoch_seconds"),
        "mixup_switched_on_for_epoch": config.get("gap_monitor", {}).get("mixup_switched_on_for_epoch"),
    }


def summarise(runs: list[dict]) -> dict:
    def stats(values: list[float]) -> dict:
        return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}

    by = {}
    for r in runs:
        by.setdefault(r["name"], []).append(r)
    summary = {}
    for name, rs in by.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        summary[name] = {"seeds": [r["seed"] for r in rs], "test_macro_f1": stats([r["test_macro_f1"] for r in rs])}
        if rs[0]["baseline_macro_f1"] is not None:
            summary[name]["baseline_macro_f1"] = stats([r["baseline_macro_f1"] for r in rs])
    checks = {}
    if "pneumonia/auto" in summary:
        auto = summary["pneumonia/auto"]["test_macro_f1"]["mean"]
        checks["pneumonia: auto > linear probe"] = auto > summary["pneumonia/auto"]["baseline_macro_f1"]["mean"]
        if "pneumonia/full" in summary:
            checks["pneumonia: auto > plain full fine-tune"] = auto > summary["pneumonia/full"]["test_macro_f1"]["mean"]
    if "hymenoptera/auto" in summary:
        s = summary["hymenoptera/auto"]
        checks["hymenoptera: auto >= linear probe"] = s["test_macro_f1"]["mean"] >= s["baseline_macro_f1"]["mean"]
    return {"summary": summary, "checks": checks}


def markdown(runs: list[dict], result: dict) -> str:
    lines = ["| run | seed | case | strategy | epochs | test macro-F1 | probe macro-F1 | wall s |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["name"], r["seed"])):
        probe = "" if r["baseline_macro_f1"] is None else f"{r['baseline_macro_f1']:.4f}"
        lines.append(f"| {r['name']} | {r['seed']} | {r['case']} | {r['strategy']} | {r['epochs_run']} | {r['test_macro_f1']:.4f} | {probe} | {r['wall_seconds']:.0f} |")
    lines += ["", "| run | mean test macro-F1 (std) | mean probe macro-F1 |", "|---|---|---|"]
    for name, s in result["summary"].items():
        probe = s.get("baseline_macro_f1", {}).get("mean")
        lines.append(f"| {name} | {s['test_macro_f1']['mean']:.4f} ({s['test_macro_f1']['std']:.4f}) | {'' if probe is None else f'{probe:.4f}'} |")
    lines += ["", *(f"- {check}: {'yes' if ok else 'NO'}" for check, ok in result["checks"].items())]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(SHARED), help="folder holding models/ and data/")
    parser.add_argument("--model", help="default: <shared>/models/efficientnet_lite0")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--time-budget", type=float, help="--time-budget (minutes) of the pneumonia runs (default: none)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags added to every run (last option)")
    parser.add_argument("--only", nargs="*", default=None, help="subset of run names, e.g. pneumonia/auto")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "recipe_check"))
    parser.add_argument("--tag", default="recipe_check", help="results file stem")
    options = parser.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{options.tag}.json"
    previous = json.loads(json_path.read_text()) if json_path.is_file() else {}
    runs = previous.get("runs", [])
    done = {(r["name"], r["seed"]) for r in runs}
    shared = Path(options.shared)
    options.model = options.model or str(shared / "models" / "efficientnet_lite0")
    configs = {name: [*flags, *options.extra] for name, flags in configurations(options.model, options.time_budget, shared).items()}
    for seed in options.seeds:
        for name, flags in configs.items():
            if (options.only and name not in options.only) or (name, seed) in done:
                continue
            print(f"[recipe_check] {name} seed {seed} ...", flush=True)
            record = run(name, flags, seed, Path(options.runs_dir))
            print(f"[recipe_check]   test macro-F1 {record['test_macro_f1']:.4f} (probe {record['baseline_macro_f1']}) in {record['wall_seconds']:.0f}s", flush=True)
            runs.append(record)
            result = summarise(runs)
            payload = {"model": options.model, "time_budget": options.time_budget, "extra_flags": options.extra,
                       "machine": machine_description(), "runs": runs, **result}
            json_path.write_text(json.dumps(payload, indent=2))
            (RESULTS / f"{options.tag}.md").write_text(markdown(runs, result))
    result = summarise(runs)
    print(json.dumps(result["checks"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does truncating at the stage probe's best stage beat the full-depth fine-tune?

For each model (default: the two shared ones) and seed, on pneumoniamnist (default), two runs with the same recipe:
    full        --strategy head_then_unfreeze --truncate-after none
    truncated   --strategy head_then_unfreeze --truncate-after <best block of the stage probe>
The cut comes from `<probe-dir>/<model name>/stage_probe.json` (the committed results of `python -m hf_finetune
probe`); when that file is missing, the probe is run first and written there. Every other flag is the same for both
variants (extra flags after the known ones are passed to both).

    flock /tmp/hff-heavy.lock python benchmarks/truncation_check.py                     # the full comparison (GPU)
    python benchmarks/truncation_check.py --seeds 0 --max-per-class 8 --num-train-epochs 1 --output /tmp/tc  # smoke

Writes <output>.json (every run: command, test macro-F1/accuracy, wall time, parameters) and <output>.md (mean ± std
per model x variant). Runs already in the JSON are skipped, so an interrupted check resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("full", "truncated")


def default_shared() -> Path:
    """../shared next to the repository, else /work/shared."""
    beside = ROOT.parent / "shared"
    return beside if beside.is_dir() else Path("/work/shared")


def resolve(value: str, folder: Path) -> Path:
    """A path as given, or a name under `folder` (e.g. a model name under shared/models)."""
    path = Path(value).expanduser()
    return path if path.exists() else folder / value


def subset(dataset: Path, per_class: int, destination: Path) -> Path:
    """A copy of the first `per_class` images (sorted names) of every class of every split of an image folder."""
    if destination.is_dir():
        shutil.rmtree(destination)
    for class_dir in sorted(p for p in dataset.glob("*/*") if p.is_dir()):
        target = destination / class_dir.relative_to(dataset)
        target.mkdir(parents=True)
        for image in sorted(p for p in class_dir.iterdir() if p.is_file())[:per_class]:
            shutil.copy2(image, target / image.name)
    return destination


def stage_probe(model: Path, dataset: Path, probe_dir: Path, seed: int) -> dict:
    """The stage probe of `model` on `dataset`: read from `probe_dir/<model name>/`, or run and written there."""
    path = probe_dir / model.name / "stage_probe.json"
    if not path.is_file():
        command = [sys.executable, "-m", "hf_finetune", "probe", "--model", str(model), "--dataset", str(dataset),
                   "--output-dir", str(path.parent), "--seed", str(seed)]
        subprocess.run(command, cwd=ROOT, check=True)
    return json.loads(path.read_text())


def best_block(probe: dict) -> str:
    """The best `blocks.i` stage below the top stage (the advisor's truncation candidate)."""
    top = probe["stages"][-1]["name"]
    blocks = [s for s in probe["stages"] if s["name"].startswith("blocks.") and s["name"] != top]
    return max(reversed(blocks), key=lambda s: s["macro_f1_mean"])["name"]


def parameter_count(output_dir: Path) -> int:
    """Parameters of the saved model (model.safetensors without BatchNorm statistics)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(output_dir / "model.safetensors"), "pt") as f:
        for name in f.keys():
            if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                shape = f.get_slice(name).get_shape()
                total += math.prod(shape)
    return total


def timed_cli(flags: list[str], log_path: Path) -> float:
    """Runs `python -m hf_finetune FLAGS` from the repository root, output to `log_path`; returns its wall time."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        done = subprocess.run([sys.executable, "-m", "hf_finetune", *flags], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"`python -m hf_finetune {' '.join(flags)}` failed (exit {done.returncode}); see {log_path}")
    return time.perf_counter() - start


def run(model: Path, variant: str, cut: str, seed: int, dataset: Path, extra: list[str], out_root: Path) -> dict:
    output_dir = out_root / model.name / variant / f"seed{seed}"
    flags = ["--model", str(model), "--dataset", str(dataset), "--strategy", "head_then_unfreeze",
             "--truncate-after", cut if variant == "truncated" else "none", "--seed", str(seed),
             "--output-dir", str(output_dir), "--overwrite-output-dir", "true", "--disable-tqdm", "true", *extra]
    wall = timed_cli(flags, output_dir.parent / f"seed{seed}.log")
    report = json.loads((output_dir / "test_report.json").read_text())
    config = json.loads((output_dir / "run_config.json").read_text())
    return {
        "model": model.name,
        "variant": variant,
        "seed": seed,
        "truncate_after": cut if variant == "truncated" else "none",
        "command": " ".join(["python", "-m", "hf_finetune", *flags]),
        "wall_seconds": round(wall, 1),
        "test_macro_f1": report["macro_f1"],
        "test_accuracy": report["accuracy"],
        "parameters": parameter_count(output_dir),
        "epochs_run": config.get("epochs_run"),
        "best_validation_macro_f1": config.get("best_validation_macro_f1"),
    }


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for model in dict.fromkeys(r["model"] for r in runs):
        for variant in VARIANTS:
            chosen = [r for r in runs if r["model"] == model and r["variant"] == variant]
            if not chosen:
                continue
            f1 = [r["test_macro_f1"] for r in chosen]
            rows.append({
                "model": model,
                "variant": variant,
                "truncate_after": chosen[0]["truncate_after"],
                "seeds": [r["seed"] for r in chosen],
                "test_macro_f1_mean": statistics.mean(f1),
                "test_macro_f1_std": statistics.stdev(f1) if len(f1) > 1 else 0.0,
                "test_accuracy_mean": statistics.mean(r["test_accuracy"] for r in chosen),
                "wall_seconds_mean": statistics.mean(r["wall_seconds"] for r in chosen),
                "parameters": chosen[0]["parameters"],
            })
    return rows


def markdown(rows: list[dict], setup: dict) -> str:
    lines = [
        "# Truncation check: full depth vs truncated at the stage probe's best block",
        "",
        f"Dataset `{setup['dataset']}`{' (subset: ' + str(setup['max_per_class']) + ' images per class and split)' if setup['max_per_class'] else ''}, "
        f"seeds {setup['seeds']}, extra flags `{' '.join(setup['extra']) or '(none)'}`; both variants `--strategy head_then_unfreeze`.",
        "",
        "| model | variant | cut after | test macro-F1 (mean ± std) | test accuracy | wall s / run | parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['truncate_after']} | {r['test_macro_f1_mean']:.4f} ± {r['test_macro_f1_std']:.4f} "
            f"| {r['test_accuracy_mean']:.4f} | {r['wall_seconds_mean']:.0f} | {r['parameters']:,} |"
        )
    for model in dict.fromkeys(r["model"] for r in rows):
        pair = {r["variant"]: r for r in rows if r["model"] == model}
        if len(pair) == 2:
            diff = pair["truncated"]["test_macro_f1_mean"] - pair["full"]["test_macro_f1_mean"]
            lines.append(f"\n{model}: truncated − full test macro-F1 = {diff:+.4f} over {len(pair['full']['seeds'])} seed(s).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=default_shared(), help="Folder with models/ and data/ (default: ../shared, else /work/shared).")
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "mobilenet_v2"], help="Names under SHARED/models, or paths.")
    parser.add_argument("--dataset", default="pneumoniamnist", help="Name under SHARED/data, or a path (an image folder).")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max-per-class", type=int, default=None, help="Use only this many images per class and split (a smoke test).")
    parser.add_argument("--probe-dir", type=Path, default=ROOT / "benchmarks" / "results" / "stage_probe", help="Where stage_probe.json per model is read (or written).")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "truncation_check", help="Output prefix: <output>.json, <output>.md.")
    parser.add_argument("--runs-dir", type=Path, default=None, help="Where the runs' output directories go (default: <output>_runs).")
    args, extra = parser.parse_known_args(argv)
    dataset = resolve(args.dataset, args.shared / "data")
    models = [resolve(m, args.shared / "models") for m in args.models]
    for path in (dataset, *models):
        if not path.exists():
            parser.error(f"{path} does not exist (pass --shared, or paths)")
    runs_dir = args.runs_dir or args.output.parent / f"{args.output.name}_runs"
    if args.max_per_class:
        dataset = subset(dataset, args.max_per_class, runs_dir / f"{dataset.name}_subset{args.max_per_class}")
    json_path, md_path = args.output.with_suffix(".json"), args.output.with_suffix(".md")
    setup = {"dataset": str(args.dataset), "max_per_class": args.max_per_class, "seeds": args.seeds, "extra": extra}
    previous = json.loads(json_path.read_text()) if json_path.is_file() else {}
    runs = previous.get("runs", []) if previous.get("setup") == setup else []
    cuts = {}
    for model in models:
        cuts[model.name] = best_block(stage_probe(model, dataset, args.probe_dir, args.seeds[0]))
        for seed in args.seeds:
            for variant in VARIANTS:
                if any(r["model"] == model.name and r["variant"] == variant and r["seed"] == seed for r in runs):
                    continue
                runs.append(run(model, variant, cuts[model.name], seed, dataset, extra, runs_dir))
                json_path.parent.mkdir(parents=True, exist_ok=True)
                json_path.write_text(json.dumps({"setup": setup, "cuts": cuts, "runs": runs}, indent=2))
    rows = summarise(runs)
    json_path.write_text(json.dumps({"setup": setup, "cuts": cuts, "runs": runs, "summary": rows}, indent=2))
    md_path.write_text(markdown(rows, setup))
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

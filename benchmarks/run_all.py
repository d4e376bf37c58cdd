"""The benchmark: every shared model x every shared dataset x seeds, four methods side by side, in one run.

Methods (each in its own process, so peak memory is its own):
    plain     the stock `transformers.Trainer` with the transformers image-classification example's settings
              (benchmarks/plain_recipe.py: full fine-tune, AdamW 2e-5, 5 epochs, batch 8, RandomResizedCrop + flip,
              best checkpoint on validation accuracy); no hf_finetune code in its training path
    probe     `--strategy linear_probe`: hf_finetune's logistic regression on cached frozen features
    probe-cv  the standard probe a reviewer would run: scikit-learn `StandardScaler` + `LogisticRegressionCV` (10 Cs,
              C by stratified 5-fold CV on train) on the same pooled head features; no hf_finetune decision in it
    fastai    fastai `fine_tune`-style through hf_finetune flags: one head-only epoch (random head, one-cycle), then
              every stage at once for 4 epochs with discriminative LRs from lr/100 (lowest stage) to lr (top stage),
              BatchNorm trained, fastai's weight decay 0.01 and head dropout 0.25
    auto      hf_finetune's defaults (`--strategy auto`: the recipe advisor decides)

Every hf_finetune run starts from an EMPTY feature cache, so the feature pass it needs is in its wall time.

Datasets named in `--subsample` are cut to a stratified training subset of the given size (default:
pneumoniamnist=200; the same images for every method and seed; validation and test splits stay whole), built as a
folder of symbolic links under `--work-dir`. hymenoptera (245) and eurosat (1000) are used whole.

    python benchmarks/run_all.py                      # everything: ~50 min on 2 CPU cores
    python benchmarks/run_all.py --seeds 0 --methods plain auto --models efficientnet_lite0   # a slice

Results: `<output>.json` (every run and the summary), `<output>.md` (the table the README quotes) and
`<output>.png` (test macro-F1 vs wall time per method); for `auto` runs that select between the probe, the fine-tune
and their interpolations, `<output>.selection/*.npz` holds every candidate's validation logits and test scores
(benchmarks/selection_noise.py reads them). Runs already in the JSON are skipped, so an interrupted
benchmark resumes where it stopped; `--fresh` starts over.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = ROOT.parent / "shared" if (ROOT.parent / "shared").is_dir() else Path("/work/shared")
METHODS = ("plain", "probe", "probe-cv", "fastai", "auto")
# fastai's fine_tune: discriminative LRs span a factor of 100 from the lowest layer group to the top one.
FASTAI_LR, FASTAI_HEAD_LR, FASTAI_LR_SPAN = 1e-3, 2e-3, 100.0


# --------------------------------------------------------------------------------------------------------------------
# Data: the shared folders, or a stratified subset of links
# --------------------------------------------------------------------------------------------------------------------


def _class_files(split_dir: Path) -> dict[str, list[Path]]:
    return {c.name: sorted(p for p in c.iterdir() if p.is_file()) for c in sorted(split_dir.iterdir()) if c.is_dir()}


def prepared_dataset(source: Path, max_train: int | None, work_dir: Path) -> tuple[Path, dict[str, Any]]:
    """`source` itself, or a folder of links to a stratified subset of its `train/` with the other splits whole."""
    train = _class_files(source / "train")
    total = sum(len(files) for files in train.values())
    info = {"source": str(source), "train_images": total}
    if max_train is None or total <= max_train:
        return source, info
    import random

    rng = random.Random(0)  # the same subset for every method and seed
    target = work_dir / "data" / f"{source.name}-{max_train}"
    kept = {}
    for label, files in train.items():
        kept[label] = sorted(rng.sample(files, max(1, round(len(files) * max_train / total))))
    marker = target / ".complete"
    if not marker.is_file():  # links to files (a linked split folder is not followed by the imagefolder scan)
        shutil.rmtree(target, ignore_errors=True)
        splits = {"train": kept, **{s.name: _class_files(s) for s in source.iterdir() if s.is_dir() and s.name != "train"}}
        for split, classes in splits.items():
            for label, files in classes.items():
                (target / split / label).mkdir(parents=True)
                for f in files:
                    (target / split / label / f.name).symlink_to(f.resolve())
        marker.write_text("")
    info.update(train_images=sum(len(f) for f in kept.values()), subset_of=total, subset_path=str(target))
    return target, info


# --------------------------------------------------------------------------------------------------------------------
# Inside one method's process
# --------------------------------------------------------------------------------------------------------------------


def _phase_name(model: Any) -> str:
    from hf_finetune.backbones.split import split_stages
    from hf_finetune.training.callbacks.freezing import trainable_stage_names

    stage_map = split_stages(model)
    trainable = trainable_stage_names(model, stage_map)
    backbone = [s.name for s in stage_map.backbone]
    trained = [name for name in backbone if name in trainable]
    if not trained:
        return "head only"
    if len(trained) == len(backbone):
        return "full"
    return "top stages"


def _callbacks(num_train: int, score: Any, started: float, target: float | None = None) -> tuple[list[Any], dict[str, Any]]:
    """A per-epoch test curve (benchmark-only, its time excluded; it stops once `target` macro-F1 is reached, all
    time to quality needs) and per-phase training throughput."""
    from transformers import TrainerCallback

    record: dict[str, Any] = {"curve": [], "phases": {}, "excluded": 0.0}

    class Recorder(TrainerCallback):
        def _point(self, epoch: float, model: Any) -> None:
            if target is not None and any(p["macro_f1"] >= target for p in record["curve"]):
                return
            began = time.perf_counter()
            accuracy, macro_f1 = score(model)
            record["curve"].append({"epoch": epoch, "wall_seconds": began - started - record["excluded"],
                                    "accuracy": accuracy, "macro_f1": macro_f1})
            record["excluded"] += time.perf_counter() - began

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if score is not None and not state.global_step:
                self._point(0.0, model)  # the starting point: a probe-initialised head already scores

        def on_epoch_begin(self, args, state, control, model=None, **kwargs):
            self._epoch = (time.perf_counter(), _phase_name(model))

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            seconds = time.perf_counter() - self._epoch[0]
            phase = record["phases"].setdefault(self._epoch[1], {"epochs": 0, "seconds": 0.0, "images": 0})
            phase["epochs"] += 1
            phase["seconds"] += seconds
            phase["images"] += num_train
            if score is not None:
                self._point(float(round(state.epoch)), model)

    return [Recorder()], record


def _test_scorer(model_path: str, test_split: Any, bf16: bool) -> Any:
    """score(model) -> (accuracy, macro-F1) on the test split, preprocessed once by the checkpoint's processor."""
    import torch
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import AutoImageProcessor

    from hf_finetune.data.images import to_rgb

    processor = AutoImageProcessor.from_pretrained(model_path)
    images = [to_rgb(image) for image in test_split["image"]]
    pixels = torch.cat([processor(images[i : i + 64], return_tensors="pt")["pixel_values"] for i in range(0, len(images), 64)])
    labels = list(test_split["label"])

    @torch.no_grad()
    def logits(model: Any) -> torch.Tensor:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = []
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
            for start in range(0, len(pixels), 64):
                out.append(model(pixel_values=pixels[start : start + 64].to(device)).logits.float().cpu())
        model.train(was_training)
        return torch.cat(out)

    def score(model: Any) -> tuple[float, float]:
        predicted = logits(model).argmax(-1).tolist()
        return float(accuracy_score(labels, predicted)), float(f1_score(labels, predicted, average="macro"))

    score.logits, score.labels = logits, labels
    return score


def _record_selection_candidates(score: Any, record: dict[str, Any], store: Path) -> None:
    """Benchmark-only instrumentation for `benchmarks/selection_noise.py`: before the pipeline's model selection
    (LP-FT: probe, fine-tune or an interpolation) runs, every candidate's validation logits and test macro-F1 are
    written to `store` (.npz), with the test macro-F1 of the probe refitted on train + validation (what alpha 0
    saves). The selection itself is untouched; this time is excluded from the wall time."""
    import numpy as np
    from sklearn.metrics import f1_score

    import hf_finetune.pipeline.run as run_module
    from hf_finetune.pipeline.select import ALPHAS, _validation_logits
    from hf_finetune.probing.linear_probe import write_probe_into_head
    from hf_finetune.training.interpolation import capture_state, load_interpolation

    original = run_module.choose_interpolation

    def recorded(trainer: Any, splits: Any, start: Any, probe: Any, seed: int) -> Any:
        began = time.perf_counter()
        end = capture_state(trainer.model)
        test_labels = np.asarray(score.labels)
        validation, test = [], []
        for alpha in ALPHAS:
            load_interpolation(trainer.model, start, end, alpha)
            val_logits, val_labels = _validation_logits(trainer, splits)
            validation.append(val_logits.astype(np.float32))
            test.append(score.logits(trainer.model).numpy())
        load_interpolation(trainer.model, start, end, 0.0)
        write_probe_into_head(trainer.model, probe, full=True)
        refit = score.logits(trainer.model).numpy()
        trainer.model.load_state_dict(end)
        store.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            store, alphas=np.asarray(ALPHAS), validation_logits=np.stack(validation), validation_labels=val_labels,
            test_logits=np.stack(test).astype(np.float16), test_labels=test_labels,
            probe_refit_test_logits=refit.astype(np.float16),
            probe_cv_macro_f1=np.nan if probe.cv_macro_f1 is None else probe.cv_macro_f1,
            probe_cv_std=np.nan if probe.cv_std is None else probe.cv_std,
            test_macro_f1=np.asarray([f1_score(test_labels, t.argmax(-1), average="macro") for t in test]),
            probe_refit_test_macro_f1=f1_score(test_labels, refit.argmax(-1), average="macro"))
        record["excluded"] += time.perf_counter() - began
        return original(trainer, splits, start, probe, seed)

    run_module.choose_interpolation = recorded


def _standard_probe(model_path: str, dataset: str, splits: Any, seed: int, cache: str) -> tuple[float, float, dict[str, Any]]:
    """`LogisticRegressionCV` on the pooled head features (the same feature pass as hf_finetune's), fitted on train."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from hf_finetune import load_model_and_processor
    from hf_finetune.probing.features import compute_split_features

    model, processor = load_model_and_processor(model_path, splits.id2label)
    features = compute_split_features(model, processor, splits, model_name_or_path=model_path, cache_dir=cache)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    probe = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, cv=folds, max_iter=2000, random_state=seed))
    probe.fit(features.train.features, features.train.labels)
    predicted = probe.predict(features.test.features)
    labels = features.test.labels
    return float(accuracy_score(labels, predicted)), float(f1_score(labels, predicted, average="macro")), {
        "C": float(probe[-1].C_[0]), "feature_pass": features.summary()}


def fastai_flags(model_path: str) -> list[str]:
    """hf_finetune flags that reproduce fastai's `fine_tune(4, freeze_epochs=1)` as closely as its options allow."""
    from hf_finetune import load_model_and_processor
    from hf_finetune.backbones.split import split_stages

    model, _ = load_model_and_processor(model_path, {0: "a", 1: "b"})
    depth = len(split_stages(model).backbone)
    decay = (1.0 / FASTAI_LR_SPAN) ** (1.0 / max(1, depth - 1))
    return [
        "--strategy", "head_then_unfreeze", "--head-init", "random", "--head-epochs", "1",
        "--stages-per-unfreeze", str(depth), "--num-train-epochs", "5", "--learning-rate", str(FASTAI_LR),
        "--head-learning-rate", str(FASTAI_HEAD_LR), "--layer-decay", f"{decay:.4f}", "--lr-schedule", "one_cycle",
        "--weight-decay", "0.01", "--head-dropout", "0.25", "--drop-path-rate", "0.0", "--augmentation", "medium",
        "--mixup", "off", "--label-smoothing-factor", "0.0", "--class-balance", "none", "--train-bn", "true",
        "--fix-bn-stats", "false", "--baseline", "false", "--ema", "0",
    ]


def method_flags(method: str, model_path: str) -> list[str]:
    if method == "probe":
        return ["--strategy", "linear_probe"]
    if method == "fastai":
        return fastai_flags(model_path)
    return []  # auto: the defaults


def run_method(job: dict[str, Any]) -> dict[str, Any]:
    """Runs one (method, model, dataset, seed) in this process and returns its record."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    from hf_finetune.config.sources import DataArguments
    from hf_finetune.data.splits import load_splits

    method, model_path, dataset, seed, out = job["method"], job["model"], job["dataset"], job["seed"], job["output_dir"]
    splits = load_splits(DataArguments(dataset=dataset), seed=seed)
    curve_wanted = method == "auto"
    score = _test_scorer(model_path, splits.test, job["bf16"]) if curve_wanted else None
    num_train = len(splits.train)
    started = time.perf_counter()
    # The per-epoch test curve only serves the time to quality, against the plain recipe's score: without one, no curve.
    target = job.get("target_macro_f1")
    callbacks, record = _callbacks(num_train, score if target is not None else None, started, target)
    if curve_wanted and job.get("selection_store"):
        _record_selection_candidates(score, record, Path(job["selection_store"]))
    if method == "probe-cv":
        accuracy, macro_f1, extra = _standard_probe(model_path, dataset, splits, seed, job["feature_cache"])
    elif method == "plain":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from plain_recipe import run_plain

        result = run_plain(model_path, splits, seed, out, bf16=job["bf16"], callbacks=callbacks)
        accuracy, macro_f1, extra = result["accuracy"], result["macro_f1"], {}
    else:
        from hf_finetune.cli.main import parse_args
        from hf_finetune.pipeline.run import run_finetune

        argv = ["--model", model_path, "--dataset", dataset, "--output-dir", out, "--seed", str(seed),
                "--overwrite-output-dir", "true", "--disable-tqdm", "true", "--feature-cache-dir", job["feature_cache"],
                *(["--bf16", "true"] if job["bf16"] else []), *method_flags(method, model_path)]
        model_args, data_args, finetune_args, training_args, share_args = parse_args(argv)
        share_args.example_images = 0
        result = run_finetune(model_args, data_args, finetune_args, training_args, share_args, splits=splits, callbacks=callbacks)
        accuracy, macro_f1 = result.test_report["accuracy"], result.test_report["macro_f1"]
        config = json.loads((Path(out) / "run_config.json").read_text())
        features = config.get("features") or {}
        selection = config.get("model_selection") or {}
        extra = {"strategy": result.arguments.finetune.strategy, "epochs_run": config.get("epochs_run"),
                 "case": (config.get("recipe") or {}).get("case"), "feature_pass": features,
                 "kept": selection.get("chosen") or ("linear_probe" if result.arguments.finetune.strategy == "linear_probe" else "fine_tune"),
                 "alpha": selection.get("alpha")}
        if features.get("images_per_second"):
            record["phases"]["feature pass"] = {"images_per_second": features["images_per_second"]}
    wall = time.perf_counter() - started - record["excluded"]
    curve = record["curve"]
    if curve_wanted and (not curve or curve[-1]["macro_f1"] != macro_f1):
        curve.append({"epoch": None, "wall_seconds": wall, "accuracy": accuracy, "macro_f1": macro_f1})  # the final model
    for phase in record["phases"].values():
        if "seconds" in phase:
            phase["images_per_second"] = round(phase["images"] / max(phase["seconds"], 1e-9), 2)
    return {
        **{k: job[k] for k in ("method", "model_name", "dataset_name", "seed")},
        "test_accuracy": accuracy, "test_macro_f1": macro_f1, "wall_seconds": round(wall, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "train_images": num_train, "phases": record["phases"], "test_curve": curve, **extra,
    }


# --------------------------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------------------------


def machine_description() -> str:
    """Processor architecture, CPU cores and the GPU, if any: where a benchmark's timings were taken."""
    import torch

    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{platform.machine()}, {os.cpu_count()} CPU cores{gpu}"


def _spawn(job: dict[str, Any], log_path: Path, lock: str | None = None) -> dict[str, Any]:
    result_path = log_path.with_suffix(".json")
    result_path.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--job", json.dumps(job), "--job-result", str(result_path)]
    with open(log_path, "w") as log:
        code = subprocess.run(["flock", lock, *command] if lock else command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0 or not result_path.is_file():
        raise RuntimeError(f"{job['method']} / {job['model_name']} / {job['dataset_name']} / seed {job['seed']} failed "
                           f"(exit {code}): see {log_path}")
    return json.loads(result_path.read_text())


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean/std per (dataset, model, method) and the time-to-quality ratios."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["dataset_name"], r["model_name"], r["method"]), []).append(r)
    table = []
    for (dataset, model, method), rs in sorted(groups.items()):
        phases: dict[str, list[float]] = {}
        for r in rs:
            for name, phase in r["phases"].items():
                phases.setdefault(name, []).append(phase["images_per_second"])
        table.append({
            "dataset": dataset, "model": model, "method": method, "seeds": sorted(r["seed"] for r in rs),
            "test_accuracy": _stats([r["test_accuracy"] for r in rs]), "test_macro_f1": _stats([r["test_macro_f1"] for r in rs]),
            "wall_seconds": _stats([r["wall_seconds"] for r in rs]), "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            "images_per_second": {name: round(statistics.mean(v), 1) for name, v in phases.items()},
            **({"kept": {k: sum(r.get("kept") == k for r in rs) for k in sorted({r.get("kept") for r in rs} - {None})}}
               if method == "auto" else {}),
            # Set by merge_results.py: the result files (and so the commits) these runs came from.
            **({"sources": sorted({r["source"] for r in rs})} if all("source" in r for r in rs) else {}),
        })
    # Time to quality: the wall time the default (auto) takes to first reach the plain recipe's final test macro-F1
    # (same model, dataset and seed), as a share of the plain recipe's total wall time.
    ttq = []
    plain = {(r["dataset_name"], r["model_name"], r["seed"]): r for r in runs if r["method"] == "plain"}
    for r in runs:
        ref = plain.get((r["dataset_name"], r["model_name"], r["seed"]))
        # Runs merged from different result files ran on different days and commits: their times do not compare.
        if r["method"] != "auto" or ref is None or r.get("source") != ref.get("source"):
            continue
        reached = next((p for p in r["test_curve"] if p["macro_f1"] >= ref["test_macro_f1"]), None)
        ttq.append({
            "dataset": r["dataset_name"], "model": r["model_name"], "seed": r["seed"],
            "plain_macro_f1": ref["test_macro_f1"], "plain_wall_seconds": ref["wall_seconds"],
            "auto_seconds_to_reach": None if reached is None else round(reached["wall_seconds"], 2),
            "ratio": None if reached is None else round(reached["wall_seconds"] / ref["wall_seconds"], 3),
        })
    return {"table": table, "time_to_quality": ttq}


def _fmt(s: dict[str, float], digits: int = 3) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def markdown(payload: dict[str, Any]) -> str:
    lines = [
        f"Benchmark of {payload['date']} on {payload['machine']}; seeds {payload['seeds']}; "
        f"`{payload.get('command') or 'python benchmarks/run_all.py ' + ' '.join(payload['argv'])}`".rstrip(),
        "",
        "| dataset | model | method | test acc | test macro-F1 | wall s | images/s per phase | peak RSS MiB | kept |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    merged = any("sources" in row for row in payload["summary"]["table"])
    if merged:
        lines[2:4] = [lines[2] + " from |", lines[3] + "---|"]
    for row in payload["summary"]["table"]:
        speed = ", ".join(f"{k} {v:g}" for k, v in row["images_per_second"].items())
        lines.append(f"| {row['dataset']} | {row['model']} | {row['method']} | {_fmt(row['test_accuracy'])} | "
                     f"{_fmt(row['test_macro_f1'])} | {_fmt(row['wall_seconds'], 0)} | {speed} | {row['peak_rss_mib']:.0f} | "
                     f"{', '.join(f'{k} {n}' for k, n in row.get('kept', {}).items())} |"
                     + (f" {', '.join(row.get('sources', []))} |" if merged else ""))
    ttq = payload["summary"]["time_to_quality"]
    if ttq:
        lines += ["", "Time to quality: wall time of `auto` to first reach the plain recipe's final test macro-F1 "
                  "(same model, dataset, seed) / the plain recipe's wall time (target <= 0.33).", "",
                  "| dataset | model | seed | plain macro-F1 | plain wall s | auto s to reach | ratio |", "|---|---|---|---|---|---|---|"]
        for t in sorted(ttq, key=lambda t: (t["dataset"], t["model"], t["seed"])):
            reach = "not reached" if t["auto_seconds_to_reach"] is None else f"{t['auto_seconds_to_reach']:.0f}"
            ratio = "-" if t["ratio"] is None else f"{t['ratio']:.2f}"
            lines.append(f"| {t['dataset']} | {t['model']} | {t['seed']} | {t['plain_macro_f1']:.3f} | {t['plain_wall_seconds']:.0f} | {reach} | {ratio} |")
    notes = [f"- {name}: {info['train_images']} training images"
             + (f" (stratified subset of {info['subset_of']}; validation and test whole)" if "subset_of" in info else "")
             for name, info in payload["datasets"].items()]
    return "\n".join(lines + ["", *notes]) + "\n"


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["summary"]["table"]
    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False)
    colours = dict(zip(METHODS, ("tab:grey", "tab:blue", "tab:purple", "tab:orange", "tab:green")))
    markers = dict(zip(sorted({r["model"] for r in rows}), "os^Dv"))
    for ax, dataset in zip(axes[0], datasets):
        for r in (r for r in rows if r["dataset"] == dataset):
            ax.errorbar(r["wall_seconds"]["mean"], r["test_macro_f1"]["mean"], xerr=r["wall_seconds"]["std"],
                        yerr=r["test_macro_f1"]["std"], fmt=markers[r["model"]], color=colours.get(r["method"], "k"),
                        capsize=3, label=f"{r['method']} / {r['model']}")
        ax.set_xscale("log")
        ax.set_xlabel("wall time per run (s, log)")
        ax.set_ylabel("test macro-F1")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(DEFAULT_SHARED), help="folder holding models/ and data/")
    parser.add_argument("--models", nargs="*", help="model folder names under <shared>/models (default: all)")
    parser.add_argument("--datasets", nargs="*", help="dataset folder names under <shared>/data (default: all)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--subsample", nargs="*", default=["pneumoniamnist=200"], metavar="DATASET=N",
                        help="datasets whose training split is cut to a stratified subset of N images")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision for every method (GPU)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "benchmark"), help="results path stem")
    parser.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "work"), help="runs, logs, data subsets")
    parser.add_argument("--fresh", action="store_true", help="ignore runs already in the results JSON")
    parser.add_argument("--lock", help="hold this lock file (flock) during each run, so heavy jobs on a shared machine "
                        "take turns and the timings stay clean")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--job-result", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.job:
        record = run_method(json.loads(options.job))
        Path(options.job_result).write_text(json.dumps(record))
        return 0

    shared, work = Path(options.shared), Path(options.work_dir)
    models = options.models or sorted(p.name for p in (shared / "models").iterdir() if p.is_dir())
    dataset_names = options.datasets or sorted(p.name for p in (shared / "data").iterdir() if p.is_dir())
    for name, kind in [(m, "models") for m in models] + [(d, "data") for d in dataset_names]:
        if not (shared / kind / name).is_dir():
            parser.error(f"{shared / kind / name} does not exist: check --shared and the names given")
    subsample = {name: int(n) for name, _, n in (entry.partition("=") for entry in options.subsample)}
    datasets = {name: prepared_dataset(shared / "data" / name, subsample.get(name), work) for name in dataset_names}
    json_path, md_path, png_path = (Path(options.output + ext) for ext in (".json", ".md", ".png"))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    earlier = {} if options.fresh or not json_path.is_file() else json.loads(json_path.read_text())
    runs = earlier.get("runs", [])
    done = {(r["method"], r["model_name"], r["dataset_name"], r["seed"]) for r in runs}
    machine = machine_description() + (", bf16" if options.bf16 else "")
    started = time.perf_counter()
    for dataset_name, (dataset_path, _) in datasets.items():
        for model in models:
            for seed in options.seeds:
                for method in options.methods:
                    if (method, model, dataset_name, seed) in done:
                        continue
                    run_dir = work / "runs" / dataset_name / model / f"{method}-seed{seed}"
                    with tempfile.TemporaryDirectory(prefix="hff-bench-cache-") as cache:
                        plain = next((r for r in runs if (r["method"], r["model_name"], r["dataset_name"], r["seed"])
                                      == ("plain", model, dataset_name, seed)), None)
                        job = {"method": method, "model": str(shared / "models" / model), "model_name": model,
                               "dataset": str(dataset_path), "dataset_name": dataset_name, "seed": seed,
                               "output_dir": str(run_dir), "feature_cache": cache, "bf16": options.bf16,
                               "target_macro_f1": plain and plain["test_macro_f1"],
                               "selection_store": str(Path(options.output + ".selection") / f"{dataset_name}-{model}-seed{seed}.npz")}
                        run_dir.parent.mkdir(parents=True, exist_ok=True)
                        record = _spawn(job, run_dir.parent / f"{method}-seed{seed}.log", options.lock)
                    shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints and weights are not results
                    runs.append(record)
                    print(f"[{time.perf_counter() - started:6.0f}s] {dataset_name} {model} {method} seed {seed}: "
                          f"macro-F1 {record['test_macro_f1']:.4f} in {record['wall_seconds']:.0f}s", flush=True)
                    payload = {"date": date.today().isoformat(), "machine": machine, "seeds": options.seeds,
                               "argv": list(argv if argv is not None else sys.argv[1:]),
                               "datasets": {**earlier.get("datasets", {}), **{n: info for n, (_, info) in datasets.items()}},
                               "runs": runs, "summary": summarise(runs)}
                    json_path.write_text(json.dumps(payload, indent=2))
                    md_path.write_text(markdown(payload))
    if runs:
        payload = json.loads(json_path.read_text())
        plot(payload, png_path)
        print(md_path.read_text())
    print(f"total {time.perf_counter() - started:.0f}s; results in {json_path}, {md_path}, {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

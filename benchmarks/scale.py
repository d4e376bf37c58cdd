"""Peak memory and wall time of whole runs as the data grows: generated image folders of 2k, 10k and 50k 320x240
JPEGs (tiny ViT at 224 px, one epoch, the default strategy and `head_then_unfreeze`) and 100 generated 24 MP photos
(default strategy), the same JPEGs as 2k / 20k-row parquet shards read with `--streaming`, plus the CPU data path's
cost per image (decode + training transform, decode + processor).

Each run is its own `python -m hf_finetune` process; its peak RSS is the `ru_maxrss` that `os.wait4` reports for
it. Every run gets an empty feature cache, so the feature pass is part of it. Results merge into
benchmarks/results/scale.json (a case run again replaces its entry) and scale.md.

    python benchmarks/scale.py --work-dir /tmp/hff-scale                      # every case
    python benchmarks/scale.py --work-dir /tmp/hff-scale --cases 50k --strategies head_then_unfreeze
    python benchmarks/scale.py --work-dir /tmp/hff-scale --cases photos data_path --clean
    python benchmarks/scale.py --work-dir /tmp/hff-scale --cases stream-2k stream-20k --strategies head_then_unfreeze
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {"2k": 2_000, "10k": 10_000, "50k": 50_000}
STRATEGIES = ("auto", "head_then_unfreeze")
CLASSES = 10
PHOTO_COUNT, PHOTO_SIZE = 100, (6000, 4000)  # 24 MP


def tiny_vit(directory: Path) -> Path:
    """A 2-block ViT (hidden size 32) at 224 px with patch 16, saved with its image processor."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    if not (directory / "config.json").exists():
        config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           image_size=224, patch_size=16, num_labels=5)
        ViTForImageClassification(config).save_pretrained(directory)
        ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(directory)
    return directory


def image_folder(root: Path, count: int, size: tuple[int, int] = (320, 240), classes: int = CLASSES) -> Path:
    """`count` JPEGs in `classes` class folders: each class a smooth random pattern, each image it plus noise."""
    from PIL import Image

    if (root / ".complete").exists():
        return root
    rng = np.random.default_rng(0)
    small = (max(2, size[0] // 40), max(2, size[1] // 40))
    bases = [rng.integers(0, 255, (small[1], small[0], 3)).astype(np.int16) for _ in range(classes)]
    for i in range(count):
        label = i % classes
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        pattern = np.clip(bases[label] + rng.integers(-40, 40, bases[label].shape), 0, 255).astype(np.uint8)
        Image.fromarray(pattern).resize(size, Image.BILINEAR).save(folder / f"{i:06d}.jpg", quality=85)
    (root / ".complete").touch()
    return root


def parquet_shards(folder: Path, root: Path, shards: int = 16) -> Path:
    """The JPEGs of an `image_folder` as `train-K-of-N.parquet` shards written by `datasets` (image bytes + a
    ClassLabel), rows in class-folder order: what `--streaming` reads from a local folder."""
    import datasets

    if (root / ".complete").exists():
        return root
    files = sorted(folder.glob("*/*.jpg"))
    names = sorted({f.parent.name for f in files})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": f.read_bytes(), "path": f.name} for f in files], "label": [names.index(f.parent.name) for f in files]},
        features=features,
    )
    root.mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        table.shard(shards, k, contiguous=True).to_parquet(str(root / f"train-{k:05d}-of-{shards:05d}.parquet"))
    (root / ".complete").touch()
    return root


def run_case(name: str, model: Path, dataset: Path, strategy: str, work: Path, extra: tuple[str, ...] = ()) -> dict:
    """One `python -m hf_finetune` run (one epoch): its peak RSS (os.wait4 of the child) and wall time."""
    output, cache = work / "runs" / name, work / "cache" / name
    shutil.rmtree(output, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    command = [sys.executable, "-m", "hf_finetune", "--model", str(model), "--dataset", str(dataset),
               "--output-dir", str(output), "--num-train-epochs", "1", "--disable-tqdm", "true"]
    if strategy != "auto":
        command += ["--strategy", strategy]
    command += extra
    # Its own `datasets` cache too: a streaming run writes its held-out splits and sample there.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_FINETUNE_FEATURE_CACHE": str(cache), "HF_DATASETS_CACHE": str(cache / "datasets")}
    log = work / f"{name}.log"
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    shutil.rmtree(output, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    if code != 0:  # recorded, and the other cases still run
        print(f"{name} failed ({code}); see {log}", file=sys.stderr, flush=True)
        return {"failed": code, "log": str(log), "command": " ".join(command[1:])}
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024), "seconds": round(seconds, 1), "command": " ".join(command[1:])}


def data_path_cost(model: Path, dataset: Path, count: int = 300) -> dict:
    """Milliseconds per image of the CPU data path: decode + training transform (light), decode + processor."""
    import torch
    from transformers import AutoImageProcessor

    from hf_finetune.data.images import decode_rgb
    from hf_finetune.data.transforms import (
        build_train_transform,
        min_crop_scale,
        resolve_preprocessing,
        train_min_side,
    )

    torch.set_num_threads(1)
    refs = [{"path": str(p), "bytes": None} for p in sorted(dataset.glob("*/*.jpg"))[:count]]
    processor = AutoImageProcessor.from_pretrained(model)
    preprocessing = resolve_preprocessing(processor)
    transform = build_train_transform(preprocessing, "light")
    min_side = train_min_side(preprocessing.size, min_crop_scale("light"))

    def per_image(step) -> float:
        start = time.perf_counter()
        for ref in refs:
            step(ref)
        return round(1000 * (time.perf_counter() - start) / len(refs), 3)

    return {
        "images": len(refs),
        "image_size": "320x240 JPEG",
        "decode_ms": per_image(lambda ref: decode_rgb(ref, min_side)),
        "decode_train_transform_ms": per_image(lambda ref: transform(decode_rgb(ref, min_side))),
        "decode_eval_processor_ms": per_image(lambda ref: processor([decode_rgb(ref)], return_tensors="pt")),
        "threads": 1,
    }


def write(results: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Scale: peak RSS and wall time per run", "",
             f"{results['machine']}; tiny ViT (2 blocks, hidden 32) at 224 px, one epoch, empty feature cache.", "",
             "| case | images | strategy | peak RSS (MB) | wall (s) |", "| --- | --- | --- | --- | --- |"]
    for name, case in sorted(results["runs"].items(), key=lambda kv: (kv[1]["images"], kv[0])):
        if "failed" in case:
            lines.append(f"| {name} | {case['images']} | {case['strategy']} | failed (exit {case['failed']}) | |")
            continue
        lines.append(f"| {name} | {case['images']} | {case['strategy']} | {case['peak_rss_mb']} | {case['seconds']} |")
    cost = results.get("data_path")
    if cost:
        lines += ["", f"CPU data path, one thread, {cost['images']} {cost['image_size']}s: decode {cost['decode_ms']} ms, "
                  f"decode + training transform {cost['decode_train_transform_ms']} ms, decode + processor "
                  f"{cost['decode_eval_processor_ms']} ms per image."]
    (RESULTS / "scale.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, required=True, help="generated folders, logs, runs (large: ~1.5 GB)")
    parser.add_argument("--cases", nargs="+", default=[*SIZES, "photos", "data_path", "stream-2k", "stream-20k"])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--clean", action="store_true", help="remove the work dir afterwards")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "scale.json"
    results = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads default"
    results["date"] = str(date.today())
    model = tiny_vit(args.work_dir / "tiny_vit")
    for case in args.cases:
        if case in SIZES:
            dataset = image_folder(args.work_dir / f"images_{case}", SIZES[case])
            for strategy in args.strategies:
                name = f"{case}-{strategy}"
                results["runs"][name] = {"images": SIZES[case], "strategy": strategy,
                                         **run_case(name, model, dataset, strategy, args.work_dir)}
                print(name, results["runs"][name], flush=True)
                write(results)
        elif case.startswith("stream-") and case.removeprefix("stream-") in {**SIZES, "20k": 0}:
            size = case.removeprefix("stream-")
            count = SIZES.get(size, 20_000)
            shards = parquet_shards(image_folder(args.work_dir / f"images_{size}", count), args.work_dir / f"shards_{size}")
            for strategy in args.strategies:
                name = f"{case}-{strategy}"
                results["runs"][name] = {"images": count, "strategy": strategy, "streaming": True,
                                         **run_case(name, model, shards, strategy, args.work_dir, ("--streaming",))}
                print(name, results["runs"][name], flush=True)
                write(results)
        elif case == "photos":
            dataset = image_folder(args.work_dir / "photos_24mp", PHOTO_COUNT, PHOTO_SIZE, classes=2)
            results["runs"]["photos-24mp"] = {"images": PHOTO_COUNT, "strategy": "auto", "image_size": "6000x4000",
                                              **run_case("photos-24mp", model, dataset, "auto", args.work_dir)}
            print("photos-24mp", results["runs"]["photos-24mp"], flush=True)
        elif case == "data_path":
            results["data_path"] = data_path_cost(model, image_folder(args.work_dir / "images_2k", SIZES["2k"]))
            print("data_path", results["data_path"], flush=True)
        else:
            parser.error(f"unknown case {case!r}: one of {[*SIZES, 'stream-2k', 'stream-20k', 'photos', 'data_path']}")
        write(results)
    if args.clean:
        shutil.rmtree(args.work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

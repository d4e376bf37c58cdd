"""Per-step overhead of FinetuneTrainer (layer-decay groups, gated schedule, freeze + schedule-log callbacks)
against the stock transformers.Trainer, and training throughput per phase (head only, top-k, full).

Both trainers see the same model weights, the same in-memory batches (so data loading is out of the
measurement) and the same step-timing callback; runs are interleaved and the median step time is compared.

    python benchmarks/overhead.py --model ../shared/models/efficientnet_lite0 --rounds 5 --steps 12

Writes benchmarks/results/overhead.json and overhead.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402
from transformers import logging as hf_logging  # noqa: E402

from hf_finetune import FinetuneArguments, FinetuneTrainingArguments, load_model_and_processor  # noqa: E402
from hf_finetune.data.transforms import collate, resolve_preprocessing  # noqa: E402
from hf_finetune.training.callbacks.freezing import StageUnfreezeCallback  # noqa: E402
from hf_finetune.training.callbacks.schedule_log import ScheduleRecorderCallback  # noqa: E402
from hf_finetune.training.trainer import FinetuneTrainer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (forward, backward, clip, optimizer and scheduler step, callbacks)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


class TensorDataset(torch.utils.data.Dataset):
    def __init__(self, size: tuple[int, int], n: int, num_labels: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.pixels = torch.randn(n, 3, *size, generator=generator)
        self.labels = torch.randint(0, num_labels, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.pixels[i], "labels": int(self.labels[i])}


def _args(out: str, cls: type, steps: int, batch: int) -> TrainingArguments:
    common = dict(
        output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=3e-4, weight_decay=0.05,
        lr_scheduler_type="cosine", warmup_steps=0.1, eval_strategy="no", save_strategy="no", logging_strategy="no",
        report_to="none", disable_tqdm=True, remove_unused_columns=False, seed=0, dataloader_num_workers=0,
    )
    if cls is FinetuneTrainingArguments:
        common.update(load_best_model_at_end=False, metric_for_best_model=None)
    return cls(**common)


def time_run(kind: str, model_path: str, dataset, steps: int, batch: int, strategy: str = "full") -> list[float]:
    """Step times of one short run; `kind` is 'stock' or 'hf_finetune'."""
    torch.manual_seed(0)
    model, _ = load_model_and_processor(model_path, {0: "a", 1: "b"})
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        if kind == "stock":
            trainer = Trainer(model=model, args=_args(out, TrainingArguments, steps, batch), train_dataset=dataset, data_collator=collate, callbacks=[timer])
        else:
            finetune = FinetuneArguments(strategy=strategy, layer_decay=0.7, top_k=3)
            trainer = FinetuneTrainer(
                model=model, args=_args(out, FinetuneTrainingArguments, steps, batch), train_dataset=dataset, data_collator=collate,
                callbacks=[StageUnfreezeCallback.from_args(finetune), ScheduleRecorderCallback(out), timer], finetune_args=finetune,
            )
        trainer.train()
    return timer.times[2:]  # the first steps warm up allocators and kernels


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--model", default=str(Path(__file__).resolve().parents[2] / "shared" / "models" / "efficientnet_lite0"))
    cli.add_argument("--rounds", type=int, default=5)
    cli.add_argument("--steps", type=int, default=12)
    cli.add_argument("--batch", type=int, default=16)
    options = cli.parse_args()
    hf_logging.set_verbosity_error()

    _, processor = load_model_and_processor(options.model, {0: "a", 1: "b"})
    size = resolve_preprocessing(processor).size
    dataset = TensorDataset(size, options.batch * options.steps, 2)

    per_kind: dict[str, list[float]] = {"stock": [], "hf_finetune": []}
    round_medians: dict[str, list[float]] = {"stock": [], "hf_finetune": []}
    for _ in range(options.rounds):
        for kind in ("stock", "hf_finetune"):  # interleaved so drift on the machine hits both alike
            times = time_run(kind, options.model, dataset, options.steps, options.batch)
            per_kind[kind].extend(times)
            round_medians[kind].append(statistics.median(times))
    stock, ours = statistics.median(per_kind["stock"]), statistics.median(per_kind["hf_finetune"])

    phases = {}
    for phase, strategy in (("head only (linear_probe)", "linear_probe"), ("top-3 stages", "top_k"), ("full", "full")):
        times = time_run("hf_finetune", options.model, dataset, options.steps, options.batch, strategy)
        phases[phase] = {"median_step_s": statistics.median(times), "images_per_s": options.batch / statistics.median(times)}

    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "model": options.model,
        "batch": options.batch,
        "steps_timed_per_run": options.steps - 2,
        "rounds": options.rounds,
        "stock_median_step_s": stock,
        "hf_finetune_median_step_s": ours,
        "overhead_percent": 100.0 * (ours - stock) / stock,
        # Each round's two runs ran back to back: their ratio cancels slow drift of the machine's speed.
        "overhead_percent_median_of_rounds": 100.0 * (statistics.median(
            o / s for o, s in zip(round_medians["hf_finetune"], round_medians["stock"])) - 1.0),
        "round_medians": round_medians,
        "phases": phases,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"Per-step time, full fine-tune with layer decay, {Path(options.model).name}, batch {options.batch}, "
        f"median of {options.rounds} interleaved rounds x {options.steps - 2} steps ({result['date']}, {result['machine']}):",
        "",
        "| trainer | median step (s) | images/s |",
        "|---|---|---|",
        f"| stock transformers.Trainer | {stock:.3f} | {options.batch / stock:.1f} |",
        f"| hf_finetune FinetuneTrainer + callbacks | {ours:.3f} | {options.batch / ours:.1f} |",
        "",
        f"Overhead: {result['overhead_percent']:+.2f}% (median step of all rounds); "
        f"{result['overhead_percent_median_of_rounds']:+.2f}% (median over rounds of the paired ratio)",
        "",
        "| phase | median step (s) | images/s |",
        "|---|---|---|",
        *[f"| {name} | {v['median_step_s']:.3f} | {v['images_per_s']:.1f} |" for name, v in phases.items()],
    ]
    (RESULTS / "overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

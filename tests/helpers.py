"""Helpers shared by several test modules: message checks, a trainer on a tiny model with parameter snapshots, and
the advisor's measurements of a made-up dataset. Test modules import these, never each other."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, set_seed

from hf_finetune import (
    DataArguments,
    FinetuneArguments,
    FinetuneTrainingArguments,
    attach_transforms,
    build_trainer,
    load_model_and_processor,
    load_splits,
)
from hf_finetune.cli.main import main
from hf_finetune.recipe.measure import DatasetMeasurements

# ---- messages ---------------------------------------------------------------------------------------------------


def assert_mentions(text: str, *fragments: str) -> None:
    """Fails unless `text` holds every fragment (the flag, the bad value, the fix), naming the ones it lacks.

    Messages are checked on what a user acts on, not word for word, so rewording a sentence breaks no test while
    dropping the flag, the value or the fix does.
    """
    missing = [fragment for fragment in fragments if fragment not in text]
    assert not missing, f"missing {missing} in:\n{text}"


def parse_time_error(flags: list[str], tmp_path: Path, capsys) -> str:
    """The CLI's stderr for `flags` on a placeholder model and dataset, after checking that it refused them (exit 2)
    before creating the output directory."""
    output_dir = tmp_path / "o"
    assert main(["--model", "x", "--dataset", "y", "--output-dir", str(output_dir), *flags]) == 2
    assert not output_dir.exists()
    return capsys.readouterr().err


# ---- a trainer on a tiny model, and what changed while it trained ------------------------------------------------


class Snapshots(TrainerCallback):
    """Copies parameters and buffers at every epoch start (after the unfreeze callback ran) and at the end."""

    def __init__(self) -> None:
        self.params: list[dict[str, torch.Tensor]] = []
        self.buffers: list[dict[str, torch.Tensor]] = []
        self.optimizer_ids: set[int] = set()
        self.scheduler_ids: set[int] = set()
        self.trainable: list[set[str]] = []

    def _take(self, model) -> None:
        self.params.append({n: p.detach().clone() for n, p in model.named_parameters()})
        self.buffers.append({n: b.detach().clone() for n, b in model.named_buffers()})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._take(model)

    def on_step_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self.optimizer_ids.add(id(getattr(optimizer, "optimizer", optimizer)))
        self.scheduler_ids.add(id(getattr(lr_scheduler, "scheduler", lr_scheduler)))

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._take(model)
        self.trainable.append({n for n, p in model.named_parameters() if p.requires_grad})


def make_trainer(kind: str, tiny_checkpoint, folder: Path, out: Path, epochs: int = 3, **finetune: Any):
    """A `build_trainer` trainer on the tiny `kind` checkpoint and `folder`; `finetune` sets `FinetuneArguments`."""
    checkpoint = tiny_checkpoint(kind)  # built on first use: draws random numbers
    set_seed(0)  # the new head's initialisation
    data_args = DataArguments(dataset=str(folder))
    splits = load_splits(data_args, seed=0)
    model, processor = load_model_and_processor(checkpoint, splits.id2label)
    attach_transforms(splits, processor, "light")
    training_args = FinetuneTrainingArguments(
        output_dir=str(out), num_train_epochs=epochs, per_device_train_batch_size=8, learning_rate=1e-2,
        warmup_steps=0, seed=0, disable_tqdm=True, save_total_limit=None,
    )
    finetune.setdefault("early_stopping_patience", 0)
    return build_trainer(model, processor, splits, FinetuneArguments(**finetune), training_args)


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], names) -> list[str]:
    """The names among `names` whose tensor differs (bit for bit) between two snapshots."""
    return [n for n in names if not torch.equal(before[n], after[n])]


def stage_tensors(stage_map, stage_names) -> list[str]:
    """Parameter names of the named stages, in stage order."""
    return [n for s in stage_map.stages if s.name in stage_names for n in s.param_names]


# ---- the advisor's input ----------------------------------------------------------------------------------------


def measured(
    per_class: int = 100, knn_bacc: float | None = 0.8, grayscale: float = 0.0, classes: int = 2, fps: float = 50.0,
    **fields: Any,
) -> DatasetMeasurements:
    """Measurements of a balanced dataset of 224 px images on an 8-unit backbone; `fields` override any other field."""
    base = DatasetMeasurements(
        num_train=per_class * classes,
        num_validation=max(2, per_class * classes // 6),
        num_classes=classes,
        class_counts=[per_class] * classes,
        knn_balanced_accuracy=knn_bacc,
        grayscale_fraction=grayscale,
        median_image_side=224,
        model_input_side=224,
        forward_images_per_second=fps,
        backbone_units=8,
    )
    return replace(base, **fields)

"""Records what actually happened, epoch by epoch, into `schedule.json`.

One record per epoch: the stages that were trainable, every optimizer group's LR at the
epoch's first and last step, the mean training loss, and the validation metrics. The file is
rewritten after every evaluation, so an interrupted run keeps its partial history; the records
travel with checkpoints (`ExportableState`), so a resumed run continues the same history.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Callable

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from hf_finetune.backbones.split import split_stages
from hf_finetune.backbones.stages import StageMap
from hf_finetune.config.files import SCHEDULE_FILE
from hf_finetune.training.callbacks.freezing import trainable_stage_names
from hf_finetune.training.param_groups import group_learning_rates

logger = logging.getLogger(__name__)

# Per-step LR history is thinned to at most this many points so the file stays small on long runs.
_MAX_HISTORY_POINTS = 2000


class ScheduleRecorderCallback(TrainerCallback, ExportableState):
    """Writes `schedule.json` into `output_dir` after every evaluation.

    Args:
        output_dir (`str`): where `schedule.json` goes.
        field_sources (`list[Callable[[int], dict]]`, *optional*): extra per-epoch fields, each called with the
            epoch index at that epoch's evaluation (e.g. the gap monitor's train metrics); their dicts are merged
            into the epoch's record.
    """

    def __init__(self, output_dir: str, field_sources: list[Callable[[int], dict]] | None = None) -> None:
        self.output_dir = output_dir
        self.field_sources = list(field_sources or [])
        self.records: list[dict] = []
        self.lr_history: dict[str, list] = {"step": [], "groups": {}}
        self._current: dict[str, Any] | None = None
        # The run's stage map, handed over by FinetuneTrainer; discovered from the model under a plain Trainer.
        self.stage_map: StageMap | None = None

    def state(self) -> dict:
        # The open record goes too: a checkpoint saved mid-epoch (Ctrl-C) resumes into the same epoch's record.
        attributes = {"records": self.records, "lr_history": self.lr_history, "_current": self._current}
        return {"args": {"output_dir": self.output_dir}, "attributes": attributes}

    def _open_record(self, state, model) -> dict:
        epoch = int(math.floor(state.epoch + 1e-6))
        record = {
            "epoch": epoch,
            "first_step": state.global_step + 1,
            "trainable_stages": trainable_stage_names(model, self.stage_map),
        }
        self._current = record
        return record

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.stage_map = self.stage_map or split_stages(model)

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        epoch = int(math.floor(state.epoch + 1e-6))
        lrs = group_learning_rates(optimizer)
        if self._current is None or self._current["epoch"] != epoch:
            # First step of an epoch: every on_epoch_begin (the unfreeze callback's too) has run by now.
            self._open_record(state, model)["lr_start"] = lrs
        self._current["lr_end"] = lrs
        self._current["last_step"] = state.global_step + 1
        self.lr_history["step"].append(state.global_step + 1)
        for name, lr in lrs.items():
            self.lr_history["groups"].setdefault(name, []).append(lr)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._current is not None and logs and "loss" in logs:
            self._current["train_loss"] = float(logs["loss"])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self._current is None:
            return
        self._current["validation"] = {
            key.removeprefix("eval_"): value for key, value in (metrics or {}).items() if isinstance(value, (int, float))
        }
        for source in self.field_sources:
            self._current.update(source(self._current["epoch"]))
        self.records = [r for r in self.records if r["epoch"] != self._current["epoch"]] + [self._current]
        self.write(state)

    def on_train_end(self, args, state, control, **kwargs):
        if self._current is not None and self._current not in self.records:
            self.records.append(self._current)  # last epoch ended without an evaluation
        self.write(state)

    def _thinned_history(self) -> dict[str, list]:
        steps = self.lr_history["step"]
        stride = max(1, math.ceil(len(steps) / _MAX_HISTORY_POINTS))
        keep = list(range(0, len(steps), stride))
        if steps and keep[-1] != len(steps) - 1:
            keep.append(len(steps) - 1)
        return {
            "step": [steps[i] for i in keep],
            "groups": {name: [values[i] for i in keep] for name, values in self.lr_history["groups"].items()},
        }

    def write(self, state: Any) -> None:
        """Writes `schedule.json` (main process only)."""
        if not state.is_world_process_zero:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        payload = {"epochs": self.records, "lr_history": self._thinned_history()}
        path = os.path.join(self.output_dir, SCHEDULE_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2)
        os.replace(tmp, path)

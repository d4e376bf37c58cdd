"""`EmaCallback` (`--ema DECAY`): an exponential moving average of the model's weights, timm's `ModelEmaV3`, updated
after every optimizer step.

`FinetuneTrainer.evaluate` scores the average beside the raw weights at each evaluation (`eval_ema_*` in the logs,
`ema_validation` per epoch in `schedule.json`); the callback keeps a copy of the best-scoring average, and model
selection (`pipeline/select.py::choose_ema`) keeps it or the raw best checkpoint, whichever is better on validation.

The decay warms up as in timm (`1 - (1 + step) ** -2/3`, capped at DECAY): a short small-data run of a few hundred
steps would otherwise keep most of its starting weights in the average. Decay 0 is exactly the raw weights.
Frozen stages never change, so their average is their weight; BatchNorm statistics are averaged too (timm's default).
Each checkpoint holds the average, its best state and its history (`save`, called by `FinetuneTrainer.save_model`
before the checkpoint's trainer_state.json is written, so a checkpoint that reads back has them): a resumed run
continues the same average and ends as the uninterrupted run would. A checkpoint without them (written before they
were saved) restarts the average from the resumed weights, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from timm.utils import ModelEmaV3
from transformers import TrainerCallback

from hf_finetune.config.evaluation import check_ema_decay

logger = logging.getLogger(__name__)

# What `EmaCallback.save` writes into a checkpoint folder.
AVERAGE_FILE, BEST_FILE, RECORD_FILE = "ema_average.safetensors", "ema_best.safetensors", "ema.json"


def _separate(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies with their own storage: safetensors refuses tensors that share memory (tied weights)."""
    return {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in state.items()}


class EmaCallback(TrainerCallback):
    """Keeps an exponential moving average of the trained model's weights and its best state on validation.

    Args:
        decay (`float`): weight of the old average per optimizer step, in [0, 1); 0 makes the average the raw weights.
        metric (`str`, defaults to `"macro_f1"`): the validation metric that picks the best average (`loss`: lower).
    """

    def __init__(self, decay: float, metric: str = "macro_f1") -> None:
        check_ema_decay(decay)
        self.decay = decay
        self.metric = (metric or "macro_f1").removeprefix("eval_")
        self.average: ModelEmaV3 | None = None
        self.history: list[dict[str, Any]] = []  # per evaluation: epoch, step and the average's validation metrics
        self.best_state: dict[str, torch.Tensor] | None = None  # on the CPU
        self.best: dict[str, Any] | None = None
        self._resumed: dict[str, torch.Tensor] | None = None  # the average read by `resume_from`, until training starts

    def save(self, folder: str) -> None:
        """Writes the average, its best state and its history into the checkpoint `folder`."""
        if self.average is None:
            return
        save_file(_separate(self.average.module.state_dict()), os.path.join(folder, AVERAGE_FILE))
        if self.best_state is not None:
            save_file(_separate(self.best_state), os.path.join(folder, BEST_FILE))
        with open(os.path.join(folder, RECORD_FILE), "w") as f:
            json.dump({"decay": self.decay, "history": self.history, "best": self.best}, f)

    def resume_from(self, folder: str) -> None:
        """Reads what `save` wrote into `folder` (nothing there: the average restarts at `on_train_begin`)."""
        if not os.path.isfile(os.path.join(folder, AVERAGE_FILE)):
            return
        self._resumed = load_file(os.path.join(folder, AVERAGE_FILE))
        best = os.path.join(folder, BEST_FILE)
        self.best_state = load_file(best) if os.path.isfile(best) else None
        with open(os.path.join(folder, RECORD_FILE)) as f:
            record = json.load(f)
        self.history, self.best = record["history"], record["best"]

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.average is not None:
            return
        # foreach lerp updates every tensor in one call; the copy lives on the model's device.
        self.average = ModelEmaV3(model, decay=self.decay, use_warmup=True)
        if self._resumed is not None:
            self.average.module.load_state_dict(self._resumed, strict=True)
            self._resumed = None
        elif state.global_step:
            logger.warning("--ema: the checkpoint holds no moving average; it restarts from the resumed weights at step "
                           "%d.", state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.average is not None:
            self.average.update(model, step=state.global_step)

    @contextmanager
    def averaged_weights(self, model: torch.nn.Module) -> Iterator[None]:
        """Inside the block `model` holds the average (swapped in place, tensor by tensor: no second full copy)."""
        self._swap(model)
        try:
            yield
        finally:
            self._swap(model)

    @torch.no_grad()
    def _swap(self, model: torch.nn.Module) -> None:
        seen: set[int] = set()  # tied tensors appear under several names: swap each storage once
        for live, average in zip(model.state_dict().values(), self.average.module.state_dict().values()):
            if live.data_ptr() in seen:
                continue
            seen.add(live.data_ptr())
            held = live.clone()
            live.copy_(average)
            average.copy_(held)

    def record(self, metrics: dict[str, float], epoch: float | None, step: int) -> None:
        """Stores one evaluation of the average (`eval_ema_*` keys) and copies the average when it is the best yet."""
        entry = {"epoch": epoch, "step": step, **{k.removeprefix("eval_ema_"): v for k, v in metrics.items()
                                                   if isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second"))}}
        self.history.append(entry)
        score = entry.get(self.metric)
        sign = -1.0 if self.metric == "loss" else 1.0
        if score is not None and (self.best is None or sign * score > sign * self.best[self.metric]):
            self.best = entry
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.average.module.state_dict().items()}

    def epoch_fields(self, epoch: int) -> dict[str, Any]:
        """What `schedule.json` records for the evaluation just made (a field source of the ScheduleRecorderCallback)."""
        if not self.history:
            return {}
        latest = self.history[-1]
        return {"ema_validation": {k: v for k, v in latest.items() if k not in ("epoch", "step")}}

    def summary(self) -> dict[str, Any]:
        return {"decay": self.decay, "best": self.best, "history": self.history}

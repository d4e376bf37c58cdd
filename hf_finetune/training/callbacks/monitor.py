"""Train/validation gap monitor: how far training metrics run ahead of validation, every epoch.

Training metrics cost no second pass: `FinetuneTrainer.compute_loss` appends each training batch's predictions
and loss to a `TrainPredictionLog`, and the monitor turns them into accuracy / macro-F1 / loss at the end of the
epoch. They are measured on augmented (and possibly mixed) batches with dropout on, so they understate the true
training fit a little; the gap is a conservative overfitting signal.

In `auto` mode, when train minus validation macro-F1 stays above `threshold` for `patience` consecutive epochs,
the monitor switches mixup/CutMix on (the `BatchMixer` the trainer uses) and records the switch with its epoch.
The per-epoch values reach `schedule.json` through the recorder's field sources (`epoch_fields`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from hf_finetune.data.mixing import BatchMixer

logger = logging.getLogger(__name__)


class TrainPredictionLog:
    """Training predictions of the current epoch, filled by the trainer's `compute_loss`."""

    def __init__(self) -> None:
        self.predictions: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.losses: list[float] = []

    def add(self, predictions: Any, labels: Any, loss: float) -> None:
        self.predictions.append(np.asarray(predictions).reshape(-1))
        self.labels.append(np.asarray(labels).reshape(-1))
        self.losses.append(float(loss))

    def summary(self) -> dict[str, float] | None:
        """Accuracy, macro-F1 and mean loss of what was logged since the last `reset`; None when empty."""
        if not self.predictions:
            return None
        y_pred, y_true = np.concatenate(self.predictions), np.concatenate(self.labels)
        return {
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "loss": float(np.mean(self.losses)),
        }

    def reset(self) -> None:
        self.predictions.clear()
        self.labels.clear()
        self.losses.clear()


class GapMonitorCallback(TrainerCallback, ExportableState):
    """Logs train vs validation macro-F1 and loss per epoch; in `auto` mode switches mixup on when the gap persists.

    Args:
        log (`TrainPredictionLog`, *optional*): filled by the trainer during each epoch. `FinetuneTrainer` connects
            its own log and mixer to the monitor (also after a resume re-creates the callback from its state).
        mixer (`BatchMixer`, *optional*): switched on in `auto` mode.
        mode (`str`, defaults to `"off"`): `"auto"` lets the monitor switch the mixer on; anything else only logs.
        threshold (`float`, defaults to 0.1): macro-F1 gap that counts as overfitting.
        patience (`int`, defaults to 2): consecutive epochs above the threshold before switching.
    """

    def __init__(
        self,
        log: TrainPredictionLog | None = None,
        mixer: BatchMixer | None = None,
        mode: str = "off",
        threshold: float = 0.1,
        patience: int = 2,
    ) -> None:
        self.log = log
        self.mixer = mixer
        self.mode = mode
        self.threshold = threshold
        self.patience = patience
        self.history: list[dict[str, Any]] = []
        self.epochs_above = 0
        self.switched_at: int | None = None
        self._train: dict[str, float] | None = None

    def state(self) -> dict:
        return {
            "args": {"mode": self.mode, "threshold": self.threshold, "patience": self.patience},
            "attributes": {"history": self.history, "epochs_above": self.epochs_above, "switched_at": self.switched_at},
        }

    def on_train_begin(self, args, state, control, **kwargs):
        if self.log is None:
            self.log = TrainPredictionLog()
        self.log.reset()
        if self.switched_at is not None and self.mixer is not None:  # resumed after the switch
            self.mixer.enabled = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.log is None:
            return
        self._train = self.log.summary()
        self.log.reset()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or self._train is None:
            return
        epoch = int(math.floor(state.epoch + 1e-6)) - 1 if state.epoch >= 1 else 0
        self.observe(epoch, self._train, metrics.get("eval_macro_f1"), metrics.get("eval_loss"))
        self._train = None

    def observe(self, epoch: int, train: dict[str, float], val_macro_f1: float | None, val_loss: float | None) -> dict[str, Any]:
        """Records one epoch's train/validation pair and applies the switching rule; returns the record."""
        gap = None if val_macro_f1 is None else train["macro_f1"] - float(val_macro_f1)
        record: dict[str, Any] = {
            "epoch": epoch,
            "train": train,
            "validation": {"macro_f1": val_macro_f1, "loss": val_loss},
            "gap_macro_f1": gap,
            "mixup": bool(self.mixer and self.mixer.enabled),
        }
        if gap is not None and gap > self.threshold:
            self.epochs_above += 1
        else:
            self.epochs_above = 0
        if (
            self.mode == "auto"
            and self.mixer is not None
            and self.mixer.available
            and not self.mixer.enabled
            and self.epochs_above >= self.patience
        ):
            self.mixer.enabled = True
            self.switched_at = epoch + 1
            record["switched_mixup_on_for_epoch"] = self.switched_at
            logger.info(
                "Gap monitor: train macro-F1 ran %.3f ahead of validation for %d epochs (> %.3f): mixup/CutMix on "
                "from epoch %d.", gap, self.epochs_above, self.threshold, self.switched_at,
            )
        self.history = [r for r in self.history if r["epoch"] != epoch] + [record]
        return record

    def epoch_fields(self, epoch: int) -> dict[str, Any]:
        """What `schedule.json` records for `epoch` (a field source of the ScheduleRecorderCallback)."""
        record = next((r for r in self.history if r["epoch"] == epoch), None)
        if record is None:
            return {}
        fields = {"train_metrics": record["train"], "gap_macro_f1": record["gap_macro_f1"], "mixup": record["mixup"]}
        if "switched_mixup_on_for_epoch" in record:
            fields["mixup_switched_on_for_epoch"] = record["switched_mixup_on_for_epoch"]
        return fields

"""`FinetuneTrainer`: the stock `transformers.Trainer` with layer-wise LR-decay parameter groups.

Documented hooks do the work: `create_optimizer` builds one group pair per stage (frozen stages included) with
absolute LRs and the chosen optimizer (AdamW, RAdam, SGD or the Trainer's `--optim`), `create_scheduler` gates the
schedule per group so unfreezing never rebuilds either, `compute_loss` adds mixup/CutMix soft targets, class
weights, label smoothing, L2-SP and the training-prediction log of the gap monitor, and `training_step` stops the
run on a NaN/inf loss (`interrupt.check_finite_loss`). With `--report-to`, `log`, `training_step` and `evaluate` also
hand every tracker each group's LR, the freeze events and the train/validation gap (`trackers.py`). The loop itself
is transformers'.

Four private methods are overridden where transformers offers no public hook; `PRIVATE_OVERRIDES` says why for
each, and tests/test_trainer_hooks.py fails if a transformers upgrade removes one or changes its signature.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, TypeVar

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer
from transformers import logging as hf_logging

from hf_finetune.backbones.split import split_stages
from hf_finetune.backbones.stages import StageMap, resolve_stages
from hf_finetune.backbones.targets import no_weight_decay_names
from hf_finetune.config.choices import with_fallbacks
from hf_finetune.config.finetune import FinetuneArguments
from hf_finetune.data.mixing import BatchMixer
from hf_finetune.training.callbacks.ema import EmaCallback
from hf_finetune.training.callbacks.freezing import StageUnfreezeCallback
from hf_finetune.training.callbacks.interrupt import check_finite_loss
from hf_finetune.training.callbacks.monitor import GapMonitorCallback, TrainPredictionLog
from hf_finetune.training.callbacks.schedule_log import ScheduleRecorderCallback
from hf_finetune.training.lr_curves import cyclic, one_cycle, uses_plateau, warmup_constant
from hf_finetune.training.lr_schedule import build_staged_scheduler
from hf_finetune.training.param_groups import GroupSpec, build_param_groups, log_param_groups
from hf_finetune.training.regularization import L2SP, balanced_sample_weights, classification_loss
from hf_finetune.training.trackers import freeze_scalars, gap_scalars, learning_rate_scalars

logger = logging.getLogger(__name__)

# Private `Trainer` methods overridden here, and why no public hook would do.
PRIVATE_OVERRIDES: dict[str, str] = {
    "_get_train_sampler": "the only place the Trainer builds its training sampler (`--class-balance sampler`)",
    "_load_callback_state": "a resume re-creates stateful callbacks from their saved state; the new gap monitor and "
    "schedule recorder must be re-connected to this trainer's mixer and prediction log",
    "_load_from_checkpoint": "the Trainer reloads a resumed checkpoint with a non-strict load_state_dict that skips "
    "the ViT family's renamed keys; from_pretrained applies the renaming. It is also the one hook that knows the "
    "resumed checkpoint's path, where `--ema` reads back its average",
    "_load_best_model": "the same non-strict reload for the best checkpoint at the end of training",
}

# Fused AdamW runs on CPU, CUDA and MPS from torch 2.8 on (transformers' own default from that version).
_FUSED_ADAMW = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 8)

CallbackT = TypeVar("CallbackT")


class FinetuneTrainer(Trainer):
    """A `Trainer` whose optimizer has one group per backbone stage (and the head) with layer-wise LR decay.

    Args:
        finetune_args (`FinetuneArguments`, *optional*): the recipe flags (layer decay, head LR, optimizer, LR
            schedule, L2-SP, class balance); defaults if omitted. Undecided fields get `arguments.FALLBACKS`.
        stage_map (`StageMap`, *optional*): the model's stages; discovered by the backbone adapter if omitted.
        class_weights (`torch.Tensor`, *optional*): per-class loss weights (class-weighted cross-entropy).
        mixer (`BatchMixer`, *optional*): mixup/CutMix applied to training batches while `mixer.enabled`.
        train_log (`TrainPredictionLog`, *optional*): receives every training batch's predictions (gap monitor).
        *args, **kwargs: passed to `transformers.Trainer`.
    """

    def __init__(
        self,
        *args: Any,
        finetune_args: FinetuneArguments | None = None,
        stage_map: StageMap | None = None,
        class_weights: torch.Tensor | None = None,
        mixer: BatchMixer | None = None,
        train_log: TrainPredictionLog | None = None,
        **kwargs: Any,
    ) -> None:
        # Undecided fields (a trainer assembled by hand) get FALLBACKS on copies: the caller's objects stay as given.
        self.finetune_args, filled = with_fallbacks(finetune_args or FinetuneArguments())
        if "args" in kwargs and kwargs["args"] is not None:
            kwargs["args"], filled_training = with_fallbacks(kwargs["args"])
            filled += filled_training
        elif len(args) > 1 and args[1] is not None:
            training_args, filled_training = with_fallbacks(args[1])
            args = (args[0], training_args, *args[2:])
            filled += filled_training
        if filled:
            logger.info("No recipe advisor decided %s: using the fixed defaults (arguments.FALLBACKS).", ", ".join(filled))
        super().__init__(*args, **kwargs)
        self.stage_map = stage_map or split_stages(self.model)
        self.group_specs: list[GroupSpec] = []
        self.class_weights = class_weights
        self.mixer = mixer
        self.train_log = train_log
        # What `--report-to` trackers get beyond the Trainer's logs (`trackers.py`): the LRs of the current step, and
        # the last step whose freeze events were sent.
        self.step_learning_rates: dict[str, float] = {}
        self._freeze_sent_at: int | None = None
        # compute_loss returns a per-batch mean: the Trainer divides it by the gradient accumulation steps.
        self.loss_is_scaled_for_ga = False
        self._connect_callbacks()
        self.l2sp: L2SP | None = None
        if self.finetune_args.l2sp > 0:
            head = set(self.stage_map.head.param_names)
            backbone = [(n, p) for n, p in self.model.named_parameters() if n not in head]
            self.l2sp = L2SP(backbone, self.finetune_args.l2sp)  # the pretrained copy, stored once

    @property
    def head_learning_rate(self) -> float:
        if self.finetune_args.head_learning_rate is not None:
            return self.finetune_args.head_learning_rate
        return self.args.learning_rate * self.finetune_args.head_lr_multiplier

    def train_stages(self) -> list[str] | None:
        """`--train-stages` as stage names (surgical fine-tuning), or None."""
        if not self.finetune_args.train_stages:
            return None
        return resolve_stages(self.stage_map, self.finetune_args.train_stages, "--train-stages", type(self.model).__name__)

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        groups, self.group_specs = build_param_groups(
            opt_model,
            self.stage_map,
            base_lr=self.args.learning_rate,
            head_lr=self.head_learning_rate,
            layer_decay=self.finetune_args.layer_decay,
            weight_decay=self.args.weight_decay,
            no_decay_names=no_weight_decay_names(opt_model),
            only=self.train_stages(),
        )
        optimizer_cls, optimizer_kwargs = self._optimizer_cls_and_kwargs(opt_model)
        # Each group carries its own absolute LR; the class-wide default would only be a fallback.
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        log_param_groups(self.group_specs, opt_model)
        return self.optimizer

    def _optimizer_cls_and_kwargs(self, model: torch.nn.Module) -> tuple[type, dict[str, Any]]:
        """`--optimizer`: torch's AdamW / RAdam (decoupled weight decay) / SGD (Nesterov), or the Trainer's `--optim`."""
        name = self.finetune_args.optimizer
        betas = (self.args.adam_beta1, self.args.adam_beta2)
        if name == "adamw":
            # The fused kernel (one pass over all tensors, as the stock Trainer's default `adamw_torch_fused`) keeps
            # the many per-stage groups from costing a per-group launch each step.
            fused = {"fused": True} if _FUSED_ADAMW else {}
            return torch.optim.AdamW, {"betas": betas, "eps": self.args.adam_epsilon, **fused}
        if name == "radam":
            # RAdam's rectified warmup keeps the first updates small, protecting pretrained weights (see seeds/002).
            return torch.optim.RAdam, {"betas": betas, "eps": self.args.adam_epsilon, "decoupled_weight_decay": True}
        if name == "sgd":
            return torch.optim.SGD, {"momentum": 0.9, "nesterov": True}
        return self.get_optimizer_cls_and_kwargs(self.args, model)

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        if self.lr_scheduler is not None:
            return self.lr_scheduler
        optimizer = optimizer or self.optimizer
        curve = self._lr_curve(num_training_steps)
        if curve is not None:
            base = LambdaLR(optimizer, curve)
        else:
            base = super().create_scheduler(num_training_steps, optimizer)
        if isinstance(base, LambdaLR):
            self.lr_scheduler = build_staged_scheduler(base, optimizer)
        else:
            logger.warning(
                "LR scheduler %s is not a LambdaLR: frozen stages keep their scheduled LR (they get no gradients) "
                "and newly unfrozen stages start without an LR ramp.",
                type(base).__name__,
            )
        return self.lr_scheduler

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        if self.args.report_to:
            self._report_step()
        # The Trainer passes no loss to callbacks and, with `logging_nan_inf_filter`, hides a NaN from the logs: the
        # check runs here, after backward and before the optimizer step, so the weights never become NaN.
        loss = super().training_step(model, inputs, num_items_in_batch)
        check_finite_loss(loss, self.state, self.optimizer, self.args.output_dir)
        return loss

    # ---- what the trackers get (`--report-to`; `trackers.py`) -----------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # A training log carries the Trainer's `learning_rate` (group 0, the head's): every group's LR goes beside it,
        # sampled at the same point (the LR the step just taken used).
        if self.args.report_to and "learning_rate" in logs:
            logs.update(self.step_learning_rates)
        super().log(logs, start_time)

    def _report_step(self) -> None:
        """Keeps this step's LRs for the next training log and sends the freeze events of this step once, at this
        step: the unfreeze callback acts in `on_epoch_begin`, before the epoch's first training step."""
        self.step_learning_rates = learning_rate_scalars(self.optimizer)
        unfreeze = self.find_callback(StageUnfreezeCallback)
        step = self.state.global_step
        if unfreeze is None or step == self._freeze_sent_at:
            return
        scalars = freeze_scalars(unfreeze.events, step)
        if scalars:
            self._freeze_sent_at = step
            self.log(scalars)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The Trainer's evaluation (see `_evaluate_raw_and_ema`); then the trackers get the train/validation gap the
        gap monitor computed from it (it reacts to the evaluation, after the Trainer logged the metrics)."""
        monitor = self.find_callback(GapMonitorCallback)
        last = monitor.history[-1] if monitor is not None and monitor.history else None
        metrics = self._evaluate_raw_and_ema(eval_dataset, ignore_keys, metric_key_prefix)
        if self.args.report_to and monitor is not None and monitor.history and monitor.history[-1] is not last:
            self.log(gap_scalars(monitor.history[-1]))
        return metrics

    def _evaluate_raw_and_ema(self, eval_dataset: Any, ignore_keys: list[str] | None, metric_key_prefix: str) -> dict[str, float]:
        """The Trainer's evaluation; with `--ema`, the moving average is scored first on the same split (`eval_ema_*`,
        logged and returned beside the raw metrics), so the callbacks that react to this evaluation see both."""
        ema = self.ema_callback
        if ema is None or ema.average is None or metric_key_prefix != "eval":
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        # The extra pass must not shift training: a DataLoader draws its worker seed from the global RNG even unshuffled,
        # which would change every later augmentation. With the RNG restored, --ema leaves the raw weights' run as is.
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices), ema.averaged_weights(self.model):
            output = self.evaluation_loop(
                self.get_eval_dataloader(eval_dataset), description="Evaluation of the moving average",
                ignore_keys=ignore_keys, metric_key_prefix="eval_ema",
            )
        ema.record(output.metrics, self.state.epoch, self.state.global_step)
        self.log(output.metrics)
        return {**super().evaluate(eval_dataset, ignore_keys, metric_key_prefix), **output.metrics}

    def find_callback(self, kind: type[CallbackT]) -> CallbackT | None:
        """The first callback of class `kind`, looked up on each call: a resume re-creates stateful callbacks from
        their saved state (`_load_callback_state`), replacing the objects the trainer was built with."""
        return next((cb for cb in self.callback_handler.callbacks if isinstance(cb, kind)), None)

    @property
    def ema_callback(self) -> EmaCallback | None:
        return self.find_callback(EmaCallback)

    def _lr_curve(self, num_training_steps: int):
        """The `--lr-schedule` curve, or None for the Trainer's own `--lr-scheduler-type`."""
        kind = self.finetune_args.lr_schedule
        if uses_plateau(kind, self.args.lr_scheduler_type):
            return warmup_constant(self.args.get_warmup_steps(num_training_steps))
        if kind == "one_cycle":
            return one_cycle(num_training_steps)
        if kind == "cyclic":
            epochs = max(1, math.ceil(self.args.num_train_epochs or 1))
            return cyclic(max(1, num_training_steps // epochs))
        return None

    # ---- loss -----------------------------------------------------------------------------

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        """Cross-entropy with label smoothing and optional class weights; mixup/CutMix soft targets while the mixer
        is on; plus the L2-SP penalty while training. Training predictions go to the gap monitor's log."""
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if labels is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        targets = labels
        if model.training and self.mixer is not None and self.mixer.enabled:
            inputs["pixel_values"], targets = self.mixer(inputs["pixel_values"], labels)
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        loss = classification_loss(
            logits, targets, label_smoothing=self.args.label_smoothing_factor or 0.0, class_weights=self.class_weights
        )
        if model.training:
            if self.l2sp is not None:
                loss = loss + self.l2sp.penalty().to(loss)
            if self.train_log is not None:
                self.train_log.add(logits.detach().argmax(-1).cpu(), labels.detach().cpu(), loss.detach().item())
        return (loss, outputs) if return_outputs else loss

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        """`--class-balance sampler`: draws classes equally often (with replacement, seeded); else the Trainer's."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.finetune_args.class_balance != "sampler" or dataset is None:
            return super()._get_train_sampler(train_dataset)
        weights = balanced_sample_weights(dataset.with_format(None)["label"])
        generator = torch.Generator().manual_seed(self.args.seed)
        return torch.utils.data.WeightedRandomSampler(weights, num_samples=len(weights), replacement=True, generator=generator)

    # ---- callbacks sharing the trainer's objects ------------------------------------------------------------------

    def _connect_callbacks(self) -> None:
        """Hands the gap monitor this trainer's prediction log and mixer, and the schedule recorder the monitor's and
        the moving average's per-epoch fields. Needed again after a resume, which re-creates stateful callbacks from
        their saved args."""
        callbacks = self.callback_handler.callbacks
        for callback in callbacks:  # the run's stage map, computed once, instead of each callback splitting again
            if hasattr(callback, "stage_map"):
                callback.stage_map = self.stage_map
        monitor = self.find_callback(GapMonitorCallback)
        if monitor is not None:
            if self.train_log is None:
                self.train_log = monitor.log or TrainPredictionLog()
            monitor.log = self.train_log
            if self.mixer is not None:
                monitor.mixer = self.mixer
        # The gap monitor's and the moving average's per-epoch fields, this trainer's instances (not stale ones).
        sources = [source.epoch_fields for source in (monitor, self.ema_callback) if source is not None]
        for recorder in (cb for cb in callbacks if isinstance(cb, ScheduleRecorderCallback)):
            others = [s for s in recorder.field_sources if not isinstance(getattr(s, "__self__", None), (GapMonitorCallback, EmaCallback))]
            recorder.field_sources = [*sources, *others]

    def _load_callback_state(self) -> None:
        super()._load_callback_state()
        self._connect_callbacks()

    # ---- checkpoint reloading ------------------------------------------------------------
    # transformers 5's save_pretrained writes the checkpoint's original key names for models whose weights are
    # renamed on load (the ViT family: `encoder.layer.0.attention.attention.query` on disk, `layers.0.attention.
    # q_proj` in memory), but Trainer reloads checkpoints (resume, best model) with a raw load_state_dict(strict=
    # False): the renamed tensors are silently skipped, leaving a mix of best and last weights. Reloading through
    # from_pretrained applies the same renaming as the first load, and strict loading makes any gap an error.

    def _can_reload_via_from_pretrained(self, checkpoint: str, model: torch.nn.Module) -> bool:
        from transformers import PreTrainedModel

        plain = isinstance(model, PreTrainedModel) and not hasattr(model, "peft_config")
        return plain and not (self.is_deepspeed_enabled or self.is_fsdp_enabled) and os.path.isfile(
            os.path.join(checkpoint, "config.json")
        )

    def _reload_weights(self, checkpoint: str, model: torch.nn.Module) -> None:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the reload's load report would repeat the first load's
        try:
            reloaded = type(model).from_pretrained(checkpoint, config=model.config)
        finally:
            hf_logging.set_verbosity(verbosity)
        model.load_state_dict(reloaded.state_dict(), strict=True)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The Trainer's `save_model`; into a checkpoint (the Trainer's internal call, before it writes
        trainer_state.json) also the moving average of `--ema`, so a resume continues it. `_internal_call` is the
        Trainer's own mark of a checkpoint save (tests/test_trainer_hooks.py checks the parameter still exists)."""
        super().save_model(output_dir, _internal_call)
        ema = self.ema_callback
        if ema is not None and _internal_call and output_dir and self.is_world_process_zero():
            ema.save(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        if self.ema_callback is not None:
            self.ema_callback.resume_from(resume_from_checkpoint)
        model = self.model if model is None else model
        if not self._can_reload_via_from_pretrained(resume_from_checkpoint, model):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        logger.info("Loading model weights from %s", resume_from_checkpoint)
        self._reload_weights(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        checkpoint = self.state.best_model_checkpoint
        if not self._can_reload_via_from_pretrained(checkpoint, self.model):
            return super()._load_best_model()
        logger.info("Loading the best model from %s (validation %s %.4f)", checkpoint, self.args.metric_for_best_model, self.state.best_metric)
        self._reload_weights(checkpoint, self.model)

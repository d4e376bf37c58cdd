"""`FinetuneTrainer`: the stock `transformers.Trainer` with layer-wise LR-decay parameter groups.

Only documented hooks are overridden: `create_optimizer` builds one group pair per stage
(frozen stages included) with absolute LRs, `create_scheduler` gates the stock schedule per
group so unfreezing never rebuilds either, `training_step` stops the run on a NaN/inf loss
(`interrupt.check_finite_loss`). The loop itself is transformers'.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer
from transformers import logging as hf_logging

from .arguments import FinetuneArguments
from .backbone import StageMap, no_weight_decay_names, split_stages
from .interrupt import check_finite_loss
from .lr_schedule import build_staged_scheduler
from .param_groups import GroupSpec, build_param_groups, log_param_groups

logger = logging.getLogger(__name__)

# A fresh head starts from random weights and must move much further than the pretrained backbone.
HEAD_LR_MULTIPLIER = 10.0


class FinetuneTrainer(Trainer):
    """A `Trainer` whose optimizer has one group per backbone stage (and the head) with layer-wise LR decay.

    Args:
        finetune_args (`FinetuneArguments`, *optional*): the recipe flags (layer decay, head LR); defaults if omitted.
        stage_map (`StageMap`, *optional*): the model's stages; discovered by the backbone adapter if omitted.
        *args, **kwargs: passed to `transformers.Trainer`.
    """

    def __init__(
        self,
        *args: Any,
        finetune_args: FinetuneArguments | None = None,
        stage_map: StageMap | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.finetune_args = finetune_args or FinetuneArguments()
        self.stage_map = stage_map or split_stages(self.model)
        self.group_specs: list[GroupSpec] = []

    @property
    def head_learning_rate(self) -> float:
        if self.finetune_args.head_learning_rate is not None:
            return self.finetune_args.head_learning_rate
        return self.args.learning_rate * HEAD_LR_MULTIPLIER

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
        )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        # Each group carries its own absolute LR; the class-wide default would only be a fallback.
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        log_param_groups(self.group_specs, opt_model)
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        if self.lr_scheduler is not None:
            return self.lr_scheduler
        optimizer = optimizer or self.optimizer
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
        # The Trainer passes no loss to callbacks and, with `logging_nan_inf_filter`, hides a NaN from the logs: the
        # check runs here, after backward and before the optimizer step, so the weights never become NaN.
        loss = super().training_step(model, inputs, num_items_in_batch)
        check_finite_loss(loss, self.state, self.optimizer, self.args.output_dir)
        return loss

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

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
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

"""LoRA fine-tuning with peft: adapters in the backbone, the head trained fully, merged for export.

`apply_lora` wraps a classifier in a peft `PeftModel`. The backbone adapter (`backbone.lora_target_modules`) chooses
where the adapters go unless the user names the modules; the head (`split_stages(model).head`) is a
`modules_to_save` module, i.e. trained fully. Everything else in the recipe works unchanged on the wrapped model:
`split_stages` sees the adapter parameters inside their stages, so layer-wise LR decay and staged unfreezing apply to
adapters stage by stage, while `freezing.set_trainable_stages` keeps every base weight frozen.

`save_lora_model` writes the adapter alone to `OUTPUT_DIR/adapter/` and the merged model (`merge_and_unload`) to
`OUTPUT_DIR`, so `pipeline("image-classification", model=OUTPUT_DIR)` loads it without peft.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from hf_finetune.backbones.split import split_stages
from hf_finetune.backbones.targets import lora_target_modules
from hf_finetune.config.files import ADAPTER_DIR
from hf_finetune.config.finetune import FinetuneArguments

logger = logging.getLogger(__name__)

# Read from the conv module itself by some forward passes (transformers' MobileNetV2/EfficientNet TF "SAME" padding).
_CONV_ATTRIBUTES = ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")


def is_peft_model(model: nn.Module) -> bool:
    """Whether `model` is a peft `PeftModel`."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _keep_batchnorm_in_eval(module: nn.Module, _inputs: Any) -> None:
    if module.training:
        module.eval()


def apply_lora(model: nn.Module, finetune_args: FinetuneArguments) -> nn.Module:
    """Wraps `model` in a peft `PeftModel` with LoRA adapters in the backbone and a fully trained head.

    BatchNorm layers keep their pretrained running statistics (they run in eval mode): like the base weights, they
    are not part of the adapter, so the saved adapter on top of the base checkpoint reproduces the merged model.

    Args:
        model (`torch.nn.Module`):
            An image classifier from `load_model_and_processor`.
        finetune_args (`FinetuneArguments`):
            `lora_r`, `lora_alpha`, `lora_dropout` and `lora_target_modules` (default: per architecture, from
            `backbone.lora_target_modules`).

    Returns:
        `peft.PeftModel`: the wrapped model; only adapter and head parameters require a gradient.
    """
    from peft import LoraConfig, get_peft_model

    head = split_stages(model).head
    targets = finetune_args.lora_target_module_list or lora_target_modules(model)
    config = LoraConfig(
        r=finetune_args.lora_r,
        lora_alpha=finetune_args.lora_alpha,
        lora_dropout=finetune_args.lora_dropout,
        target_modules=targets,
        modules_to_save=list(head.module_names),
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as err:
        raise ValueError(
            f"`--lora-target-modules` {finetune_args.lora_target_modules!r} matches no module LoRA can adapt in "
            f"{type(model).__name__} ({err}). Name Linear/Conv2d modules (or name suffixes) of the backbone, or leave "
            "the flag out for the per-architecture default."
        ) from err
    _expose_conv_attributes(peft_model)
    batchnorms = [m for m in peft_model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for module in batchnorms:
        module.register_forward_pre_hook(_keep_batchnorm_in_eval)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    logger.info(
        "LoRA r=%d alpha=%g dropout=%g on %s; head %s trained fully; %s of %s parameters trainable (%.2f%%)%s",
        finetune_args.lora_r, finetune_args.lora_alpha, finetune_args.lora_dropout,
        targets if isinstance(targets, str) else ", ".join(targets), ", ".join(head.module_names),
        f"{trainable:,}", f"{total:,}", 100.0 * trainable / max(total, 1),
        f"; {len(batchnorms)} BatchNorm layers keep their pretrained statistics" if batchnorms else "",
    )
    return peft_model


def _expose_conv_attributes(peft_model: nn.Module) -> None:
    """Gives each LoRA layer around a convolution the conv's hyperparameters (`stride`, `kernel_size`, ...).

    A model whose forward reads e.g. `self.convolution.stride` (TF-style padding) would otherwise fail once peft has
    replaced that convolution by its LoRA wrapper.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in peft_model.modules():
        if isinstance(module, BaseTunerLayer) and isinstance(module.get_base_layer(), nn.modules.conv._ConvNd):
            base = module.get_base_layer()
            for name in _CONV_ATTRIBUTES:
                if name not in module.__dict__:
                    setattr(module, name, getattr(base, name))


def lora_summary(peft_model: nn.Module) -> dict[str, Any]:
    """What the adapter is, for `run_config.json` and the model card."""
    config = peft_model.peft_config[peft_model.active_adapter]
    targets = config.target_modules
    return {
        "method": "lora",
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
        "modules_to_save": sorted(config.modules_to_save or []),
        "adapter_parameters": sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n),
        "adapter_dir": ADAPTER_DIR,
    }


def save_lora_model(peft_model: nn.Module, output_dir: str) -> nn.Module:
    """Saves the adapter to `output_dir/adapter/` and the merged model to `output_dir`; returns the merged model.

    `merge_and_unload` folds every adapter into its base weight and replaces the head wrapper by the trained head, so
    the saved model is a plain transformers classifier. The peft model is consumed (its base model is modified).

    Args:
        peft_model (`peft.PeftModel`): the trained model.
        output_dir (`str`): the run's output directory.

    Returns:
        `transformers.PreTrainedModel`: the merged model.
    """
    adapter_dir = os.path.join(output_dir, ADAPTER_DIR)
    peft_model.save_pretrained(adapter_dir)
    with torch.no_grad():
        merged = peft_model.merge_and_unload()
    merged.save_pretrained(output_dir)
    logger.info("Saved the LoRA adapter to %s and the merged model to %s", adapter_dir, output_dir)
    return merged

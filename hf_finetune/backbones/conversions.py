"""Checkpoints with no image-classifier class of their own, converted into one on load.

A ViTMAE checkpoint becomes a `ViTForImageClassification` holding its encoder (the decoder and the random masking
are pretraining-only); a CLIP vision tower becomes a `CLIPForImageClassification`. `CONVERSIONS` maps a checkpoint's
`model_type` to the function that says what to load instead; `load_model_and_processor` asks it first.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hf_finetune.backbones.errors import location_error

logger = logging.getLogger(__name__)

# ViTMAEConfig fields that describe the encoder and mean the same thing in ViTConfig (the decoder_* and masking
# fields are pretraining-only).
_MAE_ENCODER_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
    "layer_norm_eps",
    "image_size",
    "patch_size",
    "num_channels",
    "qkv_bias",
)


@dataclass
class LoadPlan:
    """What `load_model_and_processor` calls `from_pretrained` on.

    Args:
        model_cls (`type`): the image-classifier class.
        config (`PretrainedConfig`): its config, labels filled in.
        source (`str`, *optional*): where the weights are; `None` when they come in `extra["state_dict"]`.
        extra (`dict`, *optional*): more `from_pretrained` keyword arguments.
    """

    model_cls: type
    config: Any
    source: str | None
    extra: dict[str, Any] = field(default_factory=dict)


def mae_encoder_as_vit(path: str, original: Any, labels: dict[str, Any], load_kwargs: dict[str, Any]) -> LoadPlan:
    """A ViTMAE checkpoint as `ViTForImageClassification`: the encoder's weights, no decoder, no masking."""
    import transformers

    config = transformers.ViTConfig(
        **{name: getattr(original, name) for name in _MAE_ENCODER_FIELDS},
        **labels,
        architectures=["ViTForImageClassification"],
    )
    logger.info("Loading the ViTMAE encoder of %s as ViTForImageClassification (no decoder).", path)
    return LoadPlan(transformers.ViTForImageClassification, config, path)


def clip_tower_as_classifier(
    path: str, original: Any, labels: dict[str, Any], load_kwargs: dict[str, Any]
) -> LoadPlan:
    """A CLIP vision tower as `CLIPForImageClassification`, its weights handed over as a state dict."""
    import transformers

    config = transformers.CLIPConfig(
        vision_config=original.to_dict(), **labels, architectures=["CLIPForImageClassification"]
    )
    # The tower loads through its own class (which knows every layout it was ever saved in) and is handed to the
    # classifier as a state dict: a key_mapping would be stored on the model and reverted on save_pretrained,
    # writing keys CLIPForImageClassification cannot reload.
    tower_kwargs = {k: v for k, v in load_kwargs.items() if k != "ignore_mismatched_sizes"}
    try:
        tower = transformers.CLIPVisionModel.from_pretrained(path, config=original, **tower_kwargs)
    except (OSError, pickle.UnpicklingError) as err:
        raise location_error(path, err) from err
    state_dict = {f"vision_model.{key}": value for key, value in tower.state_dict().items()}
    logger.info("Loading the CLIP vision tower %s as CLIPForImageClassification.", path)
    return LoadPlan(transformers.CLIPForImageClassification, config, None, {"state_dict": state_dict})


# `model_type` -> `(path, original config, {"id2label", "label2id"}, from_pretrained kwargs) -> LoadPlan`.
CONVERSIONS: dict[str, Callable[[str, Any, dict[str, Any], dict[str, Any]], LoadPlan]] = {
    "vit_mae": mae_encoder_as_vit,
    "clip_vision_model": clip_tower_as_classifier,
}

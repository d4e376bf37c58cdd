"""Loading any image checkpoint as an image classifier with a fresh head for the user's labels.

`load_model_and_processor` takes a Hub id or a local folder, transformers-native or timm, and returns a classifier
loadable afterwards with `AutoModelForImageClassification` and `pipeline("image-classification")`, plus its image
processor. Checkpoints without a classifier class are converted (`conversions`), errors are translated into messages
that say what to pass instead (`errors`), and a head loaded from the checkpoint is kept only when its labels are
exactly the requested ones. `resolve_model` does the cheap first half (location, config, image processor) on its own, so
a run can refuse a bad `--model` before it decodes the dataset's images.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hf_finetune.backbones.conversions import CONVERSIONS, LoadPlan
from hf_finetune.backbones.errors import check_location, location_error, unreadable_config_error
from hf_finetune.backbones.split import split_stages
from hf_finetune.backbones.stages import TRUNCATION_FIELD
from hf_finetune.backbones.truncation import load_truncated

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

# timm's create_model keyword names for the regularisers a user may ask for; forwarded through
# TimmWrapperConfig.model_args when the timm model class accepts them.
_TIMM_MODEL_KWARGS = frozenset({"drop_rate", "drop_path_rate", "attn_drop_rate", "proj_drop_rate", "pos_drop_rate"})

_LABEL_FIELDS = frozenset({"num_labels", "id2label", "label2id"})


def supported_model_types() -> list[str]:
    """The `model_type`s `load_model_and_processor` accepts (timm checkpoints are `timm_wrapper`)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    return sorted({*MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, *CONVERSIONS})


def load_model_and_processor(
    model_name_or_path: str,
    id2label: dict[int, str],
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
    token: str | bool | None = None,
    ignore_mismatched_sizes: bool = True,
    **config_overrides: Any,
) -> tuple[PreTrainedModel, Any]:
    """Loads a checkpoint as an image classifier with a new head of `len(id2label)` outputs, plus its image processor.

    Hub ids and local folders go through the same `from_pretrained` path. transformers image classifiers load through
    `AutoModelForImageClassification`, timm checkpoints through `TimmWrapperForImageClassification`. Checkpoints
    without a classifier class get one: a ViTMAE checkpoint becomes a `ViTForImageClassification` holding its encoder
    (the decoder and the random masking are pretraining-only), a CLIP vision tower a `CLIPForImageClassification`.
    Self-supervised checkpoints (DINO, DINOv2, MAE, CLIP) get a new head; a checkpoint that has a head keeps it only
    when its labels are exactly `id2label` (resuming a fine-tune), otherwise the head is re-initialised even when the
    sizes match. The result saves with `save_pretrained` and reloads with the Auto classes and `pipeline`.

    Args:
        model_name_or_path (`str`):
            A Hub model id (e.g. `"facebook/dinov2-small"`) or a local directory with a `config.json`.
        id2label (`dict[int, str]`):
            The new labels, indices `0 .. n-1`.
        revision (`str`, *optional*, defaults to `None`):
            Hub branch, tag or commit.
        cache_dir (`str`, *optional*, defaults to `None`):
            Hub cache folder.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow model code from the Hub repository; only pass `True` for repositories you trust.
        token (`str` or `bool`, *optional*, defaults to `None`):
            Hub token for private or gated repositories.
        ignore_mismatched_sizes (`bool`, *optional*, defaults to `True`):
            Let a checkpoint head of another size be replaced instead of raising.
        **config_overrides:
            Config fields to set before the model is built (e.g. `drop_path_rate=0.1`, `hidden_dropout_prob=0.1`).
            Applied where the config (or its `vision_config`) has the field; for timm models the regularisers
            `drop_rate`, `drop_path_rate`, ... go to `timm.create_model` when the model accepts them. Others are
            logged and ignored.

    Returns:
        `tuple[PreTrainedModel, Any]`: the classifier (config `id2label`/`label2id` filled in) and its image processor.

    Raises:
        `ValueError`: the path/id does not exist, is not an image model, is not cached while offline, or has no
            image processor; or `id2label` is malformed.
    """
    id2label, label2id = _check_labels(id2label)
    hub_kwargs: dict[str, Any] = {
        "revision": revision,
        "cache_dir": cache_dir,
        "token": token,
        "trust_remote_code": trust_remote_code,
    }
    model_name_or_path, original, processor = resolve_model(model_name_or_path, **hub_kwargs)
    model_type = original.model_type
    load_kwargs: dict[str, Any] = {**hub_kwargs, "ignore_mismatched_sizes": ignore_mismatched_sizes}
    if os.path.isdir(model_name_or_path) and any(Path(model_name_or_path).glob("*.safetensors")):
        load_kwargs["use_safetensors"] = True
    # num_labels follows from id2label; passing both makes transformers warn when the checkpoint had other labels.
    labels = {"id2label": id2label, "label2id": label2id}
    if model_type in CONVERSIONS:
        plan = CONVERSIONS[model_type](model_name_or_path, original, labels, load_kwargs)
    else:
        plan = _native_plan(model_name_or_path, model_type, labels, hub_kwargs)
    if model_type == "timm_wrapper" and getattr(plan.config, "label_names", None) is not None:
        # A label_names list from the checkpoint would be saved back and reload as LABEL_0.. instead of our labels.
        del plan.config.label_names
    _apply_config_overrides(plan.config, config_overrides)

    try:
        model, loading_info = plan.model_cls.from_pretrained(
            plan.source,
            config=plan.config,
            output_loading_info=True,
            **(load_kwargs if plan.source else {}),
            **plan.extra,
        )
    except (OSError, pickle.UnpicklingError) as err:
        raise location_error(model_name_or_path, err) from err
    _refresh_head(model, original, id2label, loading_info, model_name_or_path)
    _fix_tf_batchnorm_momentum(model)
    return model, processor


def resolve_model(
    model_name_or_path: str,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
    token: str | bool | None = None,
) -> tuple[str, Any, Any]:
    """Finds a checkpoint and reads its config and image processor, without loading any weights.

    Cheap (two small files, from the cache when offline): a run calls it before decoding the dataset's images, so a
    wrong id, a model missing from the offline cache, a non-image model or a missing image processor fails in
    seconds instead of after the image check. `load_model_and_processor` starts with it.

    Args:
        model_name_or_path (`str`): a Hub model id or a local directory with a `config.json`.
        revision, cache_dir, trust_remote_code, token: as in `load_model_and_processor`.

    Returns:
        `tuple[str, PretrainedConfig, Any]`: the location to load from (a local path user-expanded), the checkpoint's
        own config and its image processor.

    Raises:
        `ValueError`: as `load_model_and_processor`, naming `--model` and what to pass instead.
    """
    hub_kwargs = {"revision": revision, "cache_dir": cache_dir, "token": token, "trust_remote_code": trust_remote_code}
    location = check_location(model_name_or_path)
    config = _load_config(location, hub_kwargs)
    supported = supported_model_types()
    if config.model_type not in supported:
        raise ValueError(
            f"`--model` {location!r} is a `{config.model_type}` checkpoint, not an image model hf_finetune can "
            f"fine-tune. Supported model types: {', '.join(supported)} (every timm model is `timm_wrapper`)."
        )
    _check_local_weights(location)  # before the processor: missing weights are the first thing to fix
    return location, config, _load_processor(location, hub_kwargs)


def _check_local_weights(location: str) -> None:
    """A local checkpoint folder must hold weights; a Hub id is checked when its weights are downloaded."""
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

    names = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
    if os.path.isdir(location) and not any(os.path.isfile(os.path.join(location, name)) for name in names):
        raise ValueError(
            f"`--model` {location!r} could not be loaded: the folder has a config.json but no file named "
            f"{' or '.join(names)}. Point `--model` at a complete checkpoint (saved with `save_pretrained`) or a Hub id."
        )


def _native_plan(path: str, model_type: str, labels: dict[str, Any], hub_kwargs: dict[str, Any]) -> LoadPlan:
    """A checkpoint with an image-classifier class: `AutoModelForImageClassification`, or the truncated class."""
    import transformers

    if model_type == "timm_wrapper":
        # TimmWrapperConfig.from_dict takes the class count from num_labels, else from the checkpoint's num_classes.
        labels = {**labels, "num_labels": len(labels["id2label"])}
    config = _load_config(path, hub_kwargs, **labels)
    model_cls = transformers.AutoModelForImageClassification
    if getattr(config, TRUNCATION_FIELD, None):
        # A model truncated by hf_finetune: rebuilt with hf_finetune's own copy of its class, never with the
        # modeling file stored next to it.
        model_cls = load_truncated(config)
    return LoadPlan(model_cls, config, path)


def _fix_tf_batchnorm_momentum(model: nn.Module) -> None:
    """Turns TensorFlow-style BatchNorm decay values (e.g. 0.997) into PyTorch momentum (0.003).

    transformers' MobileNetV2 passes TF's decay straight to `nn.BatchNorm2d(momentum=0.997)`: in PyTorch that makes
    every training batch overwrite the running statistics, so a trained stage evaluates with the last batch's
    statistics. A PyTorch momentum above 0.5 is never intended; `1 - m` restores the TF behaviour.
    """
    fixed = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.momentum is not None and module.momentum > 0.5:
            module.momentum = 1.0 - module.momentum
            fixed += 1
    if fixed:
        logger.warning("Set the BatchNorm momentum of %d layers from TF-style decay to PyTorch momentum (1 - m).", fixed)


def _check_labels(id2label: dict[int, str]) -> tuple[dict[int, str], dict[str, int]]:
    if not id2label:
        raise ValueError("`id2label` is empty: pass one entry per class, e.g. {0: 'cat', 1: 'dog'}.")
    try:
        normalised = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        raise ValueError(f"`id2label` keys must be class indices, got {list(id2label)}.") from None
    if sorted(normalised) != list(range(len(normalised))):
        raise ValueError(f"`id2label` keys must be 0 .. {len(normalised) - 1}, got {sorted(normalised)}.")
    names = list(normalised.values())
    if len(set(names)) != len(names):
        raise ValueError(f"`id2label` names must be unique, got {names}.")
    normalised = dict(sorted(normalised.items()))
    return normalised, {name: index for index, name in normalised.items()}


def _load_config(value: str, hub_kwargs: dict[str, Any], **kwargs: Any):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(value, **hub_kwargs, **kwargs)
    except OSError as err:
        raise location_error(value, err) from err
    except ValueError as err:
        if "trust_remote_code" in str(err) and hub_kwargs.get("trust_remote_code"):
            raise
        raise unreadable_config_error(value, err, supported_model_types()) from err


def _apply_config_overrides(config: Any, overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        if key in _LABEL_FIELDS:
            raise ValueError(f"`{key}` cannot be overridden: the labels come from the `id2label` argument.")
        applied = []
        for target in (config, getattr(config, "vision_config", None)):
            if target is not None and key in target.to_dict():
                setattr(target, key, value)
                applied.append(type(target).__name__)
        if config.model_type == "timm_wrapper" and key in _TIMM_MODEL_KWARGS and _timm_accepts(config, key):
            config.model_args = {**(config.model_args or {}), key: value}
            applied.append(f"timm.create_model({config.architecture!r})")
        if applied:
            logger.info("Config override %s=%r applied to %s.", key, value, ", ".join(applied))
        else:
            logger.warning(
                "Config override `%s=%r` ignored: %s (%s) has no such field.",
                key,
                value,
                type(config).__name__,
                config.model_type,
            )


def _timm_accepts(config: Any, key: str) -> bool:
    """Whether the timm model class behind `config.architecture` takes keyword `key` (probed on the meta device)."""
    import timm

    try:
        with torch.device("meta"):
            probe = timm.create_model(config.architecture, pretrained=False, num_classes=0)
    except Exception:  # noqa: BLE001 - a probe failure only means we cannot forward the override
        return False
    return key in inspect.signature(type(probe).__init__).parameters


def _refresh_head(
    model: nn.Module, original: Any, id2label: dict[int, str], loading_info: dict[str, Any], source: str
) -> None:
    """Re-initialises head weights that came from the checkpoint unless its labels are exactly ours."""
    head = split_stages(model).head
    fresh = set(loading_info.get("missing_keys", ())) | {
        key[0] if isinstance(key, tuple) else key for key in loading_info.get("mismatched_keys", ())
    }
    loaded = [name for name in head.param_names if name not in fresh]
    if not loaded:
        logger.info("New %d-class head for %s.", len(id2label), source)
        return
    original_labels = {int(k): v for k, v in (getattr(original, "id2label", None) or {}).items()}
    if original_labels == id2label:
        logger.info("Keeping the head of %s: its labels are exactly the requested ones.", source)
        return
    logger.info("Re-initialising the head of %s: its labels differ from the requested ones.", source)
    with torch.no_grad():
        for module_name in head.module_names:
            for module in model.get_submodule(module_name).modules():
                for tensor in itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False)):
                    if hasattr(tensor, "_is_hf_initialized"):
                        del tensor._is_hf_initialized
                module.__dict__.pop("_is_hf_initialized", None)
                if hasattr(model, "_init_weights"):
                    model._init_weights(module)
                elif hasattr(module, "reset_parameters"):
                    module.reset_parameters()


def _load_processor(value: str, hub_kwargs: dict[str, Any]) -> Any:
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(value, **hub_kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"`--model` {value!r} has no usable image processor ({err}). hf_finetune takes the input size and "
            "normalisation from the checkpoint's own preprocessor_config.json (or timm pretrained_cfg), never from "
            "defaults: add one with `AutoImageProcessor.save_pretrained`."
        ) from err

"""The one place that knows a backbone's structure.

`load_model_and_processor` turns any image checkpoint (Hub id or local folder, transformers-native or timm) into an
image classifier with a fresh head for the user's labels, loadable afterwards with `AutoModelForImageClassification`
and `pipeline("image-classification")`. `split_stages` cuts that classifier into ordered stages
(embeddings -> blocks.0 ... blocks.{N-1} -> norm -> head) that freezing, layer-wise LR decay and PEFT all ask about;
`no_weight_decay_names` says which parameters must not be decayed. Nothing here builds optimizers or freezes anything.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hf_finetune.backbones.split import split_stages
from hf_finetune.backbones.stages import TRUNCATION_FIELD

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


# Checkpoint types with no image classifier class of their own, converted on load (see `load_model_and_processor`).
_MAE_TYPES = ("vit_mae",)


_CLIP_VISION_TYPES = ("clip_vision_model",)


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


# timm's create_model keyword names for the regularisers a user may ask for; forwarded through
# TimmWrapperConfig.model_args when the timm model class accepts them.
_TIMM_MODEL_KWARGS = frozenset({"drop_rate", "drop_path_rate", "attn_drop_rate", "proj_drop_rate", "pos_drop_rate"})


_LABEL_FIELDS = frozenset({"num_labels", "id2label", "label2id"})


def supported_model_types() -> list[str]:
    """The `model_type`s `load_model_and_processor` accepts (timm checkpoints are `timm_wrapper`)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    return sorted({*MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, *_MAE_TYPES, *_CLIP_VISION_TYPES})


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
    import transformers

    id2label, label2id = _check_labels(id2label)
    hub_kwargs: dict[str, Any] = {
        "revision": revision,
        "cache_dir": cache_dir,
        "token": token,
        "trust_remote_code": trust_remote_code,
    }
    model_name_or_path = _check_location(model_name_or_path)
    original = _load_config(model_name_or_path, hub_kwargs)
    model_type = original.model_type
    supported = supported_model_types()
    if model_type not in supported:
        raise ValueError(
            f"`--model` {model_name_or_path!r} is a `{model_type}` checkpoint, not an image model hf_finetune can "
            f"fine-tune. Supported model types: {', '.join(supported)} (every timm model is `timm_wrapper`)."
        )
    load_kwargs: dict[str, Any] = {**hub_kwargs, "ignore_mismatched_sizes": ignore_mismatched_sizes}
    if os.path.isdir(model_name_or_path) and any(Path(model_name_or_path).glob("*.safetensors")):
        load_kwargs["use_safetensors"] = True
    tower_kwargs = {k: v for k, v in load_kwargs.items() if k != "ignore_mismatched_sizes"}
    # num_labels follows from id2label; passing both makes transformers warn when the checkpoint had other labels.
    labels = {"id2label": id2label, "label2id": label2id}
    source: str | None = model_name_or_path

    if model_type in _MAE_TYPES:
        config = transformers.ViTConfig(
            **{name: getattr(original, name) for name in _MAE_ENCODER_FIELDS},
            **labels,
            architectures=["ViTForImageClassification"],
        )
        model_cls, extra = transformers.ViTForImageClassification, {}
        logger.info("Loading the ViTMAE encoder of %s as ViTForImageClassification (no decoder).", model_name_or_path)
    elif model_type in _CLIP_VISION_TYPES:
        config = transformers.CLIPConfig(
            vision_config=original.to_dict(), **labels, architectures=["CLIPForImageClassification"]
        )
        # The tower loads through its own class (which knows every layout it was ever saved in) and is handed to the
        # classifier as a state dict: a key_mapping would be stored on the model and reverted on save_pretrained,
        # writing keys CLIPForImageClassification cannot reload.
        try:
            tower = transformers.CLIPVisionModel.from_pretrained(model_name_or_path, config=original, **tower_kwargs)
        except (OSError, pickle.UnpicklingError) as err:
            raise _location_error(model_name_or_path, err) from err
        state_dict = {f"vision_model.{key}": value for key, value in tower.state_dict().items()}
        model_cls, extra = transformers.CLIPForImageClassification, {"state_dict": state_dict}
        source = None  # weights come from state_dict
        logger.info("Loading the CLIP vision tower %s as CLIPForImageClassification.", model_name_or_path)
    else:
        if model_type == "timm_wrapper":
            # TimmWrapperConfig.from_dict takes the class count from num_labels, else from the checkpoint's num_classes.
            labels["num_labels"] = len(id2label)
        config = _load_config(model_name_or_path, hub_kwargs, **labels)
        model_cls, extra = transformers.AutoModelForImageClassification, {}
        if getattr(config, TRUNCATION_FIELD, None):
            # A model truncated by hf_finetune: rebuilt with hf_finetune's own copy of its class, never with the
            # modeling file stored next to it.
            from hf_finetune.backbones.truncation import load_truncated

            model_cls = load_truncated(config)
    if model_type == "timm_wrapper" and getattr(config, "label_names", None) is not None:
        # A label_names list from the checkpoint would be saved back and reload as LABEL_0.. instead of our labels.
        del config.label_names
    _apply_config_overrides(config, config_overrides)

    try:
        model, loading_info = model_cls.from_pretrained(
            source, config=config, output_loading_info=True, **(load_kwargs if source else {}), **extra
        )
    except (OSError, pickle.UnpicklingError) as err:
        raise _location_error(model_name_or_path, err) from err
    _refresh_head(model, original, id2label, loading_info, model_name_or_path)
    _fix_tf_batchnorm_momentum(model)
    processor = _load_processor(model_name_or_path, hub_kwargs)
    return model, processor


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


def _looks_like_local_path(value: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if value.startswith((".", "~", os.sep)) or os.path.isabs(value) or (os.altsep and os.altsep in value):
        return True
    try:
        validate_repo_id(value)
    except HFValidationError:
        return True
    return False


def _not_found_message(value: str) -> str:
    return (
        f"`--model` {value!r} does not exist: pass a Hugging Face Hub model id (e.g. 'facebook/dinov2-small') or a "
        "local directory containing a config.json."
    )


def _check_location(value: str) -> str:
    """Returns the local directory (user-expanded) or the Hub id to load; raises for paths that cannot be either."""
    value = os.fspath(value)
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"`--model` {value!r} is a directory without a config.json: pass a Hugging Face Hub model id or a "
                "local directory saved with `save_pretrained` (or in the timm Hub layout)."
            )
        return str(path)
    if path.exists() or _looks_like_local_path(value):
        raise ValueError(_not_found_message(value))
    return value


def _caused_by(err: BaseException, types: tuple[type[BaseException], ...], phrases: tuple[str, ...]) -> bool:
    """Whether `err` or an exception in its cause/context chain is one of `types` or says one of `phrases`."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, types) or any(phrase in str(seen).lower() for phrase in phrases):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _location_error(value: str, err: BaseException) -> ValueError:
    """Turns an OSError (or a refused pickle) from a `from_pretrained` call into a ValueError that says what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled

    if isinstance(err, pickle.UnpicklingError):
        # transformers reads .bin/.pth weights with torch.load(weights_only=True): anything but tensors is refused.
        reason = re.search(r"WeightsUnpickler error: (.*?)(?: Please use|$)", str(err), re.S)
        return ValueError(
            f"`--model` {value!r}: refused to load its pickled weights (pytorch_model.bin/.pth): they hold Python "
            f"objects other than tensors, which could run code when loaded ({reason.group(1).strip() if reason else err}). "
            "Use a checkpoint with model.safetensors; for weights you trust, load them once with "
            "`torch.load(..., weights_only=False)` and re-save with `save_pretrained` (safetensors)."
        )
    if os.path.isdir(value):
        return ValueError(f"`--model` {value!r} could not be loaded: {err}")
    offline = getattr(constants, "HF_HUB_OFFLINE", False)
    if offline or _caused_by(
        err,
        (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError),
        ("couldn't connect", "offline mode"),
    ):
        return ValueError(
            f"`--model` {value!r} is not a local directory and is not in the Hugging Face cache, and the Hub cannot "
            f"be reached (offline). Download it once with network access (e.g. `hf download {value}`), or pass a "
            "local directory with a config.json; set HF_HUB_OFFLINE=1 only when the cache already holds the model."
        )
    if _caused_by(err, (GatedRepoError,), ("gated repo",)):
        return ValueError(
            f"`--model` {value!r} is a gated Hub repository: accept its licence on the Hub, then pass `token` "
            f"(or run `hf auth login`). ({err})"
        )
    return ValueError(f"{_not_found_message(value)} ({err})")


def _load_config(value: str, hub_kwargs: dict[str, Any], **kwargs: Any):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(value, **hub_kwargs, **kwargs)
    except OSError as err:
        raise _location_error(value, err) from err
    except ValueError as err:
        if "trust_remote_code" in str(err):
            if hub_kwargs.get("trust_remote_code"):
                raise
            raise ValueError(
                f"`--model` {value!r} needs custom Python code from its repository to load (its config.json has an "
                "`auto_map`). hf_finetune does not run it unless you pass `--trust-remote-code`: do that only for a "
                "repository you trust, after reading its .py files."
            ) from err
        raise ValueError(
            f"`--model` {value!r} has a config.json transformers cannot read as a model config ({err}). "
            f"Supported model types: {', '.join(supported_model_types())}."
        ) from err


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

"""Tiny random checkpoints for tests: every backbone family hf_finetune supports, saved in its Hub layout.

Each kind is built from a config (hidden size ~32, 2 blocks, 32x32 images where the architecture allows), saved
with `save_pretrained` together with a matching image processor, so tests load it through exactly the
`from_pretrained` path the CLI uses. Nothing here touches the network.

Usage:
    path = save_tiny_model("dinov2", tmp_path / "dinov2")
    model, processor = load_model_and_processor(path, {0: "cat", 1: "dog"})
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

IMAGE_SIZE = 32
# A "pretrained" classification checkpoint carries its own (ImageNet-like) label set; fine-tuning must replace it.
PRETRAINED_LABELS = ("tench", "goldfish", "great white shark", "tiger shark", "hammerhead")

TINY_KINDS: tuple[str, ...] = (
    "vit",
    "deit",
    "dinov2",
    "dinov2_registers",
    "dino_vit",
    "beit",
    "vit_mae",
    "clip_vision",
    "convnext",
    "resnet",
    "swin",
    "mobilenet_v2",
    "efficientnet",
    "timm",
    "timm_vit",
)
# Checkpoints without a classification head (self-supervised or contrastive pretraining).
HEADLESS_KINDS: frozenset[str] = frozenset({"dinov2", "dinov2_registers", "dino_vit", "vit_mae", "clip_vision", "clip"})
# Not in TINY_KINDS (kept out of every parametrised test for speed): the full two-tower CLIPModel checkpoint, the
# layout of e.g. openai/clip-vit-base-patch32.
EXTRA_KINDS: tuple[str, ...] = ("clip",)

_VIT_DIMS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
_PATCH = dict(image_size=IMAGE_SIZE, patch_size=8)
_TIMM_ARCH = {"timm": "test_efficientnet", "timm_vit": "test_vit"}


def _labels(num_labels: int | None) -> dict:
    if num_labels is None:
        names = list(PRETRAINED_LABELS)
    else:
        names = [f"class_{i}" for i in range(num_labels)]
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def _square_processor(cls_name: str, **extra):
    import transformers

    cls = getattr(transformers, cls_name)
    return cls(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, **extra)


def _crop_processor(cls_name: str, **extra):
    import transformers

    cls = getattr(transformers, cls_name)
    return cls(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True,
        **extra,
    )


def _build_transformers_model(kind: str, num_labels: int | None):
    """Returns (model, image_processor) for a transformers-native kind."""
    import transformers as tf

    labels = _labels(num_labels)
    headless = kind in HEADLESS_KINDS and num_labels is None
    if kind == "vit":
        model = tf.ViTForImageClassification(tf.ViTConfig(**_VIT_DIMS, **_PATCH, **labels))
        return model, _square_processor("ViTImageProcessor")
    if kind == "deit":
        # The distilled variant: a cls head and a distillation head, as facebook/deit-*-distilled-* ship.
        model = tf.DeiTForImageClassificationWithTeacher(tf.DeiTConfig(**_VIT_DIMS, **_PATCH, **labels))
        return model, _crop_processor("DeiTImageProcessor")
    if kind in ("dinov2", "dinov2_registers"):
        dims = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, **_PATCH)
        if kind == "dinov2":
            config = tf.Dinov2Config(**dims, **labels)
            model = tf.Dinov2Model(config) if headless else tf.Dinov2ForImageClassification(config)
        else:
            config = tf.Dinov2WithRegistersConfig(**dims, num_register_tokens=2, **labels)
            model = (
                tf.Dinov2WithRegistersModel(config)
                if headless
                else tf.Dinov2WithRegistersForImageClassification(config)
            )
        return model, _crop_processor("BitImageProcessor")
    if kind == "dino_vit":
        # facebook/dino-vits16 layout: a bare ViTModel (with its unused pooler), architectures=["ViTModel"].
        config = tf.ViTConfig(**_VIT_DIMS, **_PATCH, **labels)
        model = tf.ViTModel(config) if headless else tf.ViTForImageClassification(config)
        return model, _square_processor("ViTImageProcessor")
    if kind == "beit":
        config = tf.BeitConfig(
            **_VIT_DIMS,
            **_PATCH,
            use_relative_position_bias=True,
            use_mean_pooling=True,
            layer_scale_init_value=0.1,
            **labels,
        )
        return tf.BeitForImageClassification(config), _crop_processor("BeitImageProcessor")
    if kind == "vit_mae":
        if num_labels is not None:
            raise ValueError("`vit_mae` has no classification model in transformers; save it headless.")
        config = tf.ViTMAEConfig(
            **_VIT_DIMS,
            **_PATCH,
            decoder_hidden_size=32,
            decoder_num_hidden_layers=1,
            decoder_num_attention_heads=2,
            decoder_intermediate_size=64,
        )
        return tf.ViTMAEForPreTraining(config), _square_processor("ViTImageProcessor")
    if kind in ("clip_vision", "clip"):
        vision = dict(**_VIT_DIMS, **_PATCH, projection_dim=16)
        if kind == "clip_vision" and headless:
            # The vision tower alone (model_type "clip_vision_model"), as CLIPVisionModel.save_pretrained writes it.
            model = tf.CLIPVisionModel(tf.CLIPVisionConfig(**vision))
        else:
            text = dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                vocab_size=64,
                max_position_embeddings=16,
                projection_dim=16,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
            config = tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16, **labels)
            model = tf.CLIPModel(config) if headless else tf.CLIPForImageClassification(config)
        return model, _crop_processor("CLIPImageProcessor")
    if kind == "convnext":
        config = tf.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1], image_size=IMAGE_SIZE, **labels)
        return tf.ConvNextForImageClassification(config), _crop_processor("ConvNextImageProcessor")
    if kind == "resnet":
        config = tf.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_type="basic", **labels
        )
        return tf.ResNetForImageClassification(config), _crop_processor("ConvNextImageProcessor")
    if kind == "swin":
        config = tf.SwinConfig(
            image_size=IMAGE_SIZE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, **labels
        )
        return tf.SwinForImageClassification(config), _square_processor("ViTImageProcessor")
    if kind == "mobilenet_v2":
        config = tf.MobileNetV2Config(depth_multiplier=0.25, image_size=IMAGE_SIZE, **labels)
        return tf.MobileNetV2ForImageClassification(config), _crop_processor("MobileNetV2ImageProcessor")
    if kind == "efficientnet":
        config = tf.EfficientNetConfig(
            image_size=IMAGE_SIZE,
            width_coefficient=0.25,
            depth_coefficient=0.5,
            # hidden_dim must equal the top conv width, round_filters(1280 * width_coefficient).
            hidden_dim=320,
            **labels,
        )
        return tf.EfficientNetForImageClassification(config), _crop_processor("EfficientNetImageProcessor")
    raise ValueError(f"Unknown tiny model kind {kind!r}; expected one of {TINY_KINDS + EXTRA_KINDS}.")


def _save_timm(kind: str, directory: Path, num_labels: int | None) -> None:
    """Writes a timm model in the timm Hub layout (config.json with pretrained_cfg + model.safetensors)."""
    import timm
    from timm.models import save_for_hf

    num_classes = len(PRETRAINED_LABELS) if num_labels is None else num_labels
    model = timm.create_model(_TIMM_ARCH[kind], pretrained=False, num_classes=num_classes)
    # test_vit has a fixed 160px position table; the CNN takes any size, so shrink its processor to 32px.
    data_config = None if kind == "timm_vit" else {"input_size": (3, IMAGE_SIZE, IMAGE_SIZE)}
    save_for_hf(model, str(directory), safe_serialization=True, data_config=data_config)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    # Same edits as ../shared/models/efficientnet_lite0 (see its SOURCE.txt): timm writes num_classes into
    # model_args, which TimmWrapper passes a second time ("multiple values for keyword argument 'num_classes'");
    # and label_names would survive a relabelled from_pretrained.
    config.pop("model_args", None)
    config.pop("label_names", None)
    if num_labels is not None:
        # A fine-tuned checkpoint, as TimmWrapperConfig.save_pretrained writes it: labels as `label_names`.
        config["label_names"] = list(_labels(num_labels)["id2label"].values())
    config_path.write_text(json.dumps(config, indent=2))


def save_tiny_model(kind: str, directory: str | Path, num_labels: int | None = None) -> str:
    """Saves a tiny random checkpoint of `kind` and its image processor into `directory`.

    Args:
        kind (`str`):
            One of `TINY_KINDS` (or `EXTRA_KINDS`).
        directory (`str` or `Path`):
            Output folder, created if needed.
        num_labels (`int`, *optional*, defaults to `None`):
            `None` saves a "pretrained"-like checkpoint: a 5-label ImageNet-style head for classification
            architectures, no head for self-supervised ones. An integer saves a classifier with that many labels
            (`class_0`, ...).

    Returns:
        `str`: the directory, ready for `from_pretrained`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if kind in _TIMM_ARCH:
        _save_timm(kind, directory, num_labels)
        return str(directory)
    model, processor = _build_transformers_model(kind, num_labels)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)

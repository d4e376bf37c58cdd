"""hf_finetune.backbone: loading any image checkpoint as a classifier, stage discovery, weight-decay exemptions."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from hf_finetune.backbones.stages import Stage, StageMap
from hf_finetune.backbones.loading import load_model_and_processor
from hf_finetune.backbones.targets import no_weight_decay_names
from hf_finetune.backbones.split import split_stages

try:
    from tests.tiny_models import EXTRA_KINDS, HEADLESS_KINDS, TINY_KINDS, save_tiny_model
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from tiny_models import EXTRA_KINDS, HEADLESS_KINDS, TINY_KINDS, save_tiny_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LABELS = {0: "cat", 1: "dog", 2: "fish"}
KINDS = TINY_KINDS + EXTRA_KINDS

# (family, number of blocks, has a final-norm stage) for every tiny kind: pins the split down per architecture.
EXPECTED_SPLIT = {
    "vit": ("vit", 2, True),
    "deit": ("deit", 2, True),
    "dinov2": ("dinov2", 2, True),
    "dinov2_registers": ("dinov2_with_registers", 2, True),
    "dino_vit": ("vit", 2, True),
    "beit": ("beit", 2, True),
    "vit_mae": ("vit", 2, True),
    "clip_vision": ("clip", 2, True),
    "clip": ("clip", 2, True),
    "convnext": ("convnext", 4, True),  # one stage per downsampling stage
    "resnet": ("resnet", 4, False),  # ResNet has no final norm
    "swin": ("swin", 2, True),
    "mobilenet_v2": ("mobilenet_v2", 6, True),  # conv_1x1 is the "norm"; 16 blocks in 6 bottleneck groups
    "efficientnet": ("efficientnet", 7, True),  # top_conv + top_bn are the "norm"
    "timm": ("timm:efficientnet", 5, True),  # test_efficientnet has 5 block stages
    "timm_vit": ("timm:vision_transformer", 6, True),  # test_vit has 6 blocks
}
# Parameters (by last name component) that must never be decayed wherever they appear.
TOKEN_NAMES = {
    "cls_token",
    "pos_embed",
    "position_embeddings",
    "distillation_token",
    "register_tokens",
    "mask_token",
    "class_embedding",
    "relative_position_bias_table",
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Saves each tiny checkpoint once per module, on demand."""
    root = tmp_path_factory.mktemp("checkpoints")
    cache: dict[tuple, str] = {}

    def get(kind: str, num_labels: int | None = None) -> str:
        key = (kind, num_labels)
        if key not in cache:
            cache[key] = save_tiny_model(kind, root / f"{kind}-{num_labels}", num_labels=num_labels)
        return cache[key]

    return get


@pytest.fixture(scope="module", params=KINDS)
def loaded(request, checkpoints):
    kind = request.param
    path = checkpoints(kind)
    model, processor = load_model_and_processor(path, LABELS)
    return kind, path, model, processor


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8))


def _logits(model, processor, image: Image.Image) -> torch.Tensor:
    inputs = processor(image, return_tensors="pt")
    with torch.no_grad():
        return model(pixel_values=inputs["pixel_values"]).logits[0]


def _checkpoint_tensors(path: str) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in Path(path).glob("*.safetensors"):
        tensors.update(load_file(file))
    return tensors


def _in_checkpoint(tensor: torch.Tensor, checkpoint: dict[str, torch.Tensor]) -> bool:
    return any(t.shape == tensor.shape and torch.equal(t, tensor) for t in checkpoint.values())


def test_head_has_our_labels(loaded):
    kind, _, model, processor = loaded
    assert model.config.num_labels == 3
    assert model.config.id2label == LABELS
    assert model.config.label2id == {"cat": 0, "dog": 1, "fish": 2}
    assert _logits(model, processor, _image()).shape == (3,)


def test_stages_ordered_and_named(loaded):
    kind, _, model, _ = loaded
    stage_map = split_stages(model)
    family, num_blocks, has_norm = EXPECTED_SPLIT[kind]
    expected = ["embeddings", *(f"blocks.{i}" for i in range(num_blocks)), *(["norm"] if has_norm else []), "head"]
    assert [s.name for s in stage_map.stages] == expected
    assert stage_map.family == family
    assert stage_map.head is stage_map.stages[-1]
    assert [s.name for s in stage_map.backbone] == expected[:-1]
    # The head is the new classifier and nothing else: it outputs our 3 classes.
    head_params = dict(model.named_parameters())
    assert all(head_params[n].shape[0] == 3 for n in stage_map.head.param_names if n.endswith("weight"))


def test_stages_partition_parameters(loaded):
    _, _, model, _ = loaded
    stage_map = split_stages(model)
    names = [n for n, _ in model.named_parameters()]
    assigned = [n for stage in stage_map.stages for n in stage.param_names]
    assert sorted(assigned) == sorted(names)  # every parameter exactly once
    modules = dict(model.named_modules())
    for depth, stage in enumerate(stage_map.stages):
        assert stage.param_names, stage.name
        for name in stage.param_names:
            assert stage_map.stage_of(name) is stage
            assert stage_map.depth_of(name) == depth
        for module_name in stage.module_names:
            inside = [f"{module_name}.{n}" for n, _ in modules[module_name].named_parameters()]
            assert inside and set(inside) <= set(stage.param_names), (stage.name, module_name)
    with pytest.raises(KeyError, match="not a parameter"):
        stage_map.depth_of("no.such.param")


def test_head_is_fresh_and_backbone_is_pretrained(loaded):
    kind, path, model, _ = loaded
    checkpoint = _checkpoint_tensors(path)
    stage_map = split_stages(model)
    params = dict(model.named_parameters())
    head = set(stage_map.head.param_names)
    for name, param in params.items():
        if name in head:
            assert not _in_checkpoint(param.detach(), checkpoint), f"{kind}: head {name} came from the checkpoint"
        else:
            assert _in_checkpoint(param.detach(), checkpoint), f"{kind}: {name} was not loaded from the checkpoint"
    if kind in HEADLESS_KINDS:
        assert not any("classifier" in key for key in checkpoint)


def test_mae_encoder_weights_land_in_vit(checkpoints):
    path = checkpoints("vit_mae")
    model, _ = load_model_and_processor(path, LABELS)
    assert type(model).__name__ == "ViTForImageClassification"
    assert model.config.model_type == "vit"
    checkpoint = _checkpoint_tensors(path)
    pairs = {
        "vit.embeddings.cls_token": model.vit.embeddings.cls_token,
        "vit.embeddings.position_embeddings": model.vit.embeddings.position_embeddings,
        "vit.embeddings.patch_embeddings.projection.weight": model.vit.embeddings.patch_embeddings.projection.weight,
        "vit.encoder.layer.1.attention.attention.key.weight": model.vit.layers[1].attention.k_proj.weight,
        "vit.encoder.layer.1.output.dense.weight": model.vit.layers[1].mlp.fc2.weight,
        "vit.layernorm.weight": model.vit.layernorm.weight,
    }
    for key, param in pairs.items():
        assert torch.equal(checkpoint[key], param.detach()), key
    # No masking: the classifier sees every patch, deterministically (ViTMAEModel drops 75% at random).
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model.vit(x).last_hidden_state
    assert out.shape[1] == 1 + (32 // 8) ** 2
    assert torch.equal(out, model.vit(x).last_hidden_state)


def test_save_reload_and_pipeline_give_same_logits(loaded, tmp_path):
    from transformers import AutoModelForImageClassification, pipeline

    kind, _, model, processor = loaded
    image = _image(1)
    expected = _logits(model, processor, image)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(reloaded) is type(model)
    assert reloaded.config.id2label == LABELS
    torch.testing.assert_close(_logits(reloaded, processor, image), expected)

    classifier = pipeline("image-classification", model=str(tmp_path), function_to_apply="none", top_k=3)
    scores = {p["label"]: p["score"] for p in classifier(image)}
    assert set(scores) == set(LABELS.values())  # our names, not LABEL_0
    for index, label in LABELS.items():
        assert scores[label] == pytest.approx(expected[index].item(), abs=1e-4)


def test_no_weight_decay_names(loaded):
    kind, _, model, _ = loaded
    exempt = no_weight_decay_names(model)
    params = dict(model.named_parameters())
    assert exempt <= set(params)
    for module_name, module in model.named_modules():
        own = {f"{module_name}.{n}" if module_name else n: p for n, p in module.named_parameters(recurse=False)}
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            assert f"{module_name}.weight" not in exempt, f"{kind}: weight matrix {module_name} exempt"
        if isinstance(module, (nn.LayerNorm, nn.modules.batchnorm._NormBase, nn.GroupNorm)) or type(
            module
        ).__name__.endswith("Norm"):
            assert set(own) <= exempt, f"{kind}: norm {module_name} decayed"
    for name, param in params.items():
        if name.endswith(".bias") or name.rsplit(".", 1)[-1] in TOKEN_NAMES:
            assert name in exempt, f"{kind}: {name} decayed"
    if kind == "clip_vision":  # an nn.Embedding table, 2-D, exempt by name
        assert "vision_model.embeddings.position_embedding.weight" in exempt
    if kind == "timm_vit":  # from timm's own model.no_weight_decay()
        assert {"timm_model.cls_token", "timm_model.pos_embed"} <= exempt


@pytest.mark.parametrize("kind", ["vit", "convnext", "timm"])
def test_same_size_head_is_reinitialised_unless_labels_match(kind, checkpoints, tmp_path):
    from transformers import AutoModelForImageClassification

    path = checkpoints(kind, num_labels=3)
    checkpoint = _checkpoint_tensors(path)

    model, _ = load_model_and_processor(path, LABELS)  # same size, other names
    head = split_stages(model).head
    params = dict(model.named_parameters())
    assert not any(_in_checkpoint(params[n].detach(), checkpoint) for n in head.param_names if n.endswith("weight"))

    own_labels = {0: "class_0", 1: "class_1", 2: "class_2"}
    resumed, _ = load_model_and_processor(path, own_labels)  # exactly the checkpoint's labels: keep its head
    params = dict(resumed.named_parameters())
    assert all(_in_checkpoint(params[n].detach(), checkpoint) for n in head.param_names)

    # timm gotcha: a label_names list in the checkpoint must not survive into the saved config.
    model.save_pretrained(tmp_path)
    assert AutoModelForImageClassification.from_pretrained(tmp_path).config.id2label == LABELS
    if kind == "timm":
        assert json.loads((tmp_path / "config.json").read_text())["label_names"] == list(LABELS.values())


def test_config_overrides(checkpoints, caplog):
    model, _ = load_model_and_processor(checkpoints("dinov2"), LABELS, drop_path_rate=0.2, hidden_dropout_prob=0.1)
    assert model.config.drop_path_rate == 0.2
    assert model.config.hidden_dropout_prob == 0.1

    model, _ = load_model_and_processor(checkpoints("clip_vision"), LABELS, attention_dropout=0.1)
    assert model.config.vision_config.attention_dropout == 0.1

    with caplog.at_level(logging.WARNING, logger="hf_finetune.backbone"):
        model, _ = load_model_and_processor(checkpoints("timm"), LABELS, drop_path_rate=0.1, hidden_dropout_prob=0.3)
    assert model.config.model_args == {"drop_path_rate": 0.1}
    assert any(type(m).__name__ == "DropPath" for m in model.modules())
    assert "hidden_dropout_prob" in caplog.text and "ignored" in caplog.text

    with pytest.raises(ValueError, match="`num_labels` cannot be overridden"):
        load_model_and_processor(checkpoints("vit"), LABELS, num_labels=7)


@pytest.mark.parametrize("relative", [False, True])
def test_error_nonexistent_path(tmp_path, relative):
    missing = "./no/such_model" if relative else str(tmp_path / "no_such_model")
    with pytest.raises(ValueError, match="does not exist") as info:
        load_model_and_processor(missing, LABELS)
    assert missing in str(info.value)
    assert "Hub model id" in str(info.value) and "config.json" in str(info.value)


def test_error_directory_without_config(tmp_path):
    with pytest.raises(ValueError, match="directory without a config.json"):
        load_model_and_processor(str(tmp_path), LABELS)


def test_error_directory_without_weights(tmp_path, checkpoints):
    (tmp_path / "config.json").write_text((Path(checkpoints("vit")) / "config.json").read_text())
    with pytest.raises(ValueError, match="could not be loaded: .*no file named model.safetensors"):
        load_model_and_processor(str(tmp_path), LABELS)


def test_error_text_model(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match="is a `bert` checkpoint, not an image model") as info:
        load_model_and_processor(str(tmp_path), LABELS)
    message = str(info.value)
    assert "Supported model types:" in message
    for model_type in ("dinov2", "vit", "vit_mae", "clip_vision_model", "timm_wrapper", "convnext"):
        assert model_type in message


def test_error_hub_id_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="offline") as info:
        load_model_and_processor("hf-finetune-tests/not-in-the-cache", LABELS)
    message = str(info.value)
    assert "'hf-finetune-tests/not-in-the-cache'" in message
    assert "download it once with network access" in message.lower()
    assert "local directory" in message and "HF_HUB_OFFLINE" in message


@pytest.mark.parametrize("bad", [{}, {1: "a", 2: "b"}, {0: "a", 1: "a"}, {"x": "a"}])
def test_error_bad_labels(bad, checkpoints):
    with pytest.raises(ValueError, match="`id2label`"):
        load_model_and_processor(checkpoints("vit"), bad)


def test_generic_fallback_warns_and_partitions(caplog):
    class ToyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3)
            self.blocks = nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3))
            self.norm = nn.BatchNorm2d(8)
            self.classifier = nn.Linear(8, 3)

    model = ToyNet()
    with caplog.at_level(logging.WARNING, logger="hf_finetune.backbone"):
        stage_map = split_stages(model)
    assert "ToyNet" in caplog.text
    assert stage_map.family == "generic"
    assert [s.name for s in stage_map.stages] == ["embeddings", "blocks.0", "blocks.1", "blocks.2", "norm", "head"]
    assert stage_map.head.module_names == ("classifier",)
    assert stage_map.stages[-2].module_names == ("norm",)


def test_peft_wrapped_model_keeps_the_same_stages(checkpoints):
    peft = pytest.importorskip("peft")
    model, _ = load_model_and_processor(checkpoints("vit"), LABELS)
    plain = split_stages(model)
    config = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"])
    wrapped = peft.get_peft_model(model, config)
    stage_map = split_stages(wrapped)
    assert [s.name for s in stage_map.stages] == [s.name for s in plain.stages]
    names = [n for n, _ in wrapped.named_parameters()]
    assert sorted(n for s in stage_map.stages for n in s.param_names) == sorted(names)
    lora = [n for n in names if "lora_" in n]
    assert lora and all(stage_map.stage_of(n).name.startswith("blocks.") for n in lora)


def test_stage_map_validates():
    with pytest.raises(ValueError, match="`head` stage last"):
        StageMap(stages=[Stage("embeddings", ("a",), ())], family="x")
    with pytest.raises(ValueError, match="partition"):
        StageMap(stages=[Stage("embeddings", ("a",), ()), Stage("head", ("a",), ())], family="x")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, family, num_blocks",
    [("efficientnet_lite0", "timm:efficientnet", 7), ("mobilenet_v2", "mobilenet_v2", 6)],
)
def test_real_checkpoints(name, family, num_blocks):
    path = SHARED / "models" / name
    if not (path / "config.json").is_file():
        pytest.skip(f"{path} not available")
    model, processor = load_model_and_processor(str(path), {0: "ants", 1: "bees"})
    stage_map = split_stages(model)
    params = dict(model.named_parameters())
    table = [(s.name, sum(params[n].numel() for n in s.param_names)) for s in stage_map.stages]
    logging.getLogger(__name__).info("%s stages: %s", name, table)
    assert stage_map.family == family
    assert [s.name for s in stage_map.stages] == [
        "embeddings",
        *(f"blocks.{i}" for i in range(num_blocks)),
        "norm",
        "head",
    ]
    assert dict(table)["head"] == 2 * 1280 + 2
    assert _logits(model, processor, _image()).shape == (2,)

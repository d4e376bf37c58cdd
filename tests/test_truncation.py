"""Truncation (`--truncate-after`): the stages above the cut are gone, the head reads the cut, and the saved model
reloads through the Auto classes and `pipeline` (trust_remote_code) with identical logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST_RUN_FLAGS, write_image_folder
from helpers import assert_mentions
from hf_finetune import load_model_and_processor, split_stages
from hf_finetune.backbones.stages import TRUNCATION_FIELD
from hf_finetune.cli.main import main
from hf_finetune.backbones.taps import FeatureTaps
from hf_finetune.backbones.truncation import REMOTE_CODE_FILE, truncate_model

LABELS = {0: "cat", 1: "dog", 2: "fish"}
# kind -> (cut, stages kept before the head)
CUTS = {
    "vit": ("blocks.0", ["embeddings", "blocks.0", "norm"]),
    "dinov2": ("1", ["embeddings", "blocks.0", "norm"]),
    "resnet": ("blocks.1", ["embeddings", "blocks.0", "blocks.1"]),
    "convnext": ("blocks.2", ["embeddings", "blocks.0", "blocks.1", "blocks.2"]),
    "mobilenet_v2": ("blocks.2", ["embeddings", "blocks.0", "blocks.1", "blocks.2"]),
    "efficientnet": ("blocks.3", ["embeddings", "blocks.0", "blocks.1", "blocks.2", "blocks.3"]),
    "timm": ("blocks.2", ["embeddings", "blocks.0", "blocks.1", "blocks.2"]),
}


def _image(seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((40, 40, 3)) * 255).astype("uint8"))


def _logits(model, pixels):
    model.eval()
    with torch.no_grad():
        return model(pixel_values=pixels).logits


@pytest.mark.parametrize("kind", list(CUTS))
def test_truncated_model_saves_and_reloads_with_identical_logits(kind, tiny_checkpoint, tmp_path):
    from transformers import AutoModelForImageClassification, pipeline

    model, processor = load_model_and_processor(tiny_checkpoint(kind), LABELS)
    cut, kept = CUTS[kind]
    before = sum(p.numel() for p in model.parameters())
    full_stages = split_stages(model)
    record = truncate_model(model, cut)
    after = sum(p.numel() for p in model.parameters())
    assert after < before and record["parameters"] == {"before": before, "after": after}
    assert [s.name for s in split_stages(model).stages] == [*kept, "head"]
    removed = {s.name for s in full_stages.backbone} - set(kept)
    assert set(record["removed_stages"]) == removed
    kept_params = {n for s in full_stages.stages if s.name in kept for n in s.param_names}
    assert kept_params <= {n for n, _ in model.named_parameters()}  # nothing below the cut was touched

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    code = (tmp_path / REMOTE_CODE_FILE).read_text()
    assert "hf_finetune" not in "".join(line for line in code.splitlines() if line.startswith(("import", "from")))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageClassification"].startswith("modeling_hf_finetune_truncated.Truncated")
    assert config[TRUNCATION_FIELD]["after"] == split_stages(model).backbone[len(kept) - 1 - ("norm" in kept)].name

    pixels = processor(_image(), return_tensors="pt")["pixel_values"]
    expected = _logits(model, pixels)
    auto = AutoModelForImageClassification.from_pretrained(tmp_path, trust_remote_code=True)
    assert torch.equal(_logits(auto, pixels), expected)
    assert sum(p.numel() for p in auto.parameters()) == after
    classifier = pipeline("image-classification", model=str(tmp_path), trust_remote_code=True)
    assert torch.equal(_logits(classifier.model, pixels), expected)
    scores = {p["label"]: p["score"] for p in classifier(_image(), top_k=3)}
    assert scores == pytest.approx(dict(zip(LABELS.values(), torch.softmax(expected[0], -1).tolist())), abs=1e-5)
    # hf_finetune reloads it with its own class (same labels: the trained head is kept).
    again, _ = load_model_and_processor(str(tmp_path), LABELS)
    assert torch.equal(_logits(again, pixels), expected)
    assert [s.name for s in split_stages(again).stages] == [*kept, "head"]


def test_the_head_reads_the_cut(tiny_checkpoint):
    model, processor = load_model_and_processor(tiny_checkpoint("resnet"), LABELS)
    pixels = processor([_image(0), _image(1)], return_tensors="pt")["pixel_values"]
    model.eval()
    cut_features = FeatureTaps(model, split_stages(model), stages=True).capture(pixels)["blocks.1"]
    truncate_model(model, "blocks.1")
    head_input = FeatureTaps(model, split_stages(model)).capture(pixels)["head"]
    assert torch.allclose(head_input, cut_features, atol=1e-6)


@pytest.mark.parametrize(("kind", "cut", "norm"), [("vit", "blocks.1", "vit.layernorm"), ("mobilenet_v2", "blocks.5", "mobilenet_v2.conv_1x1")])
def test_a_cut_at_the_top_block_removes_the_norm_stage(kind, cut, norm, tiny_checkpoint):
    model, _ = load_model_and_processor(tiny_checkpoint(kind), LABELS)
    record = truncate_model(model, cut)
    assert record["removed_stages"] == ["norm"] and record["identity"] == [norm]
    assert record["parameters"]["after"] < record["parameters"]["before"]
    assert isinstance(model.get_submodule(norm), torch.nn.Identity)


def test_truncation_errors(tiny_checkpoint):
    model, _ = load_model_and_processor(tiny_checkpoint("resnet"), LABELS)
    with pytest.raises(ValueError) as err:
        truncate_model(model, "blocks.7", "tiny-resnet")
    valid = "0=embeddings, 1=blocks.0, 2=blocks.1, 3=blocks.2, 4=blocks.3"
    assert_mentions(str(err.value), "`--truncate-after` 'blocks.7'", "not a backbone stage of 'tiny-resnet'", valid)
    with pytest.raises(ValueError) as err:
        truncate_model(model, "4", "tiny-resnet")
    assert_mentions(str(err.value), "`--truncate-after` '4'", "top backbone stage", "lower stage", valid, "`none`")
    with pytest.raises(ValueError, match=r"^`--truncate-after` 'head' is not a backbone stage"):
        truncate_model(model, "head", "tiny-resnet")


def test_cli_run_with_truncation(tiny_checkpoint, tmp_path):
    """Training loop, best-checkpoint reload, test evaluation, saved model, card and demo on a truncated ViT."""
    from transformers import pipeline

    from hf_finetune.sharing.demo import load_app

    folder = write_image_folder(tmp_path / "images", per_class=10)
    out = tmp_path / "out"
    argv = ["--model", tiny_checkpoint("vit"), "--dataset", str(folder), "--output-dir", str(out), *FAST_RUN_FLAGS]
    # --keep-checkpoints: the checkpoints must carry the generated modeling file too.
    assert main([*argv, "--truncate-after", "blocks.0", "--save-total-limit", "1", "--keep-checkpoints", "true"]) == 0
    config = json.loads((out / "run_config.json").read_text())
    assert config["truncation"]["after"] == "blocks.0" and config["truncation"]["removed_stages"] == ["blocks.1"]
    assert [s["name"] for s in config["stages"]] == ["embeddings", "blocks.0", "norm", "head"]
    assert config["finetune"]["truncate_after"] == "blocks.0"
    assert config["best_checkpoint"] and config["epochs_run"] == 3
    schedule = json.loads((out / "schedule.json").read_text())
    assert set(schedule["epochs"][-1]["trainable_stages"]) >= {"blocks.0", "head"}
    report = json.loads((out / "test_report.json").read_text())
    card = (out / "README.md").read_text()
    assert "cut after stage `blocks.0`" in card and 'trust_remote_code=True)' in card
    # Checkpoints carry the code too: the best one was reloaded through from_pretrained before the test evaluation.
    assert (out / REMOTE_CODE_FILE).is_file() and (Path(config["best_checkpoint"]) / REMOTE_CODE_FILE).is_file()
    classifier = pipeline("image-classification", model=str(out), trust_remote_code=True)
    test_images = sorted((folder).rglob("*.png"))[:2]
    assert len(classifier.model.vit.layers) == 1
    assert classifier(Image.open(test_images[0]))[0]["label"] in report["labels"]
    # The demo loads the truncated model (trusting its code because it is an hf_finetune truncation).
    assert len(load_app().load_classifier(str(out)).model.vit.layers) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0"])
def test_shared_models_truncate_and_reload(name, tmp_path):
    """The real checkpoints: transformers-native MobileNetV2 (no depth field in its config) and timm EfficientNet-Lite0."""
    from transformers import AutoModelForImageClassification, pipeline

    from conftest import SHARED

    model, processor = load_model_and_processor(str(SHARED / "models" / name), {0: "normal", 1: "pneumonia"})
    record = truncate_model(model, "blocks.3")
    assert record["parameters"]["after"] < record["parameters"]["before"]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    pixels = processor(_image(), return_tensors="pt")["pixel_values"]
    expected = _logits(model, pixels)
    assert torch.equal(_logits(AutoModelForImageClassification.from_pretrained(tmp_path, trust_remote_code=True), pixels), expected)
    assert torch.equal(_logits(pipeline("image-classification", model=str(tmp_path), trust_remote_code=True).model, pixels), expected)

"""LoRA (peft): default targets per architecture, only adapters and the head train, adapters follow the stage
schedule, frozen BatchNorm statistics, and a merged output that `pipeline` loads without peft."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn
from transformers import set_seed

from conftest import FAST_RUN_FLAGS, SHARED, write_image_folder
from helpers import Snapshots, assert_mentions, changed, parse_time_error, stage_tensors
from hf_finetune import (
    DataArguments,
    FinetuneArguments,
    FinetuneTrainingArguments,
    apply_lora,
    attach_transforms,
    build_trainer,
    load_model_and_processor,
    load_splits,
    lora_target_modules,
    split_stages,
    unfreeze_units,
)
from hf_finetune.cli.main import main
from tiny_models import TINY_KINDS

ATTENTION_KINDS = {"vit": ["q_proj", "v_proj"], "deit": ["q_proj", "v_proj"], "dinov2": ["q_proj", "v_proj"],
                   "beit": ["q_proj", "v_proj"], "swin": ["q_proj", "v_proj"], "clip_vision": ["q_proj", "v_proj"],
                   "timm_vit": ["qkv"]}
CNN_KINDS = ("convnext", "resnet", "mobilenet_v2", "efficientnet", "timm")
LABELS = {0: "cat", 1: "dog", 2: "fish"}


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)  # peft's target_modules rule


@pytest.mark.parametrize("kind", [*ATTENTION_KINDS, *CNN_KINDS])
def test_default_targets_per_architecture(kind, tiny_checkpoint):
    model, _ = load_model_and_processor(tiny_checkpoint(kind), LABELS)
    targets = lora_target_modules(model)
    stage_map = split_stages(model)
    matched = {name: module for name, module in model.named_modules() if name and _matches(name, targets)}
    assert matched
    excluded = {stage_map.head.name, "embeddings"}
    for name, module in matched.items():
        assert isinstance(module, (nn.Linear, nn.Conv2d)) and getattr(module, "groups", 1) == 1, name
        assert stage_map.stage_of(f"{name}.weight").name not in excluded, name
    if kind in ATTENTION_KINDS:
        assert targets == ATTENTION_KINDS[kind]
    else:
        # CNNs: every non-depthwise conv / linear layer of the blocks gets an adapter, and nothing else.
        expected = {
            name for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d)) and getattr(module, "groups", 1) == 1
            and stage_map.stage_of(f"{name}.weight").name not in excluded
        }
        assert set(matched) == expected


@pytest.mark.parametrize("kind", ["vit", "swin", "timm_vit", "convnext", "resnet", "mobilenet_v2", "efficientnet", "timm"])
def test_wrapped_model_trains_only_adapters_and_head_and_merges_exactly(kind, tiny_checkpoint):
    model, _ = load_model_and_processor(tiny_checkpoint(kind), LABELS)
    peft_model = apply_lora(model, FinetuneArguments(peft="lora", lora_r=4))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".modules_to_save." in n for n in trainable)
    assert any(".modules_to_save." in n for n in trainable)
    # split_stages sees the adapters inside their stages, the head's trainable copy in the head.
    stage_map = split_stages(peft_model)
    assert all(stage_map.stage_of(n).name == "head" for n in trainable if ".modules_to_save." in n)
    assert {stage_map.stage_of(n).name for n in trainable if "lora_" in n} - {"head", "embeddings"}
    # Non-zero adapters, then merge: same logits, plain transformers model.
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    peft_model.eval()
    pixels = torch.randn(2, 3, 32, 32) if kind != "timm_vit" else torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        expected = peft_model(pixel_values=pixels).logits
        merged = peft_model.merge_and_unload()
        assert not any("lora_" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(pixel_values=pixels).logits, expected, atol=1e-5, rtol=1e-4)


def _lora_trainer(kind, tiny_checkpoint, folder, out, epochs, **finetune):
    checkpoint = tiny_checkpoint(kind)
    set_seed(0)
    splits = load_splits(DataArguments(dataset=str(folder)), seed=0)
    model, processor = load_model_and_processor(checkpoint, splits.id2label)
    attach_transforms(splits, processor, "light")
    finetune_args = FinetuneArguments(peft="lora", lora_r=4, lora_dropout=0.0, early_stopping_patience=0, **finetune)
    model = apply_lora(model, finetune_args)
    training_args = FinetuneTrainingArguments(
        output_dir=str(out), num_train_epochs=epochs, per_device_train_batch_size=8, learning_rate=1e-2,
        warmup_steps=0, seed=0, disable_tqdm=True, save_total_limit=None, load_best_model_at_end=False,
    )
    return build_trainer(model, processor, splits, finetune_args, training_args)


def test_lora_adapters_follow_the_stage_schedule_and_base_weights_never_change(tiny_checkpoint, image_folder, tmp_path):
    trainer = _lora_trainer("vit", tiny_checkpoint, image_folder, tmp_path / "out", epochs=3, strategy="head_then_unfreeze")
    snaps = Snapshots()
    trainer.add_callback(snaps)
    trainer.train()
    model = trainer.model
    stage_map = split_stages(model)
    units = unfreeze_units(stage_map)
    names = [n for n, _ in model.named_parameters()]
    adapters = [n for n in names if "lora_" in n]
    head_copy = [n for n in names if ".modules_to_save." in n]
    base = [n for n in names if n not in adapters and n not in head_copy]
    first, last = snaps.params[0], snaps.params[-1]

    # Only adapter and head parameters ever change or require a gradient; base weights (incl. the original head) never.
    assert changed(first, last, base) == []
    assert set(changed(first, last, names)) <= set(adapters) | set(head_copy)
    assert all(not any(n in trainable for n in base) for trainable in snaps.trainable)
    assert changed(snaps.params[0], snaps.params[1], head_copy), "the head did not train"
    # Epoch 0: head only, no adapter moved.
    assert changed(snaps.params[0], snaps.params[1], adapters) == []
    # Epoch 1: adapters of the top unit moved, the lower units' adapters did not.
    top = [n for n in stage_tensors(stage_map, units[0]) if "lora_" in n]
    below = [n for n in stage_tensors(stage_map, [s for unit in units[1:] for s in unit]) if "lora_" in n]
    assert top and changed(snaps.params[1], snaps.params[2], top)
    assert changed(snaps.params[0], snaps.params[2], below) == []
    # Layer-wise LR decay applies to adapters by stage: top-stage groups above lower ones.
    lrs = {g["stage"]: g["initial_lr"] for g in trainer.optimizer.param_groups}
    assert lrs[units[0][-1]] > lrs[units[1][-1]]


def test_lora_keeps_batchnorm_statistics_of_the_base_model(tiny_checkpoint, image_folder, tmp_path):
    trainer = _lora_trainer("timm", tiny_checkpoint, image_folder, tmp_path / "out", epochs=1, strategy="full")
    snaps = Snapshots()
    trainer.add_callback(snaps)
    trainer.train()
    running = [n for n in snaps.buffers[0] if "running_" in n]
    assert running and changed(snaps.buffers[0], snaps.buffers[-1], running) == []
    adapters = [n for n in snaps.params[0] if "lora_B" in n]
    assert changed(snaps.params[0], snaps.params[-1], adapters)


def test_lora_run_saves_a_merged_model_pipeline_loads_and_the_adapter_alone(tiny_checkpoint, image_folder, tmp_path):
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoModelForImageClassification, pipeline

    out = tmp_path / "out"
    argv = ["--model", tiny_checkpoint("dinov2"), "--dataset", str(image_folder), "--output-dir", str(out), *FAST_RUN_FLAGS,
            "--peft", "lora", "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0.05"]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Dinov2ForImageClassification"]
    assert not (out / "adapter_config.json").exists() and (out / "adapter" / "adapter_config.json").is_file()
    classify = pipeline("image-classification", model=str(out))
    assert not hasattr(classify.model, "peft_config")
    image = Image.open(next((image_folder / "dog").iterdir()))
    assert {p["label"] for p in classify(image, top_k=3)} == {"cat", "dog", "fish"}

    # The adapter alone, on top of the base checkpoint (fresh random head: the adapter carries the trained one),
    # reproduces the merged model.
    merged = AutoModelForImageClassification.from_pretrained(out).eval()
    base, processor = load_model_and_processor(tiny_checkpoint("dinov2"), merged.config.id2label)
    adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
    pixels = processor(image.convert("RGB"), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        torch.testing.assert_close(adapted(pixel_values=pixels).logits, merged(pixel_values=pixels).logits, atol=1e-5, rtol=1e-4)

    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["peft"]["r"] == 4 and run_config["peft"]["target_modules"] == ["q_proj", "v_proj"]
    card = (out / "README.md").read_text()
    assert_mentions(card, "**LoRA**", "rank 4", "alpha 8", "`q_proj`, `v_proj`")


@pytest.mark.parametrize(
    "flags,fragments",
    [
        # The flag, the bad value or the clashing flag, and the fix.
        (["--peft", "qlora"], ("`--peft`", "'qlora'", "'none', 'lora'")),
        (["--lora-target-modules", "q_proj"], ("`--lora-target-modules`", "'q_proj'", "add `--peft lora`")),
        (["--peft", "lora", "--lora-r", "0"], ("`--lora-r`", "got 0", ">= 1")),
        (["--peft", "lora", "--lora-dropout", "1"], ("`--lora-dropout`", "1.0", "[0, 1)")),
        (["--peft", "lora", "--strategy", "linear_probe"], ("`--peft lora`", "`--strategy linear_probe`", "head_then_unfreeze, top_k or full")),
        (["--peft", "lora", "--train-bn"], ("`--train-bn`", "`--peft lora`", "Drop one of the two flags")),
    ],
)
def test_invalid_peft_flags_are_rejected(flags, fragments, capsys, tmp_path):
    assert_mentions(parse_time_error(flags, tmp_path, capsys), *fragments)


def test_target_modules_that_match_nothing_are_refused(tiny_checkpoint):
    model, _ = load_model_and_processor(tiny_checkpoint("vit"), LABELS)
    with pytest.raises(ValueError) as err:
        apply_lora(model, FinetuneArguments(peft="lora", lora_target_modules="nope"))
    assert_mentions(str(err.value), "`--lora-target-modules`", "'nope'", "matches no module", "leave the flag out")


@pytest.mark.slow
def test_lora_on_efficientnet_lite0_hymenoptera(tmp_path):
    from transformers import pipeline

    out = tmp_path / "ants-lora"
    start = time.time()
    argv = ["--model", str(SHARED / "models/efficientnet_lite0"), "--dataset", str(SHARED / "data/hymenoptera"),
            "--output-dir", str(out), "--peft", "lora", "--disable-tqdm", "true"]
    assert main(argv) == 0
    report = json.loads((out / "test_report.json").read_text())
    print(f"LoRA efficientnet_lite0: test accuracy {report['accuracy']:.4f}, {time.time() - start:.0f} s")
    assert report["accuracy"] > 0.8
    classify = pipeline("image-classification", model=str(out))
    image = next((SHARED / "data/hymenoptera/val/bees").iterdir())
    assert classify(str(image), top_k=1)[0]["label"] in {"ants", "bees"}

"""Overfitting control: augmentation presets, mixup/CutMix soft targets, the gap monitor switching mixup on, class
weights, the balanced sampler, head dropout and L2-SP."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import Snapshots, changed, make_trainer
from hf_finetune.data.mixing import BatchMixer
from hf_finetune.data.transforms import augmentation_ops
from hf_finetune.data.transforms import Preprocessing, build_train_transform
from hf_finetune.training.callbacks.monitor import GapMonitorCallback, TrainPredictionLog
from hf_finetune.training.regularization import L2SP, add_head_dropout, balanced_sample_weights, class_counts, classification_loss, imbalance_ratio, inverse_frequency_weights

PRE = Preprocessing(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic")


@pytest.mark.parametrize("strength", ["none", "light", "medium", "strong"])
def test_augmentation_presets_keep_size_and_normalisation(strength):
    torch.manual_seed(0)
    transform = build_train_transform(PRE, strength)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    outputs = [transform(image) for _ in range(3)]
    assert all(o.shape == (3, 32, 32) and o.dtype == torch.float32 for o in outputs)
    assert all(o.min() >= -1.0 - 1e-6 and o.max() <= 1.0 + 1e-6 for o in outputs)  # random erasing fills with 0, inside the range
    randomised = not all(torch.equal(outputs[0], o) for o in outputs[1:])
    assert randomised == (strength != "none")
    on_image, on_tensor = augmentation_ops((32, 32), None, strength)
    names = [type(op).__name__ for op in on_image + on_tensor]
    expected = {"none": "Resize", "light": "RandomResizedCrop", "medium": "TrivialAugmentWide", "strong": "RandAugment"}
    assert expected[strength] in names
    assert ("RandomErasing" in names) == (strength == "strong")


def test_mixer_makes_soft_targets_only_when_enabled():
    torch.manual_seed(0)
    pixels, labels = torch.randn(8, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    mixer = BatchMixer(3, mixup_alpha=0.2, cutmix_alpha=1.0)
    same_pixels, same_targets = mixer(pixels, labels)
    assert same_pixels is pixels and same_targets is labels
    mixer.enabled = True
    mixed, targets = mixer(pixels, labels)
    assert targets.shape == (8, 3) and torch.allclose(targets.sum(1), torch.ones(8))
    assert not torch.equal(mixed, pixels)
    assert not BatchMixer(3, mixup_alpha=0, cutmix_alpha=0, enabled=True).available


def test_soft_target_loss_matches_hard_cross_entropy_and_class_weights_follow_inverse_frequency():
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    one_hot = F.one_hot(labels, 3).float()
    assert torch.allclose(classification_loss(logits, one_hot), F.cross_entropy(logits, labels), atol=1e-6)
    assert torch.allclose(
        classification_loss(logits, one_hot, label_smoothing=0.1), F.cross_entropy(logits, labels, label_smoothing=0.1), atol=1e-6
    )
    counts = class_counts([0] * 60 + [1] * 30 + [2] * 10, 3)
    assert counts == [60, 30, 10] and imbalance_ratio(counts) == 6.0
    weights = inverse_frequency_weights(counts)
    assert torch.allclose(weights, torch.tensor([100 / 180, 100 / 90, 100 / 30]))
    assert torch.allclose(weights * torch.tensor(counts, dtype=torch.float32), torch.full((3,), 100 / 3))  # equal total weight
    assert torch.equal(inverse_frequency_weights([5, 5]), torch.ones(2))


def test_balanced_sampler_weights_draw_classes_equally():
    labels = [0] * 90 + [1] * 10
    weights = balanced_sample_weights(labels)
    generator = torch.Generator().manual_seed(0)
    drawn = list(torch.utils.data.WeightedRandomSampler(weights, 4000, replacement=True, generator=generator))
    share = Counter(labels[i] for i in drawn)[1] / 4000
    assert 0.45 < share < 0.55


def feed(monitor: GapMonitorCallback, train_f1: list[float], val_f1: list[float]) -> list[dict]:
    return [monitor.observe(epoch, {"macro_f1": t, "accuracy": t, "loss": 0.1}, v, 0.5) for epoch, (t, v) in enumerate(zip(train_f1, val_f1))]


def test_gap_monitor_switches_mixup_on_when_the_gap_stays_wide():
    mixer = BatchMixer(2)
    monitor = GapMonitorCallback(TrainPredictionLog(), mixer, mode="auto", threshold=0.1, patience=2)
    records = feed(monitor, [0.70, 0.85, 0.95, 0.99, 1.0], [0.68, 0.72, 0.75, 0.74, 0.73])  # gap 0.02, 0.13, 0.20, ...
    assert [round(r["gap_macro_f1"], 2) for r in records] == [0.02, 0.13, 0.2, 0.25, 0.27]
    assert mixer.enabled and monitor.switched_at == 3  # above threshold after epochs 1 and 2 -> on from epoch 3
    assert records[2]["switched_mixup_on_for_epoch"] == 3 and [r["mixup"] for r in records] == [False] * 3 + [True] * 2
    fields = monitor.epoch_fields(2)
    assert fields["mixup_switched_on_for_epoch"] == 3 and fields["train_metrics"]["macro_f1"] == 0.95
    # A gap that closes again resets the count; "off" and "on" modes never switch.
    narrow = GapMonitorCallback(TrainPredictionLog(), BatchMixer(2), mode="auto", threshold=0.1, patience=2)
    feed(narrow, [0.9, 0.8, 0.9, 0.8], [0.7, 0.79, 0.7, 0.79])
    assert not narrow.mixer.enabled
    off = GapMonitorCallback(TrainPredictionLog(), BatchMixer(2), mode="off", threshold=0.1, patience=1)
    feed(off, [1.0, 1.0], [0.5, 0.5])
    assert not off.mixer.enabled and off.switched_at is None


def test_train_prediction_log_summarises_an_epoch():
    log = TrainPredictionLog()
    log.add(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 0.5)
    log.add(torch.tensor([1]), torch.tensor([1]), 0.3)
    summary = log.summary()
    assert summary["accuracy"] == 0.75 and summary["loss"] == pytest.approx(0.4)
    log.reset()
    assert log.summary() is None


def test_training_records_train_vs_validation_and_the_gap_in_schedule(tiny_checkpoint, image_folder, tmp_path):
    trainer = make_trainer("vit", tiny_checkpoint, image_folder, tmp_path / "out", epochs=2, strategy="full", mixup="auto", gap_threshold=-1.0, gap_patience=1)
    trainer.train()
    epochs = json.loads((tmp_path / "out" / "schedule.json").read_text())["epochs"]
    assert len(epochs) == 2
    for record in epochs:
        assert {"accuracy", "macro_f1", "loss"} <= set(record["train_metrics"])
        assert record["gap_macro_f1"] == pytest.approx(record["train_metrics"]["macro_f1"] - record["validation"]["macro_f1"])
    # A threshold of -1 is always exceeded: switched on after epoch 0, recorded with its epoch.
    assert epochs[0]["mixup_switched_on_for_epoch"] == 1 and epochs[1]["mixup"] is True
    assert trainer.mixer.enabled


def test_head_dropout_acts_in_training_only():
    layer = torch.nn.Linear(16, 3)
    handles = add_head_dropout([layer], 0.5)
    x = torch.ones(4, 16)
    layer.train()
    torch.manual_seed(0)
    assert not torch.allclose(layer(x), layer(x))
    layer.eval()
    assert torch.equal(layer(x), x @ layer.weight.T + layer.bias)
    for handle in handles:
        handle.remove()
    assert add_head_dropout([layer], 0.0) == []


def test_l2sp_pulls_toward_the_pretrained_copy_of_trainable_parameters_only():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    l2sp = L2SP(model[0].named_parameters(), alpha=0.1)
    assert float(l2sp.penalty()) == 0.0
    with torch.no_grad():
        model[0].weight.add_(1.0)  # 16 entries moved by 1
        model[1].weight.add_(5.0)  # not anchored
    assert float(l2sp.penalty()) == pytest.approx(0.5 * 0.1 * 16)
    model[0].weight.requires_grad_(False)  # frozen: not penalised
    assert float(l2sp.penalty()) == 0.0


def test_trainer_adds_l2sp_and_class_weights_to_the_loss(tiny_checkpoint, image_folder, tmp_path):
    trainer = make_trainer("vit", tiny_checkpoint, image_folder, tmp_path / "out", epochs=1, strategy="full", l2sp=1.0)
    assert trainer.l2sp is not None
    head = set(trainer.stage_map.head.param_names)
    assert set(trainer.l2sp.params) == {n for n, _ in trainer.model.named_parameters()} - head
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    plain = float(trainer.compute_loss(trainer.model, batch))
    with torch.no_grad():
        next(iter(trainer.l2sp.params.values())).add_(1.0)
    assert float(trainer.compute_loss(trainer.model, batch)) > plain + 0.1
    trainer.class_weights = torch.tensor([10.0, 0.0, 0.0])
    trainer.l2sp = None
    trainer.args.label_smoothing_factor = 0.0  # (torch spreads smoothing with the weights of every class)
    trainer.model.eval()
    weighted = trainer.compute_loss(trainer.model, batch)
    only_class_0 = {k: v[batch["labels"] == 0] for k, v in batch.items()}
    assert torch.allclose(weighted, trainer.compute_loss(trainer.model, only_class_0), atol=1e-5)


@pytest.mark.parametrize("fix", [True, False])
def test_fix_bn_stats_keeps_running_statistics_of_trained_stages(fix, tiny_checkpoint, image_folder, tmp_path):
    trainer = make_trainer("resnet", tiny_checkpoint, image_folder, tmp_path / "out", epochs=1, strategy="full", fix_bn_stats=fix)
    snaps = Snapshots()
    trainer.add_callback(snaps)
    trainer.train()
    running = [n for n in snaps.buffers[0] if n.endswith(("running_mean", "running_var"))]
    bn_weights = [n for n in snaps.params[0] if ".normalization." in n or "bn" in n.split(".")[-2]]
    assert running and bn_weights
    assert (changed(snaps.buffers[0], snaps.buffers[-1], running) == []) == fix
    assert changed(snaps.params[0], snaps.params[-1], bn_weights)  # the affine weights train either way

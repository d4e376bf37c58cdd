"""Behaviour of the trainer and the freeze callbacks on tiny models: LRs per group, frozen weights and
BatchNorm buffers bit-identical, unfreezing top-first without rebuilding the optimizer, resume."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

from helpers import Snapshots, changed, make_trainer, stage_tensors
from hf_finetune import split_stages, unfreeze_units
from hf_finetune.training.lr_schedule import build_staged_scheduler, refresh_learning_rates, stage_gate
from hf_finetune.training.param_groups import stage_learning_rates

CNN_KINDS = ("resnet", "mobilenet_v2", "efficientnet", "timm")


@pytest.mark.parametrize(("multiplier", "expected"), [(None, 1e-1), (1.0, 1e-2), (3.0, 3e-2)])
def test_the_head_lr_is_a_multiple_of_the_learning_rate_unless_given(multiplier, expected, tiny_checkpoint, image_folder, tmp_path):
    # None: no advisor ran (a trainer built by hand), so the fixed default applies: 10 x --learning-rate.
    trainer = make_trainer("resnet", tiny_checkpoint, image_folder, tmp_path / "out", head_lr_multiplier=multiplier)
    optimizer = trainer.create_optimizer()
    assert optimizer.param_groups[0]["stage"] == "head" and optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    given = make_trainer("resnet", tiny_checkpoint, image_folder, tmp_path / "out2", head_lr_multiplier=3.0, head_learning_rate=0.5)
    assert given.create_optimizer().param_groups[0]["lr"] == pytest.approx(0.5)


@pytest.mark.parametrize("kind", ["vit", "dinov2", "resnet", "timm"])
def test_group_learning_rates_follow_layer_decay(kind, tiny_checkpoint, image_folder, tmp_path):
    trainer = make_trainer(kind, tiny_checkpoint, image_folder, tmp_path / "out", layer_decay=0.5, head_learning_rate=0.2)
    optimizer = trainer.create_optimizer()
    # One fused AdamW over every group (as the stock Trainer's default), not a kernel launch per group.
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    stage_map = trainer.stage_map
    top = len(stage_map.backbone) - 1
    for group in optimizer.param_groups:
        stage = group["stage"]
        if stage == stage_map.head.name:
            assert group["lr"] == pytest.approx(0.2)
        else:
            depth = [s.name for s in stage_map.backbone].index(stage)
            assert group["lr"] == pytest.approx(1e-2 * 0.5 ** (top - depth))
    rates = stage_learning_rates(stage_map, 1e-2, 0.5, 0.2)
    backbone_rates = [rates[s.name] for s in stage_map.backbone]
    assert backbone_rates == sorted(backbone_rates) and backbone_rates[0] < backbone_rates[-1]
    # Head first (the Trainer logs group 0), every parameter in exactly one group.
    assert optimizer.param_groups[0]["stage"] == stage_map.head.name
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == len(list(trainer.model.parameters()))
    # No weight decay on biases and norms; decay on the head's weight matrix.
    for group in optimizer.param_groups:
        if group["name"].endswith("/no_decay"):
            assert group["weight_decay"] == 0.0
        else:
            assert group["weight_decay"] == trainer.args.weight_decay
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    no_decay = {names[id(p)] for g in optimizer.param_groups if g["name"].endswith("/no_decay") for p in g["params"]}
    assert all(n in no_decay for n, p in trainer.model.named_parameters() if n.endswith(".bias"))


@pytest.mark.parametrize("kind", ["vit", "resnet", "mobilenet_v2"])
def test_head_then_unfreeze_keeps_frozen_weights_and_bn_buffers_bit_identical(kind, tiny_checkpoint, image_folder, tmp_path):
    trainer = make_trainer(kind, tiny_checkpoint, image_folder, tmp_path / "out", epochs=3, strategy="head_then_unfreeze")
    snaps = Snapshots()
    trainer.add_callback(snaps)
    trainer.train()
    stage_map = split_stages(trainer.model)
    units = unfreeze_units(stage_map)
    head = list(stage_map.head.param_names)
    p0, p1, p2 = snaps.params[0], snaps.params[1], snaps.params[2]

    # Epoch 0: head only.
    assert changed(p0, p1, head), "the head did not train"
    assert changed(p0, p1, stage_tensors(stage_map, [s.name for s in stage_map.backbone])) == []
    assert snaps.trainable[0] == set(head)
    # Epoch 1: the top unit joined; everything below stayed bit-identical.
    top = stage_tensors(stage_map, units[0])
    below = stage_tensors(stage_map, [name for unit in units[1:] for name in unit])
    assert changed(p1, p2, top), "the top stage did not train after unfreezing"
    assert changed(p0, p2, below) == []
    # Frozen BatchNorm statistics did not drift (two epochs of forward passes in train mode).
    bn_buffers = [n for n in snaps.buffers[0] if n.endswith(("running_mean", "running_var"))]
    frozen_bn = [n for n in bn_buffers if any(n.startswith(m + ".") for s in stage_map.backbone if s.name not in units[0] for m in s.module_names)]
    if kind != "vit":
        assert frozen_bn, "expected BatchNorm layers in frozen stages"
    assert changed(snaps.buffers[0], snaps.buffers[2], frozen_bn) == []
    # Unfreezing never rebuilt the optimizer or the scheduler.
    assert len(snaps.optimizer_ids) == 1 and len(snaps.scheduler_ids) == 1

    schedule = json.loads((tmp_path / "out" / "schedule.json").read_text())
    epochs = schedule["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    assert epochs[0]["trainable_stages"] == [stage_map.head.name]
    assert set(units[0]) <= set(epochs[1]["trainable_stages"])
    top_group = next(name for name in epochs[0]["lr_start"] if name.split("/")[0] == units[0][-1])
    assert epochs[0]["lr_start"][top_group] == 0.0  # frozen: no LR
    assert epochs[1]["lr_start"][top_group] > 0.0
    for record in epochs:
        assert {"train_loss", "validation", "lr_end"} <= set(record)
        assert {"accuracy", "macro_f1"} <= set(record["validation"])


@pytest.mark.parametrize("kind", CNN_KINDS)
def test_linear_probe_leaves_backbone_and_bn_statistics_untouched(kind, tiny_checkpoint, image_folder, tmp_path):
    trainer = make_trainer(kind, tiny_checkpoint, image_folder, tmp_path / "out", epochs=2, strategy="linear_probe")
    snaps = Snapshots()
    trainer.add_callback(snaps)
    trainer.train()
    stage_map = split_stages(trainer.model)
    backbone = stage_tensors(stage_map, [s.name for s in stage_map.backbone])
    assert changed(snaps.params[0], snaps.params[-1], backbone) == []
    assert changed(snaps.params[0], snaps.params[-1], list(stage_map.head.param_names))
    running = [n for n in snaps.buffers[0] if "running" in n]
    assert running and changed(snaps.buffers[0], snaps.buffers[-1], running) == []


def test_train_bn_lets_frozen_batchnorm_update(tiny_checkpoint, image_folder, tmp_path):
    trainer = make_trainer("resnet", tiny_checkpoint, image_folder, tmp_path / "out", epochs=1, strategy="linear_probe", train_bn=True)
    snaps = Snapshots()
    trainer.add_callback(snaps)
    trainer.train()
    running = [n for n in snaps.buffers[0] if n.endswith("running_mean")]
    assert changed(snaps.buffers[0], snaps.buffers[-1], running)


@pytest.mark.parametrize("strategy,k", [("top_k", 1), ("full", None)])
def test_top_k_and_full(strategy, k, tiny_checkpoint, image_folder, tmp_path):
    kwargs = {"top_k": k} if k else {}
    trainer = make_trainer("vit", tiny_checkpoint, image_folder, tmp_path / "out", epochs=1, strategy=strategy, **kwargs)
    snaps = Snapshots()
    trainer.add_callback(snaps)
    trainer.train()
    stage_map = split_stages(trainer.model)
    units = unfreeze_units(stage_map)
    trained_units = units[:k] if k else units
    frozen_units = units[k:] if k else []
    trained = stage_tensors(stage_map, [n for u in trained_units for n in u])
    frozen = stage_tensors(stage_map, [n for u in frozen_units for n in u])
    weights = [n for n in trained if n.endswith("weight")]
    assert set(changed(snaps.params[0], snaps.params[-1], weights)) == set(weights)
    assert changed(snaps.params[0], snaps.params[-1], frozen) == []


def test_stage_gate_ramps_and_refresh_keeps_the_same_scheduler():
    weight = torch.nn.Parameter(torch.zeros(2))
    other = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW(
        [
            {"params": [weight], "lr": 1.0, "trainable_since": 0, "ramp_steps": 0},
            {"params": [other], "lr": 0.5, "trainable_since": None, "ramp_steps": 0},
        ]
    )
    base = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scheduler = build_staged_scheduler(base, optimizer)
    assert [g["lr"] for g in optimizer.param_groups] == [1.0, 0.0]
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    optimizer.param_groups[1].update(trainable_since=3, ramp_steps=4)
    refresh_learning_rates(scheduler)
    seen = [optimizer.param_groups[1]["lr"]]
    for _ in range(5):
        optimizer.step()
        scheduler.step()
        seen.append(optimizer.param_groups[1]["lr"])
    assert seen == pytest.approx([0.125, 0.25, 0.375, 0.5, 0.5, 0.5])
    assert stage_gate({"trainable_since": None}, 10) == 0.0


def test_resume_restores_freeze_stage_and_group_gates(tiny_checkpoint, image_folder, tmp_path):
    # Uninterrupted reference run.
    reference = make_trainer("vit", tiny_checkpoint, image_folder, tmp_path / "ref", epochs=3)
    reference.train()
    # Interrupted after epoch 2 (one unfreeze done), then resumed from the checkpoint by a fresh trainer.
    class StopAfter(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            if round(state.epoch) == 2:
                control.should_training_stop = True

    first = make_trainer("vit", tiny_checkpoint, image_folder, tmp_path / "run", epochs=3)
    first.add_callback(StopAfter())
    first.train()
    checkpoint = max((tmp_path / "run").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    resumed = make_trainer("vit", tiny_checkpoint, image_folder, tmp_path / "run", epochs=3)
    snaps = Snapshots()
    resumed.add_callback(snaps)
    resumed.train(resume_from_checkpoint=str(checkpoint))

    from hf_finetune import StageUnfreezeCallback

    callback = next(cb for cb in resumed.callback_handler.callbacks if isinstance(cb, StageUnfreezeCallback))
    ref_callback = next(cb for cb in reference.callback_handler.callbacks if isinstance(cb, StageUnfreezeCallback))
    assert callback.num_unfrozen == ref_callback.num_unfrozen
    assert callback.events == ref_callback.events
    ref_gates = [(g["name"], g["trainable_since"], g["ramp_steps"], g["lr"]) for g in reference.optimizer.param_groups]
    gates = [(g["name"], g["trainable_since"], g["ramp_steps"], g["lr"]) for g in resumed.optimizer.param_groups]
    assert gates == ref_gates
    ref_params = dict(reference.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        assert torch.equal(param, ref_params[name]), name  # CPU, fixed seed: bit-identical

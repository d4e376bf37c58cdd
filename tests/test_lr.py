"""Learning rates: optimizer choice, one-cycle / cyclic curves, ReduceLROnPlateau with frozen groups, and the LR
range test (suggestion in the falling part of the loss curve, model restored after the sweep)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import TrainerControl, TrainerState

from helpers import make_trainer
from hf_finetune.training.lr_curves import CYCLIC_LOW, ONE_CYCLE_END, ONE_CYCLE_START, cyclic, one_cycle
from hf_finetune.training.callbacks.plateau import PlateauLRCallback
from hf_finetune.training.lr_find import lr_range_test, save_lr_find, suggest_learning_rate
from hf_finetune.training.lr_schedule import build_staged_scheduler


@pytest.mark.parametrize("name,cls", [("adamw", torch.optim.AdamW), ("radam", torch.optim.RAdam), ("sgd", torch.optim.SGD)])
def test_optimizer_choice_keeps_the_layer_decay_groups(name, cls, tiny_checkpoint, image_folder, tmp_path):
    trainer = make_trainer("vit", tiny_checkpoint, image_folder, tmp_path / "out", optimizer=name, layer_decay=0.5)
    optimizer = trainer.create_optimizer()
    assert type(optimizer) is cls
    lrs = {g["stage"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["head"] == pytest.approx(0.1) and lrs["norm"] == pytest.approx(1e-2)
    if name == "radam":
        assert optimizer.defaults["decoupled_weight_decay"] is True
    if name == "sgd":
        assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["nesterov"]


def test_one_cycle_and_cyclic_curves():
    curve = one_cycle(100)
    values = [curve(s) for s in range(100)]
    peak = int(np.argmax(values))
    assert values[0] == pytest.approx(ONE_CYCLE_START) and values[peak] == pytest.approx(1.0) and peak == 30
    assert all(a <= b for a, b in zip(values[:peak], values[1 : peak + 1]))
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1 :])) and values[-1] < 0.01 and min(values) >= ONE_CYCLE_END
    tri = cyclic(10)
    assert [tri(s) for s in (0, 5, 10, 15, 20)] == pytest.approx([CYCLIC_LOW, (CYCLIC_LOW + 1) / 2, 1.0, (CYCLIC_LOW + 1) / 2, CYCLIC_LOW])


@pytest.mark.parametrize("schedule", ["one_cycle", "cyclic", "plateau"])
def test_lr_schedules_stay_gated_per_group(schedule, tiny_checkpoint, image_folder, tmp_path):
    trainer = make_trainer("vit", tiny_checkpoint, image_folder, tmp_path / "out", epochs=2, strategy="linear_probe", lr_schedule=schedule)
    trainer.train()
    history = json.loads((tmp_path / "out" / "schedule.json").read_text())["lr_history"]["groups"]
    assert max(history["head/decay"]) > 0
    frozen = [name for name in history if not name.startswith("head/")]
    assert frozen and all(max(history[name]) == 0.0 for name in frozen)


def test_reduce_on_plateau_halves_every_group_and_keeps_frozen_groups_at_zero():
    live, frozen = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW(
        [{"params": [live], "lr": 1.0, "trainable_since": 0, "ramp_steps": 0},
         {"params": [frozen], "lr": 0.5, "trainable_since": None, "ramp_steps": 0}]
    )
    scheduler = build_staged_scheduler(torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), optimizer)
    callback = PlateauLRCallback(patience=2, factor=0.5)
    state, control = TrainerState(), TrainerControl()
    for value in (0.5, 0.6, 0.6, 0.55):  # improves, then two evaluations without improvement -> halve
        callback.on_evaluate(None, state, control, metrics={"eval_macro_f1": value}, optimizer=optimizer, lr_scheduler=scheduler)
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.0]
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.0]  # the factor persists across steps
    optimizer.param_groups[1]["trainable_since"] = 1  # unfrozen later: gets the reduced LR too
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.25]
    assert callback.reductions[0]["lr_factor"] == 0.5 and callback.state()["attributes"]["best"] == 0.6


def synthetic_loss(lr: np.ndarray) -> np.ndarray:
    """Flat at 2.3 for tiny LRs, falls between 1e-5 and 1e-2, explodes above 1e-1."""
    x = np.log10(lr)
    falling = 2.3 - 2.0 / (1 + np.exp(-(x + 3.5) * 2.5))
    return falling + np.where(x > -1.5, (x + 1.5) ** 2 * 8, 0.0)


def test_lr_suggestion_lies_in_the_falling_part_of_a_synthetic_loss_curve():
    lrs = np.logspace(-7, 0, 120)
    rng = np.random.default_rng(0)
    losses = synthetic_loss(lrs) + rng.normal(0, 0.02, lrs.shape)
    suggestion, steepest, minimum, smoothed = suggest_learning_rate(lrs.tolist(), losses.tolist())
    assert 1e-5 < suggestion < 1e-2 and steepest < minimum
    clean = synthetic_loss(np.array([suggestion / 3, suggestion, suggestion * 3]))
    assert clean[0] > clean[1] > clean[2]  # falling on both sides of the suggestion
    with pytest.raises(ValueError, match="at least 3"):
        suggest_learning_rate([1e-3, 1e-2], [1.0, 0.5])


def test_lr_range_test_restores_the_model_and_writes_plot_and_json(tiny_checkpoint, image_folder, tmp_path):
    trainer = make_trainer("resnet", tiny_checkpoint, image_folder, tmp_path / "out", strategy="top_k", top_k=1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in trainer.model.named_parameters()}
    result = lr_range_test(trainer, start_lr=1e-6, end_lr=10.0, num_steps=30)
    assert 1e-6 <= result.suggestion <= 10.0 and len(result.learning_rates) <= 30
    assert all(b > a for a, b in zip(result.learning_rates, result.learning_rates[1:]))
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert grads == {n: p.requires_grad for n, p in trainer.model.named_parameters()}
    assert trainer.optimizer is None  # training builds a fresh optimizer at the new LR
    json_path, plot_path = save_lr_find(result, str(tmp_path / "out"))
    saved = json.loads(open(json_path).read())
    assert saved["suggestion"] == result.suggestion and math.isfinite(saved["smoothed"][0])
    assert open(plot_path, "rb").read(4) == b"\x89PNG"


def test_lr_find_subcommand(tiny_checkpoint, image_folder, tmp_path, capsys):
    from hf_finetune.cli.main import main

    out = tmp_path / "lr"
    argv = ["lr-find", "--model", tiny_checkpoint("vit"), "--dataset", str(image_folder), "--output-dir", str(out),
            "--strategy", "full", "--per-device-train-batch-size", "8", "--disable-tqdm", "true"]
    assert main(argv) == 0
    assert "suggested --learning-rate" in capsys.readouterr().out
    assert (out / "lr_find.png").is_file() and (out / "lr_find.json").is_file()


def test_trainer_reduce_on_plateau_type_uses_the_gated_plateau_schedule():
    from transformers.trainer_utils import SchedulerType

    from hf_finetune.training.lr_curves import uses_plateau

    assert uses_plateau("trainer", SchedulerType("reduce_lr_on_plateau")) and uses_plateau("plateau", "cosine")
    assert not uses_plateau("trainer", SchedulerType("cosine"))

"""`--ema DECAY`: the moving average is timm's EMA of the weights, scored beside the raw weights at each evaluation,
and model selection keeps the better of the two on validation."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

from hf_finetune.cli.main import main
from hf_finetune.config.finetune import FinetuneArguments
from hf_finetune.training.callbacks.ema import EmaCallback
from tests.conftest import FAST_RUN_FLAGS, write_image_folder
from tests.helpers import assert_mentions, make_trainer


class _CompareAfterUpdate(TrainerCallback):
    """Runs after the EMA callback: records whether the average equals the raw weights, bit for bit, at each step."""

    def __init__(self, ema: EmaCallback) -> None:
        self.ema, self.equal = ema, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        average = self.ema.average.module.state_dict()
        self.equal.append(all(torch.equal(average[k], v) for k, v in model.state_dict().items()))


def test_decay_zero_is_the_raw_weights(tiny_checkpoint, image_folder, tmp_path):
    # `--ema 0` builds no average (it would be the raw weights): the callback is added by hand to show that it is.
    trainer = make_trainer("vit", tiny_checkpoint, image_folder, tmp_path / "out", epochs=2, ema=0.0)
    assert trainer.ema_callback is None
    trainer.add_callback(EmaCallback(0.0))
    ema = trainer.ema_callback
    compare = _CompareAfterUpdate(ema)
    trainer.add_callback(compare)
    trainer.train()
    assert compare.equal and all(compare.equal)
    assert len(ema.history) == 2  # scored at each epoch's evaluation
    epochs = [e for e in trainer.state.log_history if "eval_macro_f1" in e]
    for raw, averaged in zip(epochs, ema.history):
        assert averaged["macro_f1"] == raw["eval_macro_f1"] and averaged["loss"] == pytest.approx(raw["eval_loss"], abs=0)


def test_the_average_does_not_change_the_raw_training_run(tiny_checkpoint, image_folder, tmp_path):
    finals = []
    for ema in (None, 0.9):
        trainer = make_trainer("vit", tiny_checkpoint, image_folder, tmp_path / f"out-{ema}", epochs=3, ema=ema)
        trainer.args.load_best_model_at_end = False  # the last raw weights, whatever their score
        trainer.train()
        finals.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])


def test_the_average_is_the_exponential_moving_average(tiny_checkpoint, image_folder, tmp_path):
    trainer = make_trainer("vit", tiny_checkpoint, image_folder, tmp_path / "out", epochs=1, ema=0.9)
    trainer.args.max_steps = 2
    steps: list[dict[str, torch.Tensor]] = []

    class Keep(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            steps.append({k: v.clone() for k, v in model.state_dict().items()})

    trainer.add_callback(Keep())
    trainer.train()
    average = trainer.ema_callback.average.module.state_dict()
    name = next(n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(steps[0][n], steps[-1][n]))
    # timm's warm-up: the first update copies the weights, the second has decay 1 - 2 ** (-2/3) (below the cap 0.9).
    decay = 1 - 2 ** (-2 / 3)
    expected = decay * steps[0][name] + (1 - decay) * steps[1][name]
    assert torch.allclose(average[name], expected, atol=1e-6)
    assert not torch.equal(average[name], steps[-1][name])


def test_a_run_records_and_keeps_the_better_on_validation(tiny_checkpoint, tmp_path):
    folder = write_image_folder(tmp_path / "images", per_class=10)
    out = tmp_path / "out"
    assert main(["--model", tiny_checkpoint("vit"), "--dataset", str(folder), "--output-dir", str(out), *FAST_RUN_FLAGS,
                 "--ema", "0.5"]) == 0
    record = json.loads((out / "run_config.json").read_text())["ema"]
    assert record["decay"] == 0.5 and len(record["history"]) == 3
    raw, averaged = record["raw"]["validation_macro_f1"], record["averaged"]["validation_macro_f1"]
    assert record["chosen"] == ("ema" if averaged > raw else "raw")
    schedule = json.loads((out / "schedule.json").read_text())
    assert all("macro_f1" in epoch["ema_validation"] for epoch in schedule["epochs"])
    assert "### Moving average of the weights (`--ema 0.5`)" in (out / "README.md").read_text()


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_bad_decay(decay):
    with pytest.raises(ValueError) as err:
        FinetuneArguments(ema=decay)
    assert_mentions(str(err.value), "--ema", repr(decay), "0.999")


def test_the_advisor_turns_the_average_on_for_a_trained_run_and_ema_0_turns_it_off(tiny_checkpoint, tmp_path):
    from tests.test_advisor import _gray_folder

    folder = _gray_folder(tmp_path / "gray")  # small + different: LP-FT
    runs = {}
    for name, extra in (("advised", []), ("off", ["--ema", "0"])):
        out = tmp_path / name
        assert main(["--model", tiny_checkpoint("resnet"), "--dataset", str(folder), "--output-dir", str(out),
                     "--num-train-epochs", "1", "--per-device-train-batch-size", "8", "--disable-tqdm", "true",
                     *extra]) == 0
        runs[name] = json.loads((out / "run_config.json").read_text())
    advised, off = runs["advised"], runs["off"]
    assert advised["recipe"]["choices"]["ema"]["value"] == 0.999 and advised["recipe"]["choices"]["ema"]["source"] == "advisor"
    assert advised["ema"]["decay"] == 0.999 and advised["ema"]["chosen"] in ("ema", "raw")
    assert off["recipe"]["choices"]["ema"] == {"value": 0.0, "reason": "given by --ema", "source": "flag"}
    assert "ema" not in off


def test_a_checkpoint_holds_the_average_and_a_resume_continues_it(tiny_checkpoint, image_folder, tmp_path):
    from hf_finetune.training.callbacks.ema import AVERAGE_FILE, RECORD_FILE

    full = make_trainer("vit", tiny_checkpoint, image_folder, tmp_path / "full", epochs=2, ema=0.9)
    full.train()
    checkpoints = sorted((tmp_path / "full").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(checkpoints) == 2 and all((c / AVERAGE_FILE).is_file() and (c / RECORD_FILE).is_file() for c in checkpoints)
    resumed = make_trainer("vit", tiny_checkpoint, image_folder, tmp_path / "full", epochs=2, ema=0.9)
    resumed.train(resume_from_checkpoint=str(checkpoints[0]))  # the second epoch again, from the first's checkpoint
    expected = full.ema_callback.average.module.state_dict()
    averaged = resumed.ema_callback.average.module.state_dict()
    assert all(torch.equal(expected[k], averaged[k]) for k in expected)  # the same average as the uninterrupted run
    assert resumed.ema_callback.history == full.ema_callback.history

"""FinetuneTrainer overrides a few private Trainer methods (no public hook exists for them): each must still exist in
the installed transformers with the parameters our override expects, and no private override goes undeclared."""

from __future__ import annotations

import inspect

import pytest
from transformers import Trainer

from hf_finetune.training.trainer import PRIVATE_OVERRIDES, FinetuneTrainer


@pytest.mark.parametrize("name", sorted(PRIVATE_OVERRIDES))
def test_each_private_override_matches_the_installed_trainer(name):
    assert callable(getattr(Trainer, name, None)), f"transformers.Trainer no longer has `{name}`: {PRIVATE_OVERRIDES[name]}"
    ours = list(inspect.signature(getattr(FinetuneTrainer, name)).parameters)
    theirs = list(inspect.signature(getattr(Trainer, name)).parameters)
    assert ours == theirs


def test_every_private_override_is_declared_with_its_reason():
    overridden = {
        name
        for name, value in vars(FinetuneTrainer).items()
        if name.startswith("_") and not name.startswith("__") and callable(value) and hasattr(Trainer, name)
    }
    assert overridden == set(PRIVATE_OVERRIDES)


def test_save_model_still_marks_the_checkpoint_saves_ema_hooks_into():
    # FinetuneTrainer.save_model writes --ema's average into checkpoints on the Trainer's internal calls.
    assert list(inspect.signature(Trainer.save_model).parameters) == ["self", "output_dir", "_internal_call"]
    assert "self.save_model(output_dir, _internal_call=True)" in inspect.getsource(Trainer._save_checkpoint)

"""Surgical fine-tuning (`--train-stages`): only the listed stages and the head train, for the whole run; layer-wise
LR decay counts depth within them; bad lists fail with a message naming the valid stages."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import write_image_folder
from hf_finetune import FinetuneArguments, load_model_and_processor, split_stages
from hf_finetune.cli.main import main
from hf_finetune.training.param_groups import stage_learning_rates

FLAGS = ["--baseline", "false", "--num-train-epochs", "2", "--per-device-train-batch-size", "8", "--learning-rate", "5e-3", "--disable-tqdm", "true"]


def _params(path: str, labels: dict[int, str]) -> dict[str, torch.Tensor]:
    model, _ = load_model_and_processor(path, labels)
    return {name: p.detach().clone() for name, p in model.named_parameters()}, split_stages(model)


def test_only_the_listed_stages_and_the_head_change(tiny_checkpoint, tmp_path):
    folder = write_image_folder(tmp_path / "images", per_class=10)
    out = tmp_path / "out"
    checkpoint = tiny_checkpoint("resnet")
    argv = ["--model", checkpoint, "--dataset", str(folder), "--output-dir", str(out), "--train-stages", "blocks.0,3", *FLAGS]
    assert main(argv) == 0
    config = json.loads((out / "run_config.json").read_text())
    assert config["finetune"]["strategy"] == "full" and config["train_stages"] == ["blocks.0", "blocks.2"]
    assert config["freeze_events"][0]["trainable"] == ["blocks.0", "blocks.2"]
    schedule = json.loads((out / "schedule.json").read_text())
    assert [sorted(e["trainable_stages"]) for e in schedule["epochs"]] == [["blocks.0", "blocks.2", "head"]] * 2

    labels = {int(k): v for k, v in enumerate(config["labels"])}
    pretrained, stage_map = _params(checkpoint, labels)
    trained, _ = _params(str(out), labels)
    assert trained.keys() == pretrained.keys()
    for stage in stage_map.stages:
        changed = [name for name in stage.param_names if not torch.equal(trained[name], pretrained[name])]
        if stage.name in ("blocks.0", "blocks.2", "head"):
            assert changed, f"{stage.name} did not train"
            convs = [n for n in stage.param_names if n.endswith("convolution.weight")]
            assert set(convs) <= set(changed)
        else:
            assert changed == [], f"{stage.name} changed: {changed}"


def test_layer_decay_counts_depth_within_the_listed_stages(tiny_checkpoint):
    model, _ = load_model_and_processor(tiny_checkpoint("resnet"), {0: "a", 1: "b"})
    stage_map = split_stages(model)
    rates = stage_learning_rates(stage_map, 1.0, 0.5, 10.0, only=["blocks.0", "blocks.2"])
    assert rates["blocks.2"] == 1.0 and rates["blocks.0"] == 0.5 and rates["head"] == 10.0
    # Without `only`, depth counts over every stage: blocks.3 is the top.
    assert stage_learning_rates(stage_map, 1.0, 0.5, 10.0)["blocks.2"] == 0.5


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--train-stages", "blocks.0,blocks.9"],
            "error: `--train-stages` 'blocks.9' is not a backbone stage of '{model}'. Valid stages (index=name, input "
            "to output): 0=embeddings, 1=blocks.0, 2=blocks.1, 3=blocks.2, 4=blocks.3.",
        ),
        (
            ["--train-stages", "7"],
            "error: `--train-stages` '7' is not a backbone stage of '{model}'. Valid stages (index=name, input to "
            "output): 0=embeddings, 1=blocks.0, 2=blocks.1, 3=blocks.2, 4=blocks.3.",
        ),
        (
            ["--train-stages", "1", "--strategy", "linear_probe"],
            "error: `--train-stages` trains the listed stages for the whole run, which `--strategy linear_probe` "
            "contradicts (it never trains the backbone): drop `--strategy` (or pass `--strategy full`), or drop "
            "`--train-stages`.",
        ),
        (
            ["--train-stages", "1", "--strategy", "head_then_unfreeze"],
            "error: `--train-stages` trains the listed stages for the whole run, which `--strategy head_then_unfreeze` "
            "contradicts (it picks the trainable stages itself): drop `--strategy` (or pass `--strategy full`), or "
            "drop `--train-stages`.",
        ),
        (["--train-stages", " , "], "error: `--train-stages` names no stage, got ' , ': pass e.g. 'blocks.0,blocks.1' or '1,2'."),
        (["--truncate-after", ""], "error: `--truncate-after` is empty: pass a stage name or index, 'auto' or 'none'."),
        (
            ["--truncate-after", "blocks.3"],
            "error: `--truncate-after` 'blocks.3' is the top backbone stage of '{model}': nothing above it to remove. "
            "Pass a lower stage (0=embeddings, 1=blocks.0, 2=blocks.1, 3=blocks.2, 4=blocks.3) or `none`.",
        ),
        (
            ["--truncate-after", "blocks.1", "--train-stages", "blocks.2"],
            "error: `--train-stages` 'blocks.2' is not a backbone stage of '{model}'. Valid stages (index=name, input "
            "to output): 0=embeddings, 1=blocks.0, 2=blocks.1.",
        ),
    ],
)
def test_bad_stage_lists(flags, message, tiny_checkpoint, image_folder, tmp_path, capsys):
    model = tiny_checkpoint("resnet")
    argv = ["--model", model, "--dataset", str(image_folder), "--output-dir", str(tmp_path / "out"), *FLAGS, *flags]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == message.format(model=model)


def test_train_stages_implies_full():
    assert FinetuneArguments(train_stages="blocks.0").strategy == "full"
    assert FinetuneArguments(train_stages="1", strategy="full").strategy == "full"

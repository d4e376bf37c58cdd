"""What a new user meets first (issue 13): `--help`, a quiet console, honest run folders and cards."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from cli_runs import REPO, cli_env
from conftest import write_image_folder
from helpers import assert_mentions
from hf_finetune.cli.main import SUBCOMMANDS, main, parse_args


def _help(flag: str = "--help") -> str:
    result = subprocess.run([sys.executable, "-m", "hf_finetune", flag], capture_output=True, text=True, timeout=180, cwd=REPO, env=cli_env())
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_help_is_short_grouped_and_lists_the_subcommands():
    text = _help()
    assert len(text.splitlines()) < 200
    groups = re.findall(r"^([A-Z][^\n]*):$", text, re.M)
    assert len([g for g in groups if g not in ("options", "usage")]) >= 6, groups
    for name in SUBCOMMANDS:
        assert re.search(rf"^  {re.escape(name)} ", text, re.M), name
    assert "--strategy {auto,linear_probe,head_then_unfreeze,top_k,full}" in text
    assert not re.search(r"default:[^\n]*\(default:", text)  # no doubled default
    assert "--hub-strategy" not in text and "--no-check-images" not in text  # behind --help-all
    full = _help("--help-all")
    assert "--hub-strategy" in full and "--no-check-images" in full and not re.search(r"default:[^\n]*\(default:", full)


def test_trainer_flags_still_parse_and_friendly_aliases_work():
    _, _, _, training, _ = parse_args(["--model", "m", "--dataset", "d", "--epochs", "3", "--lr", "1e-3", "--batch-size", "4", "--hub-strategy", "end"])
    assert (training.num_train_epochs, training.learning_rate, training.per_device_train_batch_size) == (3.0, 1e-3, 4)


def test_an_unknown_flag_names_the_right_one(capsys):
    assert main(["--model", "m", "--dataset", "d", "--num_epochs", "3", "--model_name_or_path", "x"]) == 2
    assert_mentions(capsys.readouterr().err, "--num_epochs", "did you mean `--num_train_epochs`", "`--model_name_or_path`", "`--model`")


NOISE = ("LOAD REPORT", "Downloading data", "torchvision backend", "save_pretrained` method is disabled", "Loading weights",
         "Writing model shards")


@pytest.mark.parametrize("kind", ["vit", "timm"])
def test_a_run_prints_no_third_party_noise_and_removes_its_checkpoints(kind, tiny_checkpoint, tmp_path):
    data = write_image_folder(tmp_path / "images", per_class=8)
    out = tmp_path / "out"
    argv = ["--model", tiny_checkpoint(kind), "--dataset", str(data), "--output-dir", str(out), "--strategy", "head_then_unfreeze",
            "--num-train-epochs", "2", "--per-device-train-batch-size", "8", "--learning-rate", "5e-3"]
    result = subprocess.run([sys.executable, "-m", "hf_finetune", *argv], capture_output=True, text=True, timeout=300, cwd=REPO, env=cli_env())
    printed = result.stdout + result.stderr
    assert result.returncode == 0, printed[-3000:]
    for noise in NOISE:
        assert noise not in printed, noise
    assert "hf_finetune: test accuracy" in result.stdout and "next: python -m hf_finetune demo" in result.stdout
    assert not list(out.glob("checkpoint-*"))  # the saved model holds the best checkpoint's weights


def test_linear_probe_run_has_no_empty_plot_or_section(tiny_checkpoint, tmp_path):
    data = write_image_folder(tmp_path / "images", per_class=8)
    out = tmp_path / "out"
    argv = ["--model", tiny_checkpoint("vit"), "--dataset", str(data), "--output-dir", str(out), "--strategy", "linear_probe", "--disable-tqdm", "true"]
    result = subprocess.run([sys.executable, "-m", "hf_finetune", *argv], capture_output=True, text=True, timeout=300, cwd=REPO, env=cli_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (out / "lr_schedule.png").exists() and not (out / "training_curves.png").exists()
    card = (out / "README.md").read_text()
    assert "### Freeze timeline" not in card and "lr_schedule.png" not in card and "epoch(s) run" not in card
    assert "No training epochs" in card
    assert str(tmp_path) not in card and "__main__.py" not in card
    assert "python -m hf_finetune --model <local>/" in card


@pytest.mark.parametrize("multiplier", ["1", "10"])
def test_card_shows_the_head_lr_the_run_used(multiplier, tiny_checkpoint, tmp_path):
    data = write_image_folder(tmp_path / "images", per_class=10)
    out = tmp_path / "out"
    argv = ["--model", tiny_checkpoint("vit"), "--dataset", str(data), "--output-dir", str(out), "--strategy", "top_k", "--top-k", "1",
            "--baseline", "false", "--num-train-epochs", "1", "--learning-rate", "0.002", "--head-lr-multiplier", multiplier, "--disable-tqdm", "true"]
    assert main(argv) == 0
    card = (out / "README.md").read_text()
    head_lr = 0.002 * float(multiplier)
    assert f"head {head_lr:g} ({float(multiplier):g} x the top stage LR)" in card
    assert "10 x the top stage LR" not in card or multiplier == "10"
    config = json.loads((out / "run_config.json").read_text())
    assert config["finetune"]["head_lr_multiplier"] == float(multiplier)

"""Safe loading: no pickle payload runs, no remote code runs without `--trust-remote-code`, and the Hub token never
reaches a log line, run_config.json, a checkpoint or any other output file."""

from __future__ import annotations

import builtins
import re
import shutil
from pathlib import Path

import pytest
import torch

from cli_runs import QUIET, REPO, cli_env, run_cli
from conftest import write_image_folder
from helpers import assert_mentions
from hf_finetune import load_model_and_processor
from hf_finetune.cli.main import main


class _Payload:
    """Unpickling it opens (creates) the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def test_pickle_payload_in_pytorch_model_bin_is_refused_and_not_executed(tmp_path, tiny_checkpoint):
    from safetensors.torch import load_file

    checkpoint = Path(shutil.copytree(tiny_checkpoint("vit"), tmp_path / "poisoned"))
    state_dict = load_file(checkpoint / "model.safetensors")
    (checkpoint / "model.safetensors").unlink()  # only the pickle is left to load
    marker = tmp_path / "code_ran"
    torch.save({**state_dict, "payload": _Payload(marker)}, checkpoint / "pytorch_model.bin")
    with pytest.raises(ValueError) as err:
        load_model_and_processor(str(checkpoint), {0: "a", 1: "b"})
    assert not marker.exists()
    assert_mentions(str(err.value), "refused to load its pickled weights", "Unsupported global: GLOBAL io.open", "model.safetensors")


def test_plain_pytorch_model_bin_still_loads(tmp_path, tiny_checkpoint):
    from safetensors.torch import load_file

    checkpoint = Path(shutil.copytree(tiny_checkpoint("vit"), tmp_path / "legacy"))
    torch.save(load_file(checkpoint / "model.safetensors"), checkpoint / "pytorch_model.bin")
    (checkpoint / "model.safetensors").unlink()
    model, _ = load_model_and_processor(str(checkpoint), {0: "a", 1: "b"})
    assert model.config.num_labels == 2


def _remote_code_checkpoint(root: Path, marker: Path) -> Path:
    root.mkdir()
    (root / "config.json").write_text(
        '{"model_type": "evil_vision", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", '
        '"AutoModelForImageClassification": "modeling_evil.EvilModel"}}'
    )
    (root / "configuration_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\n\n\nclass EvilConfig(PretrainedConfig):\n    model_type = 'evil_vision'\n"
    )
    return root


def test_remote_code_checkpoint_needs_the_flag(tmp_path, image_folder, capsys):
    marker = tmp_path / "remote_code_ran"
    checkpoint = _remote_code_checkpoint(tmp_path / "remote", marker)
    argv = ["--model", str(checkpoint), "--dataset", str(image_folder), "--output-dir", str(tmp_path / "out"), *QUIET]
    assert main(argv) == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert_mentions(err, f"`--model` '{checkpoint}'", "custom Python code", "`--trust-remote-code`", "a repository you trust")


def test_hub_token_never_reaches_logs_or_output_files(tmp_path, tiny_checkpoint):
    env_token, flag_token = "hf_FAKEenvTOKEN0123456789abcdef", "hf_FAKEflagTOKEN0123456789abcdef"
    folder = write_image_folder(tmp_path / "images", per_class=8)
    out = tmp_path / "out"
    argv = ["--model", tiny_checkpoint("vit"), "--dataset", str(folder), "--output-dir", str(out),
            "--num-train-epochs", "2", "--per-device-train-batch-size", "8", "--hub-token", flag_token,
            "--logging-strategy", "steps", "--logging-steps", "1", "--keep-checkpoints", "true", *QUIET]  # scan them too
    log = tmp_path / "run.log"
    assert run_cli(argv, log, env=cli_env(HF_TOKEN=env_token)) == 0, log.read_text()[-3000:]

    files = [p for p in [log, *out.rglob("*")] if p.is_file()]
    assert {"run_config.json", "training_args.bin", "trainer_state.json", "test_report.json", "README.md"} <= {p.name for p in files}
    for path in files:
        data = path.read_bytes()
        for token in (env_token, flag_token):
            assert token.encode() not in data, f"{token} leaked into {path}"
    assert "--hub-token" in (out / "run_config.json").read_text()  # the flag is recorded, its value is not


def test_package_loads_pickles_only_with_weights_only_and_never_trusts_remote_code():
    for source in (REPO / "hf_finetune").glob("*.py"):
        text = source.read_text()
        for call in re.findall(r"torch\.load\((?!\.\.\.)[^)]*\)", text):  # `torch.load(...` in messages is prose
            assert "weights_only=True" in call, f"{source.name}: {call}"
        assert not re.search(r"trust_remote_code\s*=\s*True", text), source.name

"""Pushing to the Hub, checked at the huggingface_hub call boundary (HfApi methods monkeypatched; no network)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard, SpaceCard
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.hf_api import RepoUrl
from huggingface_hub.utils import filter_repo_objects

from conftest import FAST_RUN_FLAGS, copy_run, write_image_folder
from hf_finetune.cli.main import main
from hf_finetune.sharing.hub import IGNORE_PATTERNS, uploaded_files
from hf_finetune.config.command import redact_argv

SECRET = "hf_NotARealTokenButSecret0123456789"


class FakeHub:
    """Stands in for the Hub: records create_repo / upload_folder calls and what each upload would send."""

    def __init__(self, monkeypatch, fail_upload: Exception | None = None) -> None:
        self.repos: list[dict] = []
        self.uploads: list[dict] = []
        self.tokens: list = []
        self.fail_upload = fail_upload
        hub = self

        def create_repo(api, repo_id, *, private=None, repo_type=None, exist_ok=False, space_sdk=None, **kwargs):
            hub.tokens.append(api.token)
            full = repo_id if "/" in repo_id else f"me/{repo_id}"
            hub.repos.append({"repo_id": full, "private": private, "repo_type": repo_type, "space_sdk": space_sdk, "exist_ok": exist_ok})
            prefix = "spaces/" if repo_type == "space" else ""
            return RepoUrl(f"https://huggingface.co/{prefix}{full}")

        def upload_folder(api, *, repo_id, folder_path, repo_type=None, allow_patterns=None, ignore_patterns=None, **kwargs):
            hub.tokens.append(api.token)
            if hub.fail_upload is not None:
                raise hub.fail_upload
            root = Path(folder_path)
            files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
            sent = sorted(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
            hub.uploads.append(
                {
                    "repo_id": repo_id,
                    "repo_type": repo_type,
                    "files": sent,
                    "readme": (root / "README.md").read_text() if "README.md" in sent else None,
                    "contents": {name: (root / name).read_bytes() for name in sent},
                }
            )

        def refuse(*args, **kwargs):
            raise AssertionError("hf_finetune must not push through the Trainer (it would push mid-run)")

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        from transformers import Trainer

        monkeypatch.setattr(Trainer, "init_hf_repo", refuse)
        monkeypatch.setattr(Trainer, "push_to_hub", refuse)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_command_uploads_model_processor_card_and_plots_but_no_checkpoints(finished_run_dir, tmp_path, monkeypatch, capsys):
    out = copy_run(finished_run_dir, tmp_path / "run")
    hub = FakeHub(monkeypatch)
    assert main(["push", str(out), "--repo-id", "me/tiny-vit", "--private"]) == 0
    assert "pushed" in capsys.readouterr().out

    assert hub.repos == [{"repo_id": "me/tiny-vit", "private": True, "repo_type": None, "space_sdk": None, "exist_ok": True}]
    [upload] = hub.uploads
    files = upload["files"]
    assert upload["repo_id"] == "me/tiny-vit"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "confusion_matrix.png",
                 "lr_schedule.png", "training_curves.png", "test_report.json", "schedule.json", "run_config.json"):
        assert name in files, name
    assert any(f.startswith("examples/") for f in files)
    assert (out / "checkpoint-9").is_dir() and not any(f.startswith("checkpoint-") for f in files)
    assert "training_args.bin" not in files
    assert files == uploaded_files(str(out))
    # The uploaded card names the repository it lives in.
    card = ModelCard(upload["readme"])
    assert card.data.model_name == "tiny-vit" and 'model="me/tiny-vit"' in card.text
    assert [r.metric_type for r in card.data.eval_results] == ["accuracy", "f1"]


def test_training_run_with_push_to_hub_pushes_once_at_the_end_and_never_leaks_the_token(tmp_path, tiny_checkpoint, monkeypatch, capsys, caplog):
    folder = write_image_folder(tmp_path / "images", per_class=10)
    out = tmp_path / "tiny-run"
    hub = FakeHub(monkeypatch)
    argv = ["--model", tiny_checkpoint("vit"), "--dataset", str(folder), "--output-dir", str(out), *FAST_RUN_FLAGS,
            "--push-to-hub", "--hub-token", SECRET, "--push-demo"]
    monkeypatch.setattr("sys.argv", ["hf_finetune", *argv])
    assert main(argv) == 0

    # One model repo (named after the output directory, in the token's namespace) and one Space, after the run.
    assert [r["repo_id"] for r in hub.repos] == ["me/tiny-run", "me/tiny-run-demo"]
    assert hub.repos[1]["repo_type"] == "space" and hub.repos[1]["space_sdk"] == "gradio"
    assert set(hub.tokens) == {SECRET}  # handed to HfApi ...
    model_upload, space_upload = hub.uploads
    assert {"README.md", "model.safetensors", "test_report.json", "lr_schedule.png"} <= set(model_upload["files"])
    # ... and nowhere else: not in any local file (checkpoints included), uploaded file, config or log.
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    for upload in (model_upload, space_upload):
        assert all(SECRET.encode() not in content for content in upload["contents"].values())
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err + caplog.text
    command = json.loads((out / "run_config.json").read_text())["command"]
    assert command[command.index("--hub-token") + 1] == "<HUB_TOKEN>"

    # The Space: the demo folder as is, its README pointing at the pushed model.
    assert space_upload["repo_id"] == "me/tiny-run-demo" and space_upload["repo_type"] == "space"
    assert sorted(space_upload["files"]) == ["README.md", "app.py", "requirements.txt"]
    space_card = SpaceCard(space_upload["readme"])
    assert space_card.data.models == ["me/tiny-run"]
    assert space_card.data.sdk == "gradio" and space_card.data.app_file == "app.py"


def test_failed_upload_leaves_output_intact_and_prints_the_retry_command(finished_run_dir, tmp_path, monkeypatch, capsys, caplog):
    out = copy_run(finished_run_dir, tmp_path / "run")
    before = _digest(out)
    import httpx

    response = httpx.Response(403, request=httpx.Request("POST", "https://huggingface.co/api/models/me/tiny-vit/commit/main"))
    FakeHub(monkeypatch, fail_upload=HfHubHTTPError("403 Forbidden: you have no write access to me/tiny-vit", response=response))
    assert main(["push", str(out), "--repo-id", "me/tiny-vit", "--push-demo"]) == 1
    err = capsys.readouterr().err
    assert "upload failed" in err and "HfHubHTTPError: 403 Forbidden" in caplog.text
    assert f"python -m hf_finetune push {out} --repo-id me/tiny-vit --push-demo" in err
    assert _digest(out) == before


def test_push_without_network_fails_cleanly(finished_run_dir, tmp_path, capsys):
    # conftest sets HF_HUB_OFFLINE=1: the real HfApi refuses to connect.
    out = copy_run(finished_run_dir, tmp_path / "run")
    before = _digest(out)
    assert main(["push", str(out), "--repo-id", "someone/model"]) == 1
    err = capsys.readouterr().err
    assert "upload failed" in err and f"python -m hf_finetune push {out} --repo-id someone/model" in err
    assert _digest(out) == before


@pytest.mark.parametrize(
    "argv,message",
    [
        (["push", "{missing}", "--repo-id", "me/x"], "does not exist: pass the --output-dir of a finished run"),
        (["push", "{incomplete}", "--repo-id", "me/x"], "is not a complete run: config.json, README.md, model.safetensors missing"),
        (["push", "{run}", "--repo-id", "me/bad name!"], "`--repo-id` 'me/bad name!' is not a valid Hub repository id"),
        (["push", "{run}", "--repo-id", "me/x", "--space-id", "me/x-demo"], "`--space-id` is only used with `--push-demo`"),
    ],
)
def test_push_refuses_bad_input(argv, message, finished_run_dir, tmp_path, monkeypatch, capsys):
    hub = FakeHub(monkeypatch)
    (tmp_path / "incomplete").mkdir()
    paths = {"missing": tmp_path / "nope", "incomplete": tmp_path / "incomplete", "run": finished_run_dir}
    assert main([arg.format(**paths) for arg in argv]) == 2
    assert message in capsys.readouterr().err
    assert hub.repos == [] and hub.uploads == []


def test_push_demo_needs_push_to_hub(capsys, tmp_path):
    assert main(["--model", "x", "--dataset", "y", "--output-dir", str(tmp_path / "o"), "--push-demo"]) == 2
    assert "`--push-demo` creates a Space for the pushed model: add `--push-to-hub`" in capsys.readouterr().err


def test_redact_argv():
    assert redact_argv(["--hub-token", SECRET, "--x", "1"]) == ["--hub-token", "<HUB_TOKEN>", "--x", "1"]
    assert redact_argv([f"--hub_token={SECRET}"]) == ["--hub_token=<HUB_TOKEN>"]
    assert "checkpoint-*" in IGNORE_PATTERNS

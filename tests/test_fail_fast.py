"""Fail fast (issue 13): a `--model` that cannot be resolved fails before any image is decoded, and a run that fails
before training (bad model, dataset or flag) leaves the output folder as it found it: gone when the run created it,
untouched when it was there before."""

from __future__ import annotations

import json

import pytest
from PIL import ImageFile

from conftest import write_image_folder
from helpers import assert_mentions
from hf_finetune import DataArguments, load_splits
from hf_finetune.cli.main import main
from hf_finetune.config.files import DATA_AUDIT_FILE, RUN_CONFIG_FILE
from hf_finetune.pipeline.output_dir import undone_on_failure

_MISSING_MODEL = "nobody/no-such-model"


@pytest.fixture
def decodes(monkeypatch) -> list[int]:
    """Counts image decodes (`ImageFile.load`, which every PNG/JPEG decode goes through, in any thread)."""
    calls: list[int] = []
    load = ImageFile.ImageFile.load

    def counting_load(self):
        calls.append(1)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    return calls


def test_an_unresolvable_model_fails_before_any_image_is_decoded(image_folder, tmp_path, capsys, decodes):
    load_splits(DataArguments(dataset=str(image_folder)), seed=0)
    assert decodes, "the counter must see the image check's decodes"
    decodes.clear()
    out = tmp_path / "runs" / "out"  # neither folder exists yet
    assert main(["--model", _MISSING_MODEL, "--dataset", str(image_folder), "--output-dir", str(out)]) == 2
    assert_mentions(capsys.readouterr().err, "`--model`", f"'{_MISSING_MODEL}'", "offline", f"hf download {_MISSING_MODEL}")
    assert not decodes
    assert not (tmp_path / "runs").exists()


def test_kfold_with_an_unresolvable_model_fails_before_any_image_is_decoded(image_folder, tmp_path, capsys, decodes):
    out = tmp_path / "runs" / "out"
    assert main(["--model", _MISSING_MODEL, "--dataset", str(image_folder), "--output-dir", str(out), "--kfold", "3"]) == 2
    assert_mentions(capsys.readouterr().err, "`--model`", f"'{_MISSING_MODEL}'")
    assert not decodes


def test_a_pre_existing_empty_output_folder_is_left_in_place(image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert main(["--model", _MISSING_MODEL, "--dataset", str(image_folder), "--output-dir", str(out)]) == 2
    assert out.is_dir() and not any(out.iterdir())


def test_a_bad_dataset_leaves_no_output_folder(tiny_checkpoint, tmp_path, capsys):
    data = write_image_folder(tmp_path / "one_class", classes=("cat",), per_class=4)
    out = tmp_path / "out"
    assert main(["--model", tiny_checkpoint("vit"), "--dataset", str(data), "--output-dir", str(out)]) == 2
    assert_mentions(capsys.readouterr().err, "single class", "at least 2")
    assert not out.exists()


def test_a_bad_flag_found_after_the_audit_takes_back_the_audit_files(tiny_checkpoint, image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--model", tiny_checkpoint("vit"), "--dataset", str(image_folder), "--output-dir", str(out), "--audit", "on",
            "--strategy", "top_k", "--top-k", "99", "--disable-tqdm", "true"]
    assert main(argv) == 2
    assert_mentions(capsys.readouterr().err, "`--top-k` 99", "`--strategy full`")
    assert not out.exists()


def test_only_what_the_failed_run_added_is_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    (out / RUN_CONFIG_FILE).write_text(json.dumps({"status": "running"}))  # there before: not this run's
    with pytest.raises(RuntimeError), undone_on_failure(str(out)):
        (out / DATA_AUDIT_FILE).write_text("{}")
        (out / "other_tool.log").write_text("not a name hf_finetune writes")
        raise RuntimeError("bad flag")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "other_tool.log", RUN_CONFIG_FILE]

    fresh = tmp_path / "a" / "b"
    with pytest.raises(KeyboardInterrupt), undone_on_failure(str(fresh)):
        fresh.mkdir(parents=True)
        (fresh / "unknown.bin").write_bytes(b"?")
        raise KeyboardInterrupt
    assert (fresh / "unknown.bin").is_file()  # a file of another name keeps its folders

    with undone_on_failure(str(tmp_path / "ok")):
        (tmp_path / "ok").mkdir()
        (tmp_path / "ok" / DATA_AUDIT_FILE).write_text("{}")
    assert (tmp_path / "ok" / DATA_AUDIT_FILE).is_file()  # a run that goes on keeps everything

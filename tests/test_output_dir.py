"""The output folder is the user's ground, a resume continues only the run it started, and the feature cache checks
what it reads (reliability II). One test per row of docs/bad_inputs.md; folders and models are written by the test,
and every folder a test did not create for the run is checked byte for byte afterwards."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST_RUN_FLAGS, write_image_folder
from helpers import assert_mentions

from hf_finetune import DataArguments, load_model_and_processor, load_splits
from hf_finetune.cli.main import main
from hf_finetune.pipeline.output_dir import check_output_location

# Two epochs of the quick tiny-model run: enough for checkpoints to resume from.
FLAGS = [*FAST_RUN_FLAGS, "--num-train-epochs", "2"]


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _run(model: str, dataset: Path, out: Path, *flags: str) -> int:
    return main(["--model", model, "--dataset", str(dataset), "--output-dir", str(out), *FLAGS, *flags])


# ---- where a run may write --------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["itself", "inside"])
def test_output_dir_in_the_dataset_folder_is_refused(where, tmp_path, tiny_checkpoint, capsys):
    data = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=6)
    before = _digest(data)
    out = data if where == "itself" else data / "runs" / "x"
    assert _run(tiny_checkpoint("vit"), data, out) == 2
    assert_mentions(capsys.readouterr().err, f"`--output-dir` '{out}'", "`--dataset` folder", "read them as data", "outside the dataset")
    assert _digest(data) == before and not (data / "runs").exists()


def test_output_dir_that_is_the_model_folder_is_refused(tmp_path, tiny_checkpoint, capsys):
    model = Path(tiny_checkpoint("vit"))
    data = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=6)
    before = _digest(model)
    assert _run(str(model), data, model) == 2
    assert_mentions(capsys.readouterr().err, "`--model` folder", "overwrite the pretrained weights", "another --output-dir")
    assert _digest(model) == before
    with pytest.raises(ValueError):  # a folder holding the model: checkpoint rotation could delete it
        check_output_location(str(model.parent), str(model), str(data), overwrite=True)


def _plant_foreign_files(out: Path) -> dict[str, str]:
    out.mkdir(parents=True)
    (out / "README.md").write_text("# my notes\n")
    (out / "config.json").write_text('{"someone": "else"}')
    (out / "checkpoint-100").mkdir()
    (out / "checkpoint-100" / "weights.bin").write_bytes(b"\x00" * 64)
    (out / "notes.txt").write_text("keep me")
    return _digest(out)


def test_output_dir_holding_someone_elses_files_is_refused_and_left_byte_identical(tmp_path, tiny_checkpoint, capsys):
    data = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=6)
    out = tmp_path / "theirs"
    before = _plant_foreign_files(out)
    assert _run(tiny_checkpoint("vit"), data, out) == 2
    err = capsys.readouterr().err
    assert_mentions(err, "not empty and holds no hf_finetune run", "README.md", "checkpoint-100", "--overwrite-output-dir", "README.md, config.json")
    assert _run(tiny_checkpoint("vit"), data, out, "--overwrite-output-dir") == 2  # their checkpoint would be rotated away
    assert_mentions(capsys.readouterr().err, "checkpoint-100", "did not write", "never deletes")
    assert _digest(out) == before


def test_overwrite_output_dir_on_someone_elses_folder_says_what_it_replaces_and_deletes_nothing(tmp_path, tiny_checkpoint, caplog):
    data = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=6)
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "plots").mkdir()
    (out / "plots" / "old.png").write_bytes(b"png")
    before = _digest(out)
    with caplog.at_level(logging.WARNING):
        assert _run(tiny_checkpoint("vit"), data, out, "--overwrite-output-dir") == 0
    assert_mentions(caplog.text, "--overwrite-output-dir", "holds files of another tool", "replaces none of them", "deletes nothing")
    after = _digest(out)
    assert {name: after[name] for name in before} == before and (out / "test_report.json").is_file()


# ---- resume integrity -------------------------------------------------------------------------------------------


def _interrupted_run(tmp_path: Path, tiny_checkpoint) -> tuple[Path, Path, str]:
    """A finished tiny run, turned back into an unfinished one (as a kill after its last checkpoint leaves it)."""
    data = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=10)
    out = tmp_path / "out"
    model = tiny_checkpoint("vit")
    assert _run(model, data, out, "--save-total-limit", "2", "--keep-checkpoints") == 0
    assert sorted(out.glob("checkpoint-*")), "the run kept no checkpoint"
    config = json.loads((out / "run_config.json").read_text())
    assert set(config["data_fingerprint"]) == {"train"} and config["model_fingerprint"]["files"]
    config["status"] = "interrupted"
    (out / "run_config.json").write_text(json.dumps(config))
    (out / "test_report.json").unlink()
    return data, out, model


def test_rerun_after_images_were_added_is_refused_naming_what_changed(tmp_path, tiny_checkpoint, capsys):
    data, out, model = _interrupted_run(tmp_path, tiny_checkpoint)
    write_image_folder(data, classes=("a",), per_class=13, seed=5)  # img_010.png .. img_012.png are new
    before = _digest(out)
    assert _run(model, data, out, "--save-total-limit", "2") == 2
    err = capsys.readouterr().err
    assert_mentions(err, "The data changed since the run", "train: 20 images", "-> 23 images", "Restore the data", "--overwrite-output-dir")
    assert _digest(out) == before


def test_resume_from_checkpoint_with_a_new_learning_rate_is_refused(tmp_path, tiny_checkpoint, capsys):
    data, out, model = _interrupted_run(tmp_path, tiny_checkpoint)
    before = _digest(out)
    assert _run(model, data, out, "--save-total-limit", "2", "--resume-from-checkpoint", "true", "--learning-rate", "1e-4") == 2
    err = capsys.readouterr().err
    assert_mentions(err, "--resume-from-checkpoint continues the run", "training.learning_rate (0.005 -> 0.0001)", "recorded without being applied", "start a new run")
    assert _digest(out) == before


# ---- the feature cache ------------------------------------------------------------------------------------------


@pytest.fixture
def cached(tmp_path, tiny_checkpoint):
    """(compute(), cache directory of the head's vectors): a tiny ViT's feature pass over a small folder."""
    from hf_finetune.probing.features import compute_split_features

    data = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=8)
    splits = load_splits(DataArguments(dataset=str(data)), seed=0)
    path = tiny_checkpoint("vit")
    model, processor = load_model_and_processor(path, splits.id2label)

    def compute():
        return compute_split_features(model, processor, splits, model_name_or_path=path, cache_dir=str(tmp_path / "cache"))

    first = compute()
    assert first.computed == 16
    return compute, tmp_path / "cache" / first.model_key, first


def _damage(shard: Path, how: str) -> None:
    """Damages a shard's `.features.npy` file in place."""
    if how == "truncated":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif how == "bit_flip":  # caught by the content hash in the shard's name
        data = bytearray(shard.read_bytes())
        data[len(data) - 5] ^= 0x01
        shard.write_bytes(bytes(data))
    else:
        features = np.load(shard)
        np.save(shard, np.zeros_like(features) if how == "zeros" else np.ones((len(features), 7), dtype=np.float32))


@pytest.mark.parametrize("how", ["truncated", "bit_flip", "zeros", "wrong_size"])
def test_bad_feature_cache_shard_is_rebuilt_with_a_warning(how, cached, caplog):
    compute, directory, first = cached
    (shard,) = directory.glob("shard-*.features.npy")
    _damage(shard, how)
    with caplog.at_level(logging.WARNING):
        again = compute()
    assert again.computed == 16  # rebuilt, not a traceback nor silently used
    assert_mentions(caplog.text, "Feature cache shard", "is bad", "computed again")
    assert np.allclose(again.train.features, first.train.features, atol=1e-5)
    assert compute().computed == 0  # the rebuilt shard reads back


def test_stale_cached_vectors_are_caught_by_the_spot_check(cached, caplog):
    from hf_finetune.probing.feature_cache import FeatureCache

    compute, directory, _ = cached
    (keys_file,) = directory.glob("shard-*.keys.npy")
    keys = np.load(keys_file).tolist()
    features = np.load(str(keys_file).replace(".keys.npy", ".features.npy"))
    for path in directory.glob("shard-*"):
        path.unlink()
    FeatureCache(str(directory.parent), directory.name).add(keys, features + 1.0)  # a valid shard, wrong vectors
    with caplog.at_level(logging.WARNING):
        assert compute().computed == 16
    assert_mentions(caplog.text, "differs from what the model computes now")


def test_hub_revision_is_keyed_by_the_commit_it_resolves_to(tmp_path, tiny_checkpoint):
    from hf_finetune.probing.feature_cache import (
        checkpoint_fingerprint,
        model_cache_key,
        resolve_revision,
    )

    refs = tmp_path / "hub" / "models--someone--vit" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("a" * 40)
    before = checkpoint_fingerprint("someone/vit", None, cache_dir=str(tmp_path / "hub"))
    assert before == {"hub_id": "someone/vit", "revision": "a" * 40}
    (refs / "main").write_text("b" * 40)  # `main` got new weights
    assert checkpoint_fingerprint("someone/vit", "main", cache_dir=str(tmp_path / "hub"))["revision"] == "b" * 40
    assert resolve_revision("someone/vit", "c" * 40) == "c" * 40  # a commit is its own resolution
    assert resolve_revision("someone/never-downloaded", "v1", cache_dir=str(tmp_path / "hub")) == "v1"  # offline, unknown
    # What the feature pass keys on: the commit transformers resolved when it loaded the model.
    assert model_cache_key("someone/vit", None, None, ["h"], commit="a" * 40) != model_cache_key("someone/vit", None, None, ["h"], commit="b" * 40)

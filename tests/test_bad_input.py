"""Messy data and bad arguments: each one is either handled (converted, skipped with a recorded reason) or refused
with a message that names the file/flag and the fix. docs/bad_inputs.md lists them with these tests."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_files import BROKEN_KINDS, MODES, write_broken_file, write_mode_image
from conftest import write_image_folder
from helpers import assert_mentions
from hf_finetune import DataArguments, load_splits
from hf_finetune.cli.main import main
from hf_finetune.data.transforms import attach_transforms
from hf_finetune.data.check import image_problem

FAST = ["--strategy", "head_then_unfreeze", "--num-train-epochs", "1", "--per-device-train-batch-size", "8", "--disable-tqdm", "true"]


def _cli(tmp_path: Path, model: str, dataset: str, *flags: str) -> int:
    return main(["--model", model, "--dataset", dataset, "--output-dir", str(tmp_path / "out"), *FAST, *flags])


# ---- files ------------------------------------------------------------------------------------------------------


def test_broken_files_are_skipped_listed_and_recorded(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=8)
    broken = {kind: write_broken_file(root / "cat" / f"bad_{kind}", kind) for kind in BROKEN_KINDS}
    splits = load_splits(DataArguments(dataset=str(root)), seed=0)

    assert len(splits.train) + len(splits.validation) + len(splits.test) == 24  # exactly the good images
    recorded = {Path(entry["file"]).name: entry for entry in splits.skipped_files}
    assert set(recorded) == {path.name for path in broken.values()}
    assert recorded["bad_zero_byte.jpg"]["reason"] == "empty file (0 bytes)"
    assert "truncated" in recorded["bad_truncated_jpeg.jpg"]["reason"]  # passes Image.verify(), fails a real decode
    assert "truncated" in recorded["bad_truncated_png.png"]["reason"]
    assert "cannot identify image file" in recorded["bad_text_named_png.png"]["reason"]
    assert recorded["bad_non_image_file.txt"]["kind"] == "not_an_image"
    assert {recorded[name]["split"] for name in recorded if name != "bad_non_image_file.txt"} == {"train"}
    summary = splits.provenance["image_check"]
    assert (summary["checked"], summary["skipped"], summary["unreadable_images"], summary["non_image_files"]) == (28, 5, 4, 1)


def test_truncated_jpeg_passes_verify_but_not_the_check(tmp_path):
    path = write_broken_file(tmp_path / "x", "truncated_jpeg", size=256)
    with Image.open(path) as image:
        image.verify()  # the cheap check would let it through
    assert "image file is truncated" in image_problem(str(path))
    assert image_problem(data=path.read_bytes()) == image_problem(str(path))  # Hub datasets carry bytes


@pytest.mark.parametrize("mode", MODES)
def test_every_image_mode_goes_through_the_whole_data_path(mode, tmp_path, tiny_checkpoint):
    from transformers import AutoImageProcessor

    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=6)
    for k in range(6):
        (root / "a" / f"img_{k:03d}.png").unlink()
        write_mode_image(root / "a" / f"m{k}", mode, seed=k)
    splits = load_splits(DataArguments(dataset=str(root)), seed=0)
    assert splits.skipped_files == []
    attach_transforms(splits, AutoImageProcessor.from_pretrained(tiny_checkpoint("vit")), "light")
    for split in (splits.train, splits.validation, splits.test):
        for example in split:
            assert tuple(example["pixel_values"].shape) == (3, 32, 32)
            assert bool(example["pixel_values"].isfinite().all())


def test_sixteen_bit_png_keeps_its_contrast_through_datasets(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=8)
    ramp = (np.arange(24 * 24).reshape(24, 24) * 100).astype(np.uint16)  # 0 .. 57500: all above 8 bits
    Image.fromarray(ramp).save(root / "a" / "deep.png")
    splits = load_splits(DataArguments(dataset=str(root), check_images=True), seed=0)
    from hf_finetune.data.images import to_rgb

    images = [im for split in (splits.train, splits.validation, splits.test) for im in split["image"] if im.mode == "I;16"]
    assert len(images) == 1
    rgb = np.asarray(to_rgb(images[0]))
    assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) > 200  # scaled, not clipped to white


# ---- classes ----------------------------------------------------------------------------------------------------


def test_empty_class_folder_is_reported_and_is_not_a_class(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=8)
    (root / "empty").mkdir()
    (root / "only_notes").mkdir()
    (root / "only_notes" / "readme.txt").write_text("no images here")
    splits = load_splits(DataArguments(dataset=str(root)), seed=0)
    assert splits.labels == ["cat", "dog", "fish"]
    folders = {Path(p).name for p in splits.provenance["image_check"]["empty_class_folders"]}
    assert folders == {"empty", "only_notes"}


def test_class_whose_every_file_is_broken_is_dropped_with_a_warning(tmp_path, caplog):
    root = write_image_folder(tmp_path / "d", per_class=8)
    (root / "ghost").mkdir()
    for k in range(3):
        write_broken_file(root / "ghost" / f"g{k}", "zero_byte")
    splits = load_splits(DataArguments(dataset=str(root)), seed=0)
    assert splits.labels == ["cat", "dog", "fish"]
    assert splits.provenance["dropped_classes"] == ["ghost"]
    assert set(Counter(splits.train["label"])) == {0, 1, 2}
    assert_mentions(caplog.text, "['ghost']", "no readable image", "Add readable images")


def test_single_image_class_is_kept_in_train_only_and_said_so(tmp_path, caplog):
    root = write_image_folder(tmp_path / "d", per_class=10)
    for extra in sorted((root / "fish").iterdir())[1:]:
        extra.unlink()
    splits = load_splits(DataArguments(dataset=str(root)), seed=0)
    fish = splits.labels.index("fish")
    assert Counter(splits.train["label"])[fish] == 1
    assert fish not in splits.validation["label"] and fish not in splits.test["label"]
    assert splits.provenance["train_only_classes"] == ["fish"]
    assert_mentions(caplog.text, "['fish']", "single image", "kept in train only", "at least 3 per class")


def test_test_report_macro_f1_ignores_a_class_with_no_test_image():
    from hf_finetune import classification_report

    report = classification_report(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), ["a", "b", "train_only"])
    assert report["macro_f1"] == 1.0 and report["per_class"]["train_only"]["support"] == 0


def test_single_class_dataset_is_refused_by_the_cli(tmp_path, tiny_checkpoint, capsys):
    root = write_image_folder(tmp_path / "d", classes=("only",), per_class=6)
    assert _cli(tmp_path, tiny_checkpoint("vit"), str(root)) == 2
    err = capsys.readouterr().err
    assert_mentions(err, str(root), "single class", "at least 2 classes", "one sub-folder of images per class")


# ---- Hub datasets (load_dataset monkeypatched: a dataset saved to disk, no network) ---------------------------


@pytest.fixture
def hub_dataset(tmp_path, monkeypatch):
    """`datasets.load_dataset("someone/pets")` returns a dataset with bytes images and string labels, no features."""
    import datasets

    def encoded(colour):
        buffer = Image.new("RGB", (16, 16), colour)
        import io

        out = io.BytesIO()
        buffer.save(out, "PNG")
        return out.getvalue()

    rows = {"pixels": [], "species": [], "note": []}
    for k in range(30):
        species = ("cat", "dog", "emu")[k % 3]
        rows["pixels"].append(encoded((k * 8, 100, 200 - k * 5)))
        rows["species"].append(species)
        rows["note"].append(f"row {k}")
    rows["pixels"][7] = b"\x89PNG broken"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(tmp_path / "pets")
    seen = []

    def fake_load_dataset(path, name=None, **kwargs):
        seen.append(path)
        return datasets.load_from_disk(str(tmp_path / "pets"))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return seen


def test_hub_dataset_without_image_column_names_the_columns_and_the_flag(hub_dataset):
    with pytest.raises(ValueError) as err:
        load_splits(DataArguments(dataset="someone/pets"), seed=0)
    assert hub_dataset == ["someone/pets"]
    assert_mentions(str(err.value), "column holds the images", "['pixels', 'species', 'note']", "`--image-column`")


def test_hub_dataset_without_label_column_names_the_flag(hub_dataset):
    with pytest.raises(ValueError) as err:
        load_splits(DataArguments(dataset="someone/pets", image_column="pixels"), seed=0)
    assert_mentions(str(err.value), "column holds the labels", "['pixels', 'species', 'note']", "`--label-column`")


def test_hub_dataset_with_named_columns_of_bytes_and_strings_loads(hub_dataset):
    splits = load_splits(DataArguments(dataset="someone/pets", image_column="pixels", label_column="species"), seed=0)
    assert splits.labels == ["cat", "dog", "emu"]
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 29
    assert splits.skipped_files[0]["file"] == "row 7" and "cannot identify image file" in splits.skipped_files[0]["reason"]
    assert splits.train[0]["image"].size == (16, 16)


def test_hub_dataset_image_column_that_holds_no_images(hub_dataset):
    with pytest.raises(ValueError) as err:
        load_splits(DataArguments(dataset="someone/pets", image_column="species", label_column="note"), seed=0)
    assert_mentions(str(err.value), "None of the 30 images", "'train' split", "the first, cat:", "'species'", "`--image-column`")


def test_hub_dataset_id_while_offline_says_what_to_do(tmp_path, tiny_checkpoint, capsys):
    assert _cli(tmp_path, tiny_checkpoint("vit"), "nobody/no-such-dataset") == 2
    err = capsys.readouterr().err
    assert_mentions(err, "`--dataset` 'nobody/no-such-dataset'", "not in the datasets cache", "local ImageFolder directory")


# ---- --model ----------------------------------------------------------------------------------------------------


def test_model_that_does_not_exist(tmp_path, image_folder, capsys):
    assert _cli(tmp_path, str(tmp_path / "no_such_model"), str(image_folder)) == 2
    err = capsys.readouterr().err
    assert_mentions(err, f"`--model` '{tmp_path / 'no_such_model'}'", "does not exist", "Hub model id", "config.json")


def test_model_that_is_not_an_image_model(tmp_path, image_folder, capsys):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path / "bert")
    assert _cli(tmp_path, str(tmp_path / "bert"), str(image_folder)) == 2
    err = capsys.readouterr().err
    assert_mentions(err, "`--model`", "`bert`", "not an image model", "Supported model types:", "vit")


def test_hub_model_id_while_offline_points_to_a_local_directory(tmp_path, image_folder, capsys):
    assert _cli(tmp_path, "facebook/dinov2-small", str(image_folder), "--cache-dir", str(tmp_path / "empty_cache")) == 2
    err = capsys.readouterr().err
    assert_mentions(err, "`--model` 'facebook/dinov2-small'", "not in the Hugging Face cache", "offline", "local directory with a config.json")


# ---- output directory -------------------------------------------------------------------------------------------


def _fake_run(out: Path, model: str, dataset: str, status: str | None, checkpoint: bool, **finetune) -> None:
    out.mkdir(parents=True)
    config = {"model": {"model": model}, "data": {"dataset": dataset}, "finetune": finetune}
    if status:
        config["status"] = status
    (out / "run_config.json").write_text(json.dumps(config))
    if checkpoint:
        (out / "checkpoint-8").mkdir()
        (out / "checkpoint-8" / "trainer_state.json").write_text("{}")
        (out / "checkpoint-12").mkdir()  # killed while saving: no trainer_state.json


def test_output_dir_with_the_same_finished_run_is_refused(tmp_path):
    from hf_finetune import DataArguments, ModelArguments
    from hf_finetune.pipeline.record import check_output_dir

    _fake_run(tmp_path / "o", "m", "d", "finished", checkpoint=True)
    with pytest.raises(ValueError) as err:
        check_output_dir(str(tmp_path / "o"), ModelArguments(model="m"), DataArguments(dataset="d"), False, False, {})
    assert_mentions(str(err.value), "`--output-dir`", "already holds a run", "--resume-from-checkpoint", "--overwrite-output-dir")


def test_unfinished_run_continues_from_its_last_complete_checkpoint(tmp_path, caplog):
    from hf_finetune import DataArguments, ModelArguments
    from hf_finetune.pipeline.record import check_output_dir

    _fake_run(tmp_path / "o", "m", "d", "interrupted", checkpoint=True, strategy="full")
    args = (str(tmp_path / "o"), ModelArguments(model="m"), DataArguments(dataset="d"), False, False)
    recorded = {"model": {"model": "m"}, "data": {"dataset": "d"}, "finetune": {"strategy": "full"}}
    assert check_output_dir(*args, recorded) == str(tmp_path / "o" / "checkpoint-8")
    assert_mentions(caplog.text, "checkpoint-12", "incomplete")
    with pytest.raises(ValueError) as err:
        check_output_dir(*args, {**recorded, "finetune": {"strategy": "top_k"}})
    assert_mentions(str(err.value), "other values of: finetune.strategy", "Rerun with the recorded flags", "--overwrite-output-dir")


# ---- flags (the parse-time cases are rows of test_cli.py::test_invalid_flags_are_rejected_at_parse_time) ----


def test_top_k_larger_than_the_model_is_refused_once_the_model_is_known(tmp_path, tiny_checkpoint, image_folder, capsys):
    assert _cli(tmp_path, tiny_checkpoint("vit"), str(image_folder), "--strategy", "top_k", "--top-k", "7") == 2
    err = capsys.readouterr().err
    assert_mentions(err, "`--top-k` 7", "3 backbone stages", "norm+blocks.1, blocks.0, embeddings", "`--top-k` 3 or less", "`--strategy full`")

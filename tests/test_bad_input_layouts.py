"""Messy folder layouts (reliability II): one rule for where splits and labels come from, and what is left out and
why. One test per row of docs/bad_inputs.md "Folder layouts"; every folder is written by the test."""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image_folder
from helpers import assert_mentions
from PIL import Image

from hf_finetune import DataArguments, load_splits


def _load(root: Path, **flags):
    return load_splits(DataArguments(dataset=str(root), **flags), seed=0)


def _total(splits) -> int:
    return len(splits.train) + len(splits.validation) + len(splits.test)


def _per_class(splits) -> dict[str, int]:
    counts = splits.counts()
    return {name: sum(counts[s][name] for s in counts) for name in splits.labels}


def _jpeg(path: Path, colour=(200, 30, 30), size=(24, 24), exif=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(np.array(colour) + np.random.default_rng(len(str(path))).normal(0, 20, (*size[::-1], 3)), 0, 255)
    Image.fromarray(pixels.astype("uint8")).save(path, "JPEG", **({"exif": exif} if exif is not None else {}))
    return path


def _digest(root: Path) -> dict[str, str]:
    """Every file under `root` with a hash of its bytes: the test's folders must come out unchanged."""
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_every_class_with_sub_folders_trains_on_the_classes_not_the_years(tmp_path):
    root = tmp_path / "d"
    for name, year in (("a", "2019"), ("b", "2020")):
        write_image_folder(root / name, classes=(year,), per_class=8, seed=len(name))
    splits = _load(root)
    assert splits.labels == ["a", "b"] and _total(splits) == 16
    assert splits.provenance["layout"]["flattened_nested_folders"] == {"a": 8, "b": 8}
    by_year = _load(root, label_depth=2)  # the documented way to train on the years instead
    assert by_year.labels == ["2019", "2020"]


def test_one_class_with_a_sub_folder_keeps_both_classes(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=8)
    write_image_folder(root / "a", classes=("2019",), per_class=4, seed=3)
    splits = _load(root)
    assert splits.labels == ["a", "b"] and _per_class(splits) == {"a": 12, "b": 8}


def test_images_above_the_label_depth_are_refused_with_the_layout(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=4)
    with pytest.raises(ValueError) as err:
        _load(root, label_depth=2)
    assert_mentions(str(err.value), "above the class level `--label-depth` 2", "Layout found", "a/ (4 files)", "smaller `--label-depth`")


@pytest.mark.parametrize("split_folders", [False, True])
def test_file_names_with_split_tokens_are_just_images(tmp_path, split_folders):
    root = tmp_path / "d"
    names = ["train_001.jpg", "test_002.jpg", "val_003.jpg", "my_test_photo.jpg", "validation_4.jpg", "dev_5.jpg"]
    for split in ("train", "test") if split_folders else ("",):
        for colour, cls in (((200, 30, 30), "cat"), ((30, 30, 200), "dog")):
            for name in names:
                _jpeg(root / split / cls / name, colour)
    splits = _load(root)
    assert splits.skipped_files == []
    assert splits.labels == ["cat", "dog"]
    assert _total(splits) == 12 * (2 if split_folders else 1)
    assert splits.provenance["test"] == ("dataset split 'test'" if split_folders else "stratified 15% of train (seed 0)")


def test_stray_results_file_in_the_dataset_root_is_not_a_split(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=8)
    (root / "test_results.json").write_text('{"accuracy": 0.9}')
    (root / "train_log.txt").write_text("epoch 1")
    splits = _load(root)
    assert splits.labels == ["a", "b"] and _total(splits) == 16 and splits.skipped_files == []


def test_hidden_class_folder_is_reported_not_silently_dropped(tmp_path, caplog):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=8)
    write_image_folder(root, classes=(".c",), per_class=3)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: main")  # no images: not worth a warning
    with caplog.at_level(logging.WARNING):
        splits = _load(root)
    assert splits.labels == ["a", "b"]
    assert splits.provenance["layout"]["hidden_folders_not_read"] == [str(root / ".c")]
    assert_mentions(caplog.text, str(root / ".c"), "holds images but is not read", "rename it")
    assert ".git" not in caplog.text


def test_symlinked_images_and_folders_are_read_through_the_link_without_false_warnings(tmp_path, caplog):
    store = write_image_folder(tmp_path / "store", classes=("a_pool", "b_pool", "unrelated"), per_class=6)
    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    for path in sorted((store / "a_pool").iterdir()):
        (root / "a" / path.name).symlink_to(path)  # linked files
    (root / "b").symlink_to(store / "b_pool")  # a linked class folder
    before = _digest(tmp_path)
    with caplog.at_level(logging.WARNING):
        splits = _load(root)
    assert splits.labels == ["a", "b"] and _per_class(splits) == {"a": 6, "b": 6}
    assert splits.skipped_files == [] and splits.provenance["image_check"]["empty_class_folders"] == []
    assert "holds no image" not in caplog.text and "unrelated" not in caplog.text
    assert _digest(tmp_path) == before


def test_file_name_that_is_not_utf8_is_skipped_and_counted(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=8)
    bad = os.path.join(os.fsencode(root / "a"), b"caf\xe9.png")
    with open(bad, "wb") as f:
        f.write((root / "a" / "img_000.png").read_bytes())
    splits = _load(root)
    assert _total(splits) == 16
    (entry,) = splits.skipped_files
    assert entry["kind"] == "bad_file_name" and entry["file"].endswith("caf\\xe9.png")
    assert_mentions(entry["reason"], "not valid UTF-8", "rename")
    assert splits.provenance["layout"]["bad_file_names"] == 1


def _rows_of(split, file_name: str) -> list[int]:
    import datasets

    paths = split.with_format(None).cast_column("image", datasets.Image(decode=False))["image"]
    return [i for i, value in enumerate(paths) if value["path"].endswith(file_name)]


def test_exif_rotated_photo_is_upright_in_every_path(tmp_path, tiny_checkpoint):
    from transformers import AutoImageProcessor

    from hf_finetune.data.images import open_image, to_rgb
    from hf_finetune.data.transforms import attach_transforms
    from hf_finetune.sharing.demo import save_example_images

    exif = Image.Exif()
    exif[274] = 6  # stored sideways: "rotate 90 degrees clockwise to view"
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=6, splits=("train", "test"))
    photo = _jpeg(root / "test" / "a" / "phone.jpg", size=(40, 20), exif=exif.tobytes())
    upright = to_rgb(open_image({"path": str(photo), "bytes": None}))  # training, evaluation, the image check
    assert upright.size == (20, 40)
    splits = _load(root)
    row = _rows_of(splits.test, "phone.jpg")
    stored = splits.test.with_format(None).select(row)
    assert to_rgb(stored[0]["image"]).size == (20, 40)  # the feature pass and the probe (datasets decodes)
    assert save_example_images(stored, splits.labels, str(tmp_path / "out"), 1)  # the card's and demo's examples
    with Image.open(next((tmp_path / "out" / "examples").iterdir())) as example:
        assert example.size == (20, 40)
    processor = AutoImageProcessor.from_pretrained(tiny_checkpoint("vit"))
    attach_transforms(splits, processor, "light")
    evaluated = splits.test.select(row)[0]["pixel_values"]  # the evaluation transform (train: the same decode, + crops)
    expected = processor([upright], return_tensors="pt")["pixel_values"][0]
    assert np.allclose(np.asarray(evaluated), expected.numpy(), atol=1e-5)
    with Image.open(photo) as original:
        assert original.size == (40, 20)  # nothing rewrote the user's photo


def test_class_missing_from_train_is_an_error_naming_it_or_a_flagged_warning(tmp_path, caplog):
    root = tmp_path / "d"
    write_image_folder(root, classes=("a", "b"), per_class=6, splits=("train",))
    write_image_folder(root, classes=("a", "b", "c"), per_class=3, splits=("val", "test"))
    with pytest.raises(ValueError) as err:
        _load(root)
    assert_mentions(str(err.value), "['c']", "no training image", "F1 0", "train/<class>/", "`--allow-missing-train-classes`")
    with caplog.at_level(logging.WARNING):
        splits = _load(root, allow_missing_train_classes=True)
    assert splits.labels == ["a", "b", "c"] and splits.provenance["missing_train_classes"] == ["c"]
    assert_mentions(caplog.text, "--allow-missing-train-classes", "['c']", "F1 is 0")


def test_too_few_images_per_class_gets_advice_that_works(tmp_path):
    many = write_image_folder(tmp_path / "many", classes=tuple(f"c{i:02d}" for i in range(40)), per_class=2, size=8)
    with pytest.raises(ValueError) as err:
        _load(many)
    message = str(err.value)
    assert "Pass `--test-fraction" not in message  # no fraction <= 0.5 can hold out one image of 40 classes from 80
    assert_mentions(message, "80 images over 40 classes", "No `--test-fraction`", "at least 3 per class", "`val/` and `test/` folders")

    few = write_image_folder(tmp_path / "few", classes=tuple(f"c{i}" for i in range(10)), per_class=5, size=8)
    with pytest.raises(ValueError) as err:
        _load(few)
    assert_mentions(str(err.value), "Pass `--test-fraction 0.2`")
    with pytest.raises(ValueError) as err:
        _load(few, test_fraction=0.2)  # the advice gets past the test split; the validation split says the same
    assert_mentions(str(err.value), "Pass `--validation-fraction 0.25`")
    splits = _load(few, test_fraction=0.2, validation_fraction=0.25)
    assert set(Counter(splits.test["label"])) == set(range(10)) and set(Counter(splits.validation["label"])) == set(range(10))


def test_split_folders_without_train_are_refused_with_the_layout(tmp_path):
    root = tmp_path / "d"
    write_image_folder(root, classes=("a", "b"), per_class=3, splits=("val", "test"))
    with pytest.raises(ValueError) as err:
        _load(root)
    assert_mentions(str(err.value), "['test/', 'val/']", "no train/ folder", "Layout found", "train/<class>/")

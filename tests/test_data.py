"""Data loading: stratified splits, which split becomes the test split, RGB conversion, column errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from conftest import write_image_folder
from helpers import assert_mentions
from hf_finetune import DataArguments, load_splits
from hf_finetune.data.transforms import resolve_preprocessing
from hf_finetune.data.images import to_rgb


def test_train_only_folder_gets_stratified_validation_and_test(image_folder):
    splits = load_splits(DataArguments(dataset=str(image_folder)), seed=0)
    assert splits.labels == ["cat", "dog", "fish"]
    sizes = (len(splits.train), len(splits.validation), len(splits.test))
    assert sum(sizes) == 36
    for split in (splits.validation, splits.test):
        counts = Counter(split["label"])
        assert set(counts) == {0, 1, 2} and max(counts.values()) - min(counts.values()) <= 1
    assert splits.provenance["test"].startswith("stratified")


def test_same_seed_same_splits_other_seed_other_splits(image_folder):
    def files(seed):
        splits = load_splits(DataArguments(dataset=str(image_folder)), seed=seed)
        return sorted(np.asarray(im).tobytes()[:64] for im in splits.test["image"])

    assert files(3) == files(3)
    assert files(3) != files(4)


def test_train_and_val_folders_val_becomes_untouched_test(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=10, splits=("train", "val"))
    splits = load_splits(DataArguments(dataset=str(root)), seed=0)
    assert len(splits.test) == 30  # the whole given val split, untouched
    assert len(splits.train) + len(splits.validation) == 30
    assert "no test split given" in splits.provenance["test"]


def test_train_val_test_folders_are_used_as_given(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=6, splits=("train", "val", "test"))
    splits = load_splits(DataArguments(dataset=str(root)), seed=0)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (18, 18, 18)


def test_single_class_dataset_is_refused(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("only",), per_class=5)
    with pytest.raises(ValueError, match="single class"):
        load_splits(DataArguments(dataset=str(root)), seed=0)


def test_unknown_column_names_the_existing_columns(image_folder):
    with pytest.raises(ValueError) as err:
        load_splits(DataArguments(dataset=str(image_folder), image_column="img"), seed=0)
    assert_mentions(str(err.value), "`--image-column` 'img'", "not a column", "['image', 'label']")


def test_missing_dataset_says_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match="neither a local directory nor a Hub dataset"):
        load_splits(DataArguments(dataset=str(tmp_path / "nope")), seed=0)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA"])
def test_every_image_mode_becomes_rgb(mode):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray((np.arange(64).reshape(8, 8) * 1000).astype(np.uint16))
    else:
        image = base.convert(mode)
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (8, 8)
    if mode == "I;16":
        assert np.asarray(rgb).max() == 255  # scaled, not clipped to white
        assert np.asarray(rgb).min() == 0


def test_preprocessing_comes_from_the_checkpoint_processor(tiny_checkpoint):
    from transformers import AutoImageProcessor

    for kind in ("vit", "timm", "mobilenet_v2"):
        processor = AutoImageProcessor.from_pretrained(tiny_checkpoint(kind))
        pre = resolve_preprocessing(processor)
        assert pre.size == (32, 32)
        assert len(pre.mean) == 3 and len(pre.std) == 3

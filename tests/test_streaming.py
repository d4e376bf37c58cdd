"""`--streaming`: training from parquet shards read as a stream, held-out splits by content hash, the recipe on a
bounded sample, and the same outputs as a run on a loaded dataset."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FAST_RUN_FLAGS

CLASSES = ("cat", "dog", "fish")
_COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 230)]


def _png(rng: np.random.Generator, colour: tuple[int, int, int], size: int = 32) -> bytes:
    pixels = np.clip(np.array(colour, dtype=np.float64) + rng.normal(0, 40, size=(size, size, 3)), 0, 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(root: Path, per_class: int = 20, shards: int = 3, split: str = "train", label_names: bool = True,
                 seed: int = 0) -> Path:
    """`root/<split>-0000K-of-0000N.parquet` written by `datasets`: an image column and a label column (a ClassLabel,
    or plain class-name strings), rows in class order."""
    import datasets

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index, name in enumerate(CLASSES):
        for _ in range(per_class):
            images.append({"bytes": _png(rng, _COLOURS[index]), "path": None})
            labels.append(index if label_names else name)
    label_feature = datasets.ClassLabel(names=list(CLASSES)) if label_names else datasets.Value("string")
    data = datasets.Dataset.from_dict({"image": images, "label": labels}, features=datasets.Features({"image": datasets.Image(), "label": label_feature}))
    root.mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        data.shard(shards, k, contiguous=True).to_parquet(str(root / f"{split}-{k:05d}-of-{shards:05d}.parquet"))
    return root


def _args(dataset: Path, **flags):
    from hf_finetune.config.sources import DataArguments

    return DataArguments(dataset=str(dataset), streaming=True, **flags)


def test_hash_held_out_splits_are_disjoint_stable_and_counted(tmp_path):
    from hf_finetune.data.streaming import bucket, load_streaming_splits

    shards = write_shards(tmp_path / "shards", per_class=30)
    splits = load_streaming_splits(_args(shards, streaming_sample=25, shuffle_buffer=2), seed=0)
    again = load_streaming_splits(_args(shards, streaming_sample=25, shuffle_buffer=2), seed=0)

    def keys(split):
        return {hash(row["bytes"]) for row in split.cast_column("image", __import__("datasets").Image(decode=False))["image"]}

    test, validation = keys(splits.test), keys(splits.validation)
    streamed = [row["image"]["bytes"] for row in splits.stream.dataset]
    train = {hash(b) for b in streamed}
    assert not (test & validation) and not (test & train) and not (validation & train)
    assert len(test) + len(validation) + len(streamed) == 90  # every row in exactly one split
    assert all(bucket({"bytes": b}) >= 0.3 for b in streamed)  # 0.15 test + 0.15 validation by default
    assert keys(again.test) == test  # same hash, same split on a rerun
    assert len(load_streaming_splits(_args(shards, streaming_sample=12), seed=0).train) == 15  # 5 a class, not the cached 25
    assert splits.stream.counted and splits.stream.num_rows == len(streamed)
    assert sum(splits.stream.class_counts) == len(streamed)
    # The bounded sample the recipe measures: stratified (every class's share, rounded), although the shards hold
    # their rows in class order and the shuffle buffer is 2 rows.
    assert abs(len(splits.train) - 25) <= 3 and splits.stream.sample_rows == len(splits.train)
    sample_counts = [splits.train["label"].count(i) for i in range(3)]
    assert all(abs(n - 25 / 3) <= 2 for n in sample_counts), sample_counts
    assert splits.provenance["streaming"]["train_rows"] == len(streamed)


def test_own_test_split_and_string_labels(tmp_path):
    from hf_finetune.data.streaming import load_streaming_splits

    shards = write_shards(tmp_path / "shards", per_class=12, label_names=False)
    write_shards(shards, per_class=4, shards=1, split="test", label_names=False, seed=1)
    splits = load_streaming_splits(_args(shards, label_column="label"), seed=0)  # not a ClassLabel: named
    assert splits.labels == list(CLASSES)  # the distinct strings, sorted, became the classes
    assert len(splits.test) == 12 and splits.provenance["test"] == "dataset split 'test'"
    assert sorted(set(splits.test["label"])) == [0, 1, 2]
    assert {row["label"] for row in splits.stream.dataset} == {0, 1, 2}


_CARD = """---
dataset_info:
  features:
  - name: image
    dtype: image
  - name: label
    dtype:
      class_label:
        names:
          '0': cat
          '1': dog
          '2': fish
  splits:
  - name: train
    num_bytes: 1
    num_examples: 30
  - name: validation
    num_bytes: 1
    num_examples: 9
  - name: test
    num_bytes: 1
    num_examples: 9
---
"""


def test_row_count_from_the_dataset_card_skips_the_counting_pass(tmp_path):
    """A dataset whose card gives the split sizes (every Hub dataset with `dataset_info`) is not read in full before
    training: the rows come from the card, the class counts are the sample's shares scaled to them."""
    from hf_finetune.data.streaming import load_streaming_splits

    shards = write_shards(tmp_path / "shards", per_class=10, shards=2)
    write_shards(shards, per_class=3, shards=1, split="test", seed=1)
    write_shards(shards, per_class=3, shards=1, split="validation", seed=2)
    (shards / "README.md").write_text(_CARD)
    splits = load_streaming_splits(_args(shards, streaming_sample=15), seed=0)
    assert not splits.stream.counted and splits.stream.num_rows == 30
    assert splits.provenance["validation"] == "dataset split 'validation'" and len(splits.validation) == 9
    sample = [splits.train["label"].count(i) for i in range(3)]
    assert splits.stream.class_counts == [round(n * 30 / 15) for n in sample]


def test_a_class_ordered_stream_without_a_counting_pass_is_counted_when_its_sample_misses_classes(tmp_path, caplog):
    from hf_finetune.data.streaming import load_streaming_splits

    shards = write_shards(tmp_path / "shards", per_class=10, shards=1)  # rows in class order
    write_shards(shards, per_class=3, shards=1, split="test", seed=1)
    write_shards(shards, per_class=3, shards=1, split="validation", seed=2)
    (shards / "README.md").write_text(_CARD)
    with caplog.at_level("WARNING"):
        splits = load_streaming_splits(_args(shards, streaming_sample=6, shuffle_buffer=1), seed=0)
    assert "hold no image of" in caplog.text and "counting the labels in one pass" in caplog.text
    assert splits.stream.counted and splits.stream.class_counts == [10, 10, 10]
    assert sorted(set(splits.train["label"])) == [0, 1, 2]  # the stratified sample, every class in it


def test_streaming_run_trains_on_the_stream_and_writes_the_same_report(tmp_path, tiny_checkpoint):
    from hf_finetune.cli.main import main

    shards = write_shards(tmp_path / "shards", per_class=24)
    out = tmp_path / "out"
    argv = ["--model", tiny_checkpoint("vit"), "--dataset", str(shards), "--output-dir", str(out), *FAST_RUN_FLAGS,
            "--streaming", "--streaming-sample", "16", "--dataloader-num-workers", "0"]
    assert main(argv) == 0
    config = json.loads((out / "run_config.json").read_text())
    streaming = config["splits"]["streaming"]
    assert abs(streaming["sample_rows"] - 16) <= 3 and streaming["train_rows"] > 16
    schedule = json.loads((out / "schedule.json").read_text())
    steps_per_epoch = -(-streaming["train_rows"] // 8)  # the whole stream each epoch, not the sample
    assert len(schedule["epochs"]) == 3 and schedule["lr_history"]["step"][-1] == 3 * steps_per_epoch
    card = (out / "README.md").read_text()
    assert f"Streamed (`--streaming`): {streaming['train_rows']} training rows per epoch" in card
    assert f"a sample of {streaming['sample_rows']} of them" in card
    report = json.loads((out / "test_report.json").read_text())
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix"} <= set(report)


def test_an_undecodable_image_in_the_stream_is_skipped_not_fatal(tmp_path, tiny_checkpoint, caplog):
    import datasets

    from hf_finetune.cli.main import main

    shards = write_shards(tmp_path / "shards", per_class=16, shards=1)
    table = datasets.load_dataset("parquet", data_files=str(shards / "train-00000-of-00001.parquet"), split="train")
    broken = [{"bytes": b"not an image %d" % i, "path": f"broken_{i}.png"} for i in range(8)]
    extra = datasets.Dataset.from_dict({"image": broken, "label": [0] * 8}, features=table.features)
    datasets.concatenate_datasets([table, extra]).to_parquet(str(shards / "train-00000-of-00001.parquet"))
    out = tmp_path / "out"
    argv = ["--model", tiny_checkpoint("vit"), "--dataset", str(shards), "--output-dir", str(out), *FAST_RUN_FLAGS,
            "--num-train-epochs", "1", "--streaming", "--streaming-sample", "60", "--dataloader-num-workers", "0"]
    with caplog.at_level("WARNING"):
        assert main(argv) == 0
    config = json.loads((out / "run_config.json").read_text())
    held_out_broken = {f["file"] for f in config["skipped_files"]}  # in the sample, validation or test: checked
    streamed_broken = [r for r in caplog.records if "Skipped a training image" in r.getMessage()]
    assert held_out_broken or streamed_broken
    assert len(streamed_broken) == sum(bucket_of(b) >= 0.3 for b in broken)  # every broken training row, once
    assert (out / "test_report.json").exists()


def bucket_of(reference: dict) -> float:
    from hf_finetune.data.streaming import bucket

    return bucket(reference)


@pytest.mark.parametrize("flag", ["--kfold 3", "--dedupe"])
def test_flags_that_need_the_whole_split_are_refused(tmp_path, tiny_checkpoint, flag, capsys):
    from hf_finetune.cli.main import main

    shards = write_shards(tmp_path / "shards", per_class=6)
    argv = ["--model", tiny_checkpoint("vit"), "--dataset", str(shards), "--output-dir", str(tmp_path / "out"),
            "--streaming", *flag.split()]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert flag.split()[0] in err and "--streaming" in err


def test_webdataset_shards_stream_with_a_named_label_column(tmp_path):
    """webdataset tars (`<key>.png` + `<key>.cls` per sample) as `datasets` reads them: the image column is found, the
    integer `cls` column is named, and its values become the classes."""
    import tarfile

    from hf_finetune.data.streaming import load_streaming_splits

    rng = np.random.default_rng(0)
    root = tmp_path / "wds"
    root.mkdir()
    for shard in range(2):
        with tarfile.open(root / f"train-{shard:05d}.tar", "w") as tar:
            for k in range(30):
                label = (shard * 30 + k) % 3
                for suffix, payload in ((".png", _png(rng, _COLOURS[label])), (".cls", str(label).encode())):
                    info = tarfile.TarInfo(f"s{shard}_{k:04d}{suffix}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    splits = load_streaming_splits(_args(root, label_column="cls", streaming_sample=15), seed=0)
    assert splits.labels == ["0", "1", "2"]
    assert splits.stream.num_rows + len(splits.validation) + len(splits.test) == 60
    assert sorted(set(splits.train["label"])) == [0, 1, 2]

"""`python -m hf_finetune predict`: one CSV row per input, top-1 equal to `pipeline`'s, unreadable files as rows with
their error; folders, Hub dataset splits, truncated models and `--tta`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_image_folder
from helpers import assert_mentions
from PIL import Image

from hf_finetune.backbones.loading import load_model_and_processor
from hf_finetune.backbones.truncation import truncate_model
from hf_finetune.cli.main import main
from hf_finetune.evaluation.tta import IDENTITY, TTA_VIEWS, apply_view, tta_logits
from hf_finetune.sharing.predict import load_classifier, predict_images


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _inputs(tmp_path: Path) -> tuple[Path, Path]:
    folder = write_image_folder(tmp_path / "new", classes=("cat", "dog"), per_class=3, seed=5)
    (folder / "dog" / "broken.jpg").write_bytes(b"not an image at all")
    (folder / "notes.txt").write_text("not an image, skipped")
    single = tmp_path / "single.png"
    Image.fromarray(np.full((20, 30, 3), 128, dtype=np.uint8)).save(single)
    return folder, single


def test_csv_has_one_row_per_input_and_pipeline_top1(finished_run_dir, tmp_path, capsys):
    from transformers import pipeline

    folder, single = _inputs(tmp_path)
    out = tmp_path / "preds" / "predictions.csv"
    argv = ["predict", str(finished_run_dir), str(folder), str(single), str(tmp_path / "missing.png"),
            "--output", str(out), "--top-k", "2", "--batch-size", "4", "--no-progress"]
    assert main(argv) == 0
    assert_mentions(capsys.readouterr().out, "9 image(s)", "2 unreadable", str(out))
    rows = _rows(out)
    assert len(rows) == 9  # 6 images + the broken one (recursive folder) + single + missing; notes.txt skipped
    errors = {Path(r["input"]).name: r["error"] for r in rows if r["error"]}
    assert set(errors) == {"broken.jpg", "missing.png"}
    assert "UnidentifiedImageError" in errors["broken.jpg"] and "FileNotFoundError" in errors["missing.png"]
    classify = pipeline("image-classification", model=str(finished_run_dir))
    for row in rows:
        if row["error"]:
            assert row["prediction"] == "" and row["label_1"] == ""
            continue
        expected = classify(row["input"], top_k=2)
        assert row["prediction"] == row["label_1"] == expected[0]["label"]
        assert abs(float(row["score"]) - expected[0]["score"]) < 1e-5
        assert row["label_2"] == expected[1]["label"]


def test_identity_view_is_the_plain_forward_and_tta_averages(finished_run_dir):
    model, processor = load_classifier(str(finished_run_dir), "cpu")
    images = [Image.fromarray((np.random.default_rng(i).random((40, 40, 3)) * 255).astype("uint8")) for i in range(3)]
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        plain = model(pixel_values=pixels).logits
        assert torch.equal(tta_logits(model, pixels, (IDENTITY,)), plain)
        views = [model(pixel_values=apply_view(pixels, view)).logits for view in TTA_VIEWS]
        assert torch.allclose(tta_logits(model, pixels), torch.stack(views).mean(0), atol=1e-6)
    assert torch.equal(apply_view(pixels, "hflip"), pixels.flip(-1))
    assert all(apply_view(pixels, view).shape == pixels.shape for view in TTA_VIEWS)


def test_predict_with_tta_from_python(finished_run_dir, tmp_path):
    folder, _ = _inputs(tmp_path)
    predictions = predict_images(str(finished_run_dir), [str(folder)], tta=True, top_k=10, progress=False)
    assert len(predictions) == 7
    classified = [p for p in predictions if p.error is None]
    assert len(classified) == 6 and all(len(p.labels) == 3 for p in classified)  # top_k capped at the classes
    assert all(abs(sum(p.scores) - 1.0) < 1e-5 for p in classified)


def test_predict_on_a_truncated_model(tiny_checkpoint, tmp_path):
    model, processor = load_model_and_processor(tiny_checkpoint("resnet"), {0: "cat", 1: "dog", 2: "fish"})
    truncate_model(model, "blocks.1")
    model.save_pretrained(tmp_path / "cut")
    processor.save_pretrained(tmp_path / "cut")
    folder, _ = _inputs(tmp_path)
    predictions = predict_images(str(tmp_path / "cut"), [str(folder)], progress=False)
    reloaded, _ = load_classifier(str(tmp_path / "cut"), "cpu")
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in model.parameters())
    assert sum(p.error is None for p in predictions) == 6


def test_hub_dataset_split(finished_run_dir, tmp_path, monkeypatch):
    import datasets

    folder, _single = _inputs(tmp_path)
    files = [str(p) for p in sorted((folder / "cat").glob("*.png"))]
    table = datasets.Dataset.from_dict({"img": files, "label": [0] * len(files)}).cast_column("img", datasets.Image())
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: asked.append((name, split)) or table)
    predictions = predict_images(str(finished_run_dir), ["someone/pets:test"], progress=False)
    assert asked == [("someone/pets", "test")]
    assert [p.source for p in predictions] == [f"someone/pets:test[{i}]" for i in range(3)]
    assert all(p.error is None for p in predictions)


def test_bad_model_dir_and_unloadable_dataset(finished_run_dir, tmp_path, capsys, monkeypatch):
    import datasets

    assert main(["predict", str(tmp_path), str(tmp_path), "--no-progress"]) == 2
    assert_mentions(capsys.readouterr().err, str(tmp_path), "config.json", "--output-dir of a finished")

    def offline(name, split):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert main(["predict", str(finished_run_dir), "nobody/nothing:train", "--no-progress"]) == 2
    assert_mentions(capsys.readouterr().err, "nobody/nothing:train", "could not be loaded", "NAME:SPLIT")


@pytest.mark.parametrize("top_k", [0])
def test_bad_top_k(finished_run_dir, tmp_path, top_k):
    with pytest.raises(ValueError, match="--top-k"):
        predict_images(str(finished_run_dir), [str(tmp_path)], top_k=top_k)

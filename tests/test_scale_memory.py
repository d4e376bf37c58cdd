"""Memory that stays flat in the number and size of images: caches count what decoded images really take and stop
at their budget, the feature pass and the advisor's sample decode large photos one at a time and shrink them before
the processor, and the near-duplicate search stores no pair of a crowded image."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_finetune import DataArguments, load_model_and_processor, load_splits
from hf_finetune.backbones.taps import PROCESSOR_CHUNK, extract_features
from hf_finetune.data.images import DecodeCache, decode_rgb, decoded_bytes, model_input
from hf_finetune.data.transforms import FEATURE_SIDE_FACTOR, feature_max_side
from hf_finetune.probing.duplicates import find_duplicates, similar_index_pairs
from hf_finetune.probing.features import compute_split_features
from hf_finetune.recipe.measure import image_statistics

LARGE = (1600, 1200)  # "a camera photo" for a 32 px tiny model: feature_max_side is 128


def _jpeg(path: Path, size: tuple[int, int], seed: int, gray: bool = False) -> None:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size[1] // 50, size[0] // 50, 1 if gray else 3), dtype=np.uint8)
    image = Image.fromarray(small.squeeze(-1) if gray else small).resize(size, Image.BILINEAR)
    image.save(path, "JPEG", quality=80)


def _large_folder(root: Path, per_class: int = 6) -> Path:
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for k in range(per_class):
            _jpeg(root / label / f"{k}.jpg", LARGE, seed=k + 100 * (label == "b"))
    return root


def _live_large_images() -> int:
    """Decoded PIL images of at least a quarter of `LARGE`'s pixels alive now (an opened, undecoded file holds none)."""
    gc.collect()
    return sum(
        1 for obj in gc.get_objects()
        if isinstance(obj, Image.Image) and getattr(obj, "_im", None) is not None and obj.width * obj.height >= LARGE[0] * LARGE[1] // 4
    )


class CountingProcessor:
    """Wraps an image processor: records, at every call, the images it got and how many large images were alive."""

    def __init__(self, processor) -> None:
        self.processor = processor
        self.calls: list[tuple[list[tuple[int, int]], int]] = []

    def __call__(self, images, **kwargs):
        self.calls.append(([image.size for image in images], _live_large_images()))
        return self.processor(images, **kwargs)

    def __getattr__(self, name):
        return getattr(self.processor, name)


@pytest.mark.parametrize(("mode", "bytes_per_pixel"), [("RGB", 4), ("L", 1), ("RGBA", 4), ("LA", 4), ("I;16", 2)])
def test_decoded_bytes_is_what_pillow_stores(mode, bytes_per_pixel):
    # Pillow pads RGB pixels to 32 bits: counting 3 bands undercounts a cache of RGB images by a quarter.
    image = Image.new(mode, (37, 11))
    assert decoded_bytes(image) == 37 * 11 * bytes_per_pixel


def test_decode_cache_counts_true_bytes_and_stops_at_its_budget():
    images = {f"{i}": Image.new(mode, (100, 50)) for i, mode in enumerate(["RGB", "L", "RGBA", "RGB", "L"])}
    made = []

    def make(ref):
        made.append(ref["path"])
        return images[ref["path"]]

    cache = DecodeCache(make, budget_bytes=100 * 50 * 4 * 2 + 100 * 50)  # two RGB(A) images and one L image
    for _ in range(2):
        for key in images:
            assert cache.get({"path": key, "bytes": None}) is images[key]  # a value past the budget is still returned
    assert cache.used_bytes == 20000 + 5000 + 20000 == cache.budget_bytes
    assert len(cache) == 3
    assert made == ["0", "1", "2", "3", "4", "3", "4"]  # the ones past the budget are decoded on every access


def test_decode_cache_shares_its_budget_among_dataloader_workers(monkeypatch):
    class Info:
        num_workers = 4

    cache = DecodeCache(lambda ref: torch.zeros(25), budget_bytes=400)
    assert cache.budget_bytes == 400
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: Info())
    assert cache.budget_bytes == 100
    for key in "abc":
        cache.get({"path": key, "bytes": None})
    assert cache.used_bytes == 100 and len(cache) == 1


def test_a_large_jpeg_is_decoded_at_reduced_scale_and_shrunk_before_the_processor(tmp_path):
    path = tmp_path / "photo.jpg"
    _jpeg(path, (4000, 3000), seed=0)
    ref = {"path": str(path), "bytes": None}
    image = decode_rgb(ref, 128)
    assert min(image.size) == 128 and image.mode == "RGB"
    assert abs(image.width / image.height - 4 / 3) < 0.02
    decoded = model_input(Image.open(path), 128)  # an already decoded image is shrunk the same way
    assert min(decoded.size) == 128
    small = tmp_path / "small.jpg"
    _jpeg(small, (100, 80), seed=1)
    # Images up to the limit reach the processor exactly as a plain decode gives them.
    assert np.array_equal(np.asarray(decode_rgb({"path": str(small), "bytes": None}, 128)), np.asarray(Image.open(small).convert("RGB")))


def test_feature_pass_holds_at_most_one_large_image_and_shrinks_them(tmp_path, tiny_checkpoint):
    splits = load_splits(DataArguments(dataset=str(_large_folder(tmp_path / "photos")), check_images=False), seed=0)
    model, processor = load_model_and_processor(tiny_checkpoint("vit"), splits.id2label)
    limit = feature_max_side(processor)
    assert limit == FEATURE_SIDE_FACTOR * 32
    counting = CountingProcessor(processor)
    result = compute_split_features(model, counting, splits, model_name_or_path=tiny_checkpoint("vit"), batch_size=8, use_cache=False)
    assert result.computed == 12
    for sizes, live in counting.calls:
        assert len(sizes) <= PROCESSOR_CHUNK
        assert all(min(size) <= limit for size in sizes)  # shrunk before the processor
        assert live == 0  # no full-size photo alive while the processor runs (decoded one at a time, then freed)


def test_extract_prepares_a_large_batch_in_bounded_chunks(tmp_path, tiny_checkpoint, monkeypatch):
    import hf_finetune.backbones.taps as taps

    monkeypatch.setattr(taps, "PROCESSOR_CHUNK", 3)
    path = tmp_path / "x.jpg"
    _jpeg(path, (64, 48), seed=0)
    model, processor = load_model_and_processor(tiny_checkpoint("vit"), {0: "a", 1: "b"})
    counting = CountingProcessor(processor)
    refs = [{"path": str(path), "bytes": None}] * 8
    features = extract_features(model, counting, refs, batch_size=8)
    assert features.shape[0] == 8
    assert [len(sizes) for sizes, _ in counting.calls] == [3, 3, 2]
    # The same vectors as decoding the images first and preprocessing them in one call.
    assert np.allclose(features, extract_features(model, processor, [Image.open(path)] * 8, batch_size=8), atol=1e-6)


def test_advisor_image_statistics_never_holds_two_large_images(tmp_path, monkeypatch):
    import hf_finetune.recipe.measure as measure

    for k in range(4):
        _jpeg(tmp_path / f"c{k}.jpg", LARGE, seed=k)
    _jpeg(tmp_path / "g.jpg", LARGE, seed=9, gray=True)
    import datasets

    split = datasets.Dataset.from_dict({"image": sorted(str(p) for p in tmp_path.glob("*.jpg"))}, features=datasets.Features({"image": datasets.Image()}))
    live = []
    original = measure.channels_agree

    def counting(image):
        live.append((_live_large_images(), image.size))
        return original(image)

    monkeypatch.setattr(measure, "channels_agree", counting)
    gray, side = image_statistics(split, sample=5)
    assert side == LARGE[1]  # the median shorter side of the originals, read from their headers
    assert gray == pytest.approx(0.2)  # the RGB-encoded grayscale photo is still found
    assert live and all(count == 0 and min(size) <= measure.STATISTICS_SIDE for count, size in live)


def test_near_duplicate_search_stores_no_pair_of_crowded_images(monkeypatch):
    import hf_finetune.probing.duplicates as duplicates

    monkeypatch.setattr(duplicates, "BLOCK_ELEMENTS", 7 * 300)  # several blocks
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(300, 16)).astype(np.float32)
    unit[:200] = unit[0] + 0.01 * rng.normal(size=(200, 16))  # 200 near-identical images: each is crowded
    unit[250] = unit[251] + 0.01 * rng.normal(size=16)  # one genuine near pair
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    i, j, sims, crowded = similar_index_pairs(unit, 0.9)
    assert crowded[:200].all() and not crowded[200:].any()
    assert list(zip(i.tolist(), j.tolist())) == [(250, 251)] and sims[0] >= 0.9
    keys = {"train": [f"k{r}" for r in range(300)]}
    pairs, crowded_rows = find_duplicates(keys, {"train": unit}, threshold=0.9)
    assert [(p.first, p.second) for p in pairs] == [(("train", 250), ("train", 251))]
    assert crowded_rows["train"] == list(range(200))


def test_heap_threshold_is_fixed_on_glibc():
    import platform

    from hf_finetune.data.images import keep_heap_compact

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_heap_compact() is expected


@pytest.mark.parametrize(("workers", "given", "expected"), [(2, None, True), (0, None, False), (2, False, False)])
def test_data_loading_workers_persist_with_their_caches(workers, given, expected, tmp_path):
    from hf_finetune.config.training import FinetuneTrainingArguments

    arguments = FinetuneTrainingArguments(output_dir=str(tmp_path), dataloader_num_workers=workers,
                                          dataloader_persistent_workers=given)
    assert arguments.dataloader_persistent_workers is expected

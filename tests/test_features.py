"""Cached frozen features and the linear probe: the features are the head's input, the disk cache is keyed by
model + preprocessing + image content, and a probe written into the head reproduces the probe's predictions."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from hf_finetune import DataArguments, load_model_and_processor, load_splits
from hf_finetune.backbones.taps import extract_features, head_linear_layers
from hf_finetune.backbones.truncation import truncate_model
from hf_finetune.probing.features import FeatureSet, compute_split_features, head_features_from_stage
from hf_finetune.probing.linear_probe import baseline_report, fit_linear_probe, write_probe_into_head


@pytest.fixture
def loaded(tiny_checkpoint, image_folder):
    def load(kind: str):
        splits = load_splits(DataArguments(dataset=str(image_folder)), seed=0)
        model, processor = load_model_and_processor(tiny_checkpoint(kind), splits.id2label)
        return splits, model, processor, tiny_checkpoint(kind)

    return load


@pytest.mark.parametrize("kind", ["vit", "resnet", "timm"])
def test_features_are_the_heads_input(kind, loaded):
    splits, model, processor, _ = loaded(kind)
    images = list(splits.test.with_format(None)["image"])
    features = extract_features(model, processor, images, batch_size=2)
    model.eval()
    with torch.no_grad():
        logits = model(pixel_values=processor(images, return_tensors="pt")["pixel_values"]).logits
    (_, layer), = head_linear_layers(model)
    assert features.shape == (len(images), layer.in_features)
    expected = torch.from_numpy(features) @ layer.weight.T + layer.bias
    assert torch.allclose(expected, logits, atol=1e-4)


def test_feature_cache_is_reused_and_keyed_by_preprocessing(loaded, tmp_path, monkeypatch):
    import hf_finetune.probing.features as features_module

    monkeypatch.setattr(features_module, "MIN_TIMED_IMAGES", 10)
    splits, model, processor, path = loaded("vit")
    first = compute_split_features(model, processor, splits, model_name_or_path=path, cache_dir=str(tmp_path))
    total = len(splits.train) + len(splits.validation) + len(splits.test)
    assert first.computed == total and first.images_per_second > 0
    second = compute_split_features(model, processor, splits, model_name_or_path=path, cache_dir=str(tmp_path))
    assert second.computed == 0 and second.model_key == first.model_key
    assert second.images_per_second == pytest.approx(first.images_per_second)  # recorded by the first pass
    for name in ("train", "validation", "test"):
        assert np.array_equal(getattr(first, name).features, getattr(second, name).features)
        assert np.array_equal(getattr(first, name).labels, np.asarray(getattr(splits, name)["label"]))
    # Other splits of the same images (another seed) come from the cache too.
    other = load_splits(DataArguments(dataset=splits.provenance["source"]), seed=1)
    assert compute_split_features(model, processor, other, model_name_or_path=path, cache_dir=str(tmp_path)).computed == 0
    # Different preprocessing -> different key -> recomputed.
    processor.image_mean = [0.1, 0.1, 0.1]
    third = compute_split_features(model, processor, splits, model_name_or_path=path, cache_dir=str(tmp_path))
    assert third.model_key != first.model_key and third.computed == total


@pytest.mark.parametrize(("kind", "cut", "reused"), [("resnet", "blocks.1", True), ("timm", "blocks.0", True), ("vit", "blocks.0", False)])
def test_a_cut_models_features_come_from_the_full_pass_when_they_are_the_same(kind, cut, reused, loaded, tmp_path):
    """After the advisor's cut, the baseline and probe head need the truncated model's head inputs: a CNN's are the
    cut stage's pooled output the full-depth pass captured (no second pass); a ViT's pass through its kept final norm."""
    splits, model, processor, path = loaded(kind)
    full = compute_split_features(model, processor, splits, model_name_or_path=path, cache_dir=str(tmp_path), stages=True)
    assert set(full.stage_splits[cut].test.labels) and len(full.stages[cut]) == len(splits.train)
    truncate_model(model, cut)
    derived = head_features_from_stage(model, processor, splits, full, batch_size=4)
    own = compute_split_features(model, processor, splits, model_name_or_path=path, use_cache=False)
    if not reused:
        assert derived is None
        return
    assert derived.summary()["from_stage"] == cut and derived.computed == 0
    for name in ("train", "validation", "test"):
        assert np.allclose(getattr(derived, name).features, getattr(own, name).features, atol=1e-5)
        assert np.array_equal(getattr(derived, name).labels, getattr(own, name).labels)


@pytest.mark.parametrize("kind", ["vit", "resnet", "deit", "timm"])
def test_probe_written_into_the_head_reproduces_the_probe(kind, loaded, tmp_path):
    splits, model, processor, path = loaded(kind)
    features = compute_split_features(model, processor, splits, model_name_or_path=path, cache_dir=str(tmp_path))
    report, probe = baseline_report(features, splits.labels)
    assert report["seconds"] < 30 and report["C"] in probe.candidates
    images = list(splits.test.with_format(None)["image"])
    model.eval()
    for full in (False, True):  # the train-only fit (a fine-tune's start) and the train + validation fit
        write_probe_into_head(model, probe, full=full)
        with torch.no_grad():
            logits = model(pixel_values=processor(images, return_tensors="pt")["pixel_values"]).logits.numpy()
        assert np.allclose(logits, probe.logits(features.test.features, full=full), atol=1e-3)
        assert (logits.argmax(1) == probe.predict(features.test.features, full=full)).all()


def test_probe_picks_c_by_cross_validation_and_handles_binary_and_missing_classes():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 2], 30)  # class 1 absent from train
    x = rng.normal(0, 1, (60, 5)) + (y[:, None] == 2) * 3.0
    train, validation = FeatureSet(x[::2], y[::2]), FeatureSet(x[1::2], y[1::2])
    probe = fit_linear_probe(train, validation, num_labels=3, c_grid=(0.01, 1.0))
    assert set(probe.candidates) == {0.01, 1.0} and probe.folds == 5
    assert probe.candidates[probe.C] == max(probe.candidates.values()) == probe.cv_macro_f1
    assert probe.full_weight is not None and not np.array_equal(probe.full_weight, probe.weight)
    for full in (False, True):
        predictions = probe.predict(x, full=full)
        assert 1 not in predictions and (predictions == y).mean() > 0.95
    # Without folds, C is chosen on the validation split and nothing is fitted on it.
    on_validation = fit_linear_probe(train, validation, num_labels=3, c_grid=(0.01, 1.0), folds=0)
    assert on_validation.validation_macro_f1 == max(on_validation.candidates.values()) and on_validation.full_weight is None
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_linear_probe(FeatureSet(x[:5], np.zeros(5, dtype=int)), validation, num_labels=3)


def test_the_cross_validated_probe_is_deterministic_for_a_seed():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 20)
    x = rng.normal(0, 1, (60, 8)) + y[:, None] * 0.8
    train, validation = FeatureSet(x[::2], y[::2]), FeatureSet(x[1::2], y[1::2])
    first, again = (fit_linear_probe(train, validation, num_labels=3, seed=7) for _ in range(2))
    assert first.candidates == again.candidates and first.C == again.C
    assert np.array_equal(first.full_weight, again.full_weight) and np.array_equal(first.weight, again.weight)


def test_temperature_scaling_recovers_an_overconfident_scale():
    from hf_finetune.evaluation.calibration import fit_temperature  # the one fit the probe uses too

    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, (4000, 4))
    probabilities = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=p) for p in probabilities])
    assert fit_temperature(3.0 * true_logits, labels) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(true_logits, labels) == pytest.approx(1.0, rel=0.1)


# ---- the feature cache's shards: memory-mapped .npy files, old .npz ones still read ------------------------------


def _vectors(count: int = 50, dim: int = 6, seed: int = 0) -> tuple[list[str], np.ndarray]:
    keys = [f"{index:040x}" for index in range(count)]  # the shape of an image key (a sha1)
    return keys, np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)


def _shard_files(directory) -> tuple:
    (keys_file,) = directory.glob("shard-*.keys.npy")
    return keys_file, keys_file.with_name(keys_file.name.replace(".keys.npy", ".features.npy"))


def test_cache_shards_are_written_as_npy_and_read_memory_mapped(tmp_path, monkeypatch):
    import hf_finetune.probing.feature_cache as feature_cache

    keys, features = _vectors()
    feature_cache.FeatureCache(str(tmp_path), "m").add(keys[:30], features[:30])
    feature_cache.FeatureCache(str(tmp_path), "m").add(keys[30:], features[30:])
    names = [path.name for path in (tmp_path / "m").iterdir()]
    assert len(names) == 4 and all(n.startswith("shard-") and n.endswith((".keys.npy", ".features.npy")) for n in names)
    for keys_file in (tmp_path / "m").glob("shard-*.keys.npy"):
        assert np.load(keys_file).dtype.kind == "U"  # fixed-width unicode: no pickle
    monkeypatch.setattr(feature_cache, "SCAN_BYTES", 7 * 6 * 4)  # the check reads 7 rows at a time
    vectors = feature_cache.FeatureCache(str(tmp_path), "m").load(dim=6)
    assert len(vectors) == 50 and keys[7] in vectors and "other" not in vectors and vectors.get("other") is None
    # Nothing but the index is in RAM: every vector is a view of a mapped file.
    assert all(isinstance(vectors[key], np.memmap) for key in keys)
    assert all(isinstance(shard, int) and isinstance(row, int) for shard, row in vectors._index.values())
    order = np.random.default_rng(1).permutation(50)
    gathered = vectors.gather([keys[i] for i in order])
    assert type(gathered) is np.ndarray and gathered.dtype == np.float32
    assert np.array_equal(gathered.view(np.uint32), features[order].view(np.uint32))  # bit for bit
    assert np.array_equal(vectors[keys[42]], features[42]) and vectors.gather([]).shape == (0, 6)


def test_old_npz_shards_still_load_and_are_converted(tmp_path, monkeypatch, caplog):
    import hf_finetune.probing.feature_cache as feature_cache

    keys, features = _vectors()
    directory = tmp_path / "m"
    directory.mkdir()
    old = directory / "shard-0123456789abcdef.npz"
    np.savez(old, keys=np.asarray(keys), features=features)  # what the cache wrote before issue 17

    def read_only(*args, **kwargs):
        raise PermissionError("read-only cache")

    with monkeypatch.context() as patch:  # a cache this process cannot write: read into memory, left as it is
        patch.setattr(feature_cache, "_write_shard", read_only)
        vectors = feature_cache.FeatureCache(str(tmp_path), "m").load(dim=6)
    assert old.exists() and np.array_equal(vectors.gather(keys), features)
    with caplog.at_level(logging.WARNING):
        vectors = feature_cache.FeatureCache(str(tmp_path), "m").load(dim=6)
    assert "is bad" not in caplog.text
    assert not old.exists() and len(list(directory.glob("shard-*.keys.npy"))) == 1  # converted once
    assert isinstance(vectors[keys[3]], np.memmap)
    assert np.array_equal(vectors.gather(keys).view(np.uint32), features.view(np.uint32))


def _damage_shard(directory, how: str) -> None:
    """Damages the one shard of `directory` the way `how` says."""
    from hf_finetune.probing.feature_cache import FeatureCache

    keys_file, features_file = _shard_files(directory)
    keys, features = np.load(keys_file).tolist(), np.load(features_file)
    if how == "truncated":
        features_file.write_bytes(features_file.read_bytes()[: features_file.stat().st_size * 3 // 4])
    elif how == "bit_flip":  # in the vectors' bytes: still readable, finite and non-zero
        data = bytearray(features_file.read_bytes())
        data[-5] ^= 0x01
        features_file.write_bytes(bytes(data))
    elif how == "no_features":
        features_file.unlink()
    else:  # a consistent shard (checksum and all) with bad contents
        keys_file.unlink()
        features_file.unlink()
        replaced = features.copy()
        if how == "zero_row":
            replaced[len(keys) // 2] = 0.0
        elif how == "nan":
            replaced[1, 2] = np.nan
        elif how == "stale":
            replaced += 1.0
        FeatureCache(str(directory.parent), directory.name).add(keys, replaced)


@pytest.mark.parametrize("how", ["truncated", "bit_flip", "no_features", "zero_row", "nan", "wrong_size"])
def test_a_bad_shard_is_removed_with_a_warning(how, tmp_path, caplog, monkeypatch):
    import hf_finetune.probing.feature_cache as feature_cache

    keys, features = _vectors()
    feature_cache.FeatureCache(str(tmp_path), "m").add(keys, features)
    if how != "wrong_size":
        _damage_shard(tmp_path / "m", how)
    monkeypatch.setattr(feature_cache, "SCAN_BYTES", 4 * 6 * 4)  # the bad row sits in a later chunk than the first
    with caplog.at_level(logging.WARNING):
        vectors = feature_cache.FeatureCache(str(tmp_path), "m").load(dim=7 if how == "wrong_size" else 6)
    assert len(vectors) == 0 and "Feature cache shard" in caplog.text and "is bad" in caplog.text
    assert not list((tmp_path / "m").glob("shard-*.keys.npy"))  # removed: the next write replaces it


@pytest.mark.parametrize("how", ["truncated", "zero_row", "stale"])
def test_a_bad_shard_is_recomputed_by_the_feature_pass(how, loaded, tmp_path, caplog):
    splits, model, processor, path = loaded("vit")

    def compute():
        return compute_split_features(model, processor, splits, model_name_or_path=path, cache_dir=str(tmp_path))

    first = compute()
    total = len(splits.train) + len(splits.validation) + len(splits.test)
    assert first.computed == total
    _damage_shard(tmp_path / first.model_key, how)
    with caplog.at_level(logging.WARNING):
        again = compute()
    assert again.computed == total  # rebuilt, not a traceback nor silently used
    expected = "differs from what the model computes now" if how == "stale" else "is bad"
    assert expected in caplog.text and "Feature cache shard" in caplog.text
    for name in ("train", "validation", "test"):
        assert np.allclose(getattr(again, name).features, getattr(first, name).features, atol=1e-5)
    cached = compute()
    assert cached.computed == 0  # the rebuilt shard reads back
    assert np.array_equal(cached.train.features, again.train.features)

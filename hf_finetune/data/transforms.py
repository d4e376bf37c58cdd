"""Turn images into model inputs with the checkpoint's own preprocessing, and the label-safe augmentation presets.

`resolve_preprocessing` reads input size, normalisation and interpolation from the checkpoint's image processor
(never hard-coded). `attach_transforms` sets on-the-fly transforms on the splits: augmentation on train, the saved
processor itself on validation / test (so their numbers are what `pipeline("image-classification")` will see after
export), each image decoded once (`images.DecodeCache`). `collate` stacks examples into a batch.

Augmentation presets (torchvision v2), all at the checkpoint's own resolution and normalisation:
    none    resize only
    light   random resized crop (35-100% of the area) + horizontal flip
    medium  random resized crop (25-100%) + flip + colour jitter + TrivialAugmentWide
    strong  random resized crop (8-100%) + flip + colour jitter + RandAugment(2 ops, magnitude 9) + random erasing

Every operation keeps the label valid for classification (no crops so small they routinely lose the object at the
"light" level; flips only horizontal). Batch-level mixup / CutMix is `mixing.BatchMixer`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from hf_finetune.data.images import DEFAULT_BUDGET_BYTES, DecodeCache, decode_rgb, keep_heap_compact, train_min_side
from hf_finetune.data.splits import DataSplits
from hf_finetune.data.streaming import StreamingExamples

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocessing:
    """What the checkpoint's image processor does, in terms training augmentation can reuse."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str


def resolve_preprocessing(processor: Any) -> Preprocessing:
    """Reads input size, normalisation and interpolation from a checkpoint's image processor (never hard-coded)."""
    data_config = getattr(processor, "data_config", None)  # timm (TimmWrapperImageProcessor)
    if data_config is not None:
        _, height, width = data_config["input_size"]
        return Preprocessing(
            size=(int(height), int(width)),
            mean=tuple(float(v) for v in data_config["mean"]),
            std=tuple(float(v) for v in data_config["std"]),
            interpolation=str(data_config.get("interpolation", "bilinear")),
        )
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = crop or getattr(processor, "size", None)
    size = dict(size.items()) if hasattr(size, "items") else {"shortest_edge": size} if isinstance(size, int) else size
    height = size.get("height") or size.get("shortest_edge")
    width = size.get("width") or size.get("shortest_edge")
    if not height or not width:
        raise ValueError(f"Cannot read the input size from the image processor {type(processor).__name__}: {size}.")
    resample = getattr(processor, "resample", None)
    interpolation = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}.get(
        int(resample) if resample is not None else 2, "bilinear"
    )
    return Preprocessing(
        size=(int(height), int(width)),
        mean=tuple(float(v) for v in processor.image_mean),
        std=tuple(float(v) for v in processor.image_std),
        interpolation=interpolation,
    )


class ToNormalizedTensor:
    """PIL image -> normalised float CHW tensor, in numpy on the calling thread.

    torch's intra-op threads make per-image `ToDtype` + `Normalize` on a 224x224 image cost ~10 ms on a busy
    2-core machine (0.05 ms single-threaded); numpy does the same arithmetic in well under a millisecond.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = np.asarray(mean, dtype=np.float32) * 255.0
        self.inv_std = 1.0 / (np.asarray(std, dtype=np.float32) * 255.0)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        array = (np.asarray(image, dtype=np.float32) - self.mean) * self.inv_std
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def build_train_transform(preprocessing: Preprocessing, augmentation: str) -> Callable[[Image.Image], torch.Tensor]:
    """Label-safe training augmentation (a preset of `augmentation_ops`) at the checkpoint's resolution and normalisation.

    Image operations run on PIL images (several times faster than on tensors on CPU), then one conversion to a
    normalised tensor, then the preset's tensor operations (random erasing).
    """
    from torchvision.transforms import InterpolationMode, v2

    interpolation = InterpolationMode(preprocessing.interpolation)
    on_image, on_tensor = augmentation_ops(preprocessing.size, interpolation, augmentation)
    return v2.Compose([*on_image, ToNormalizedTensor(preprocessing.mean, preprocessing.std), *on_tensor])


def attach_transforms(
    splits: DataSplits, processor: Any, augmentation: str, cache_budget_bytes: int = DEFAULT_BUDGET_BYTES, seed: int = 0
) -> Preprocessing:
    """Sets on-the-fly transforms: augmentation on train, the checkpoint's own processor on validation/test.

    Evaluation uses the saved image processor itself, so validation/test numbers are what
    `pipeline("image-classification")` will see after export. Each image is decoded once: training images are
    kept (downscaled to what the random crops can use) and evaluation tensors are kept, within
    `cache_budget_bytes` in total. Under `--streaming` the Trainer reads `splits.stream.examples`, shuffled with
    `seed`.
    """
    import datasets

    keep_heap_compact()  # per-image allocations for the whole run: keep freed ones from piling up in the heap
    preprocessing = resolve_preprocessing(processor)
    train_transform = build_train_transform(preprocessing, augmentation)
    min_side = train_min_side(preprocessing.size, min_crop_scale(augmentation))
    train_images = DecodeCache(lambda ref: decode_rgb(ref, min_side), cache_budget_bytes // 2)
    eval_pixels = DecodeCache(
        lambda ref: processor([decode_rgb(ref)], return_tensors="pt")["pixel_values"][0], cache_budget_bytes // 2
    )

    def train_batch(batch: dict[str, list]) -> dict[str, Any]:
        return {
            "pixel_values": [train_transform(train_images.get(ref)) for ref in batch["image"]],
            "labels": batch["label"],
        }

    def eval_batch(batch: dict[str, list]) -> dict[str, Any]:
        return {"pixel_values": [eval_pixels.get(ref) for ref in batch["image"]], "labels": batch["label"]}

    # Undecoded references ({"path", "bytes"}) let the caches skip decoding entirely on a hit.
    undecoded = datasets.Image(decode=False)
    splits.train = splits.train.cast_column("image", undecoded)
    splits.validation = splits.validation.cast_column("image", undecoded)
    splits.test = splits.test.cast_column("image", undecoded)
    splits.train.set_transform(train_batch)
    splits.validation.set_transform(eval_batch)
    splits.test.set_transform(eval_batch)
    if splits.stream is not None:  # --streaming: the Trainer reads the stream, each image decoded as it arrives
        splits.stream.examples = StreamingExamples(
            splits.stream, lambda row: {"pixel_values": train_transform(decode_rgb(row["image"], min_side)), "labels": row["label"]},
            seed,
        )
    return preprocessing


# Largest shorter side, in multiples of the model's input side, that an image keeps before the processor in the
# feature pass: past it the processor's own resize would throw most pixels away, so a large photo is decoded at
# reduced JPEG scale and shrunk first (images up to it reach the processor exactly as they are).
FEATURE_SIDE_FACTOR = 4


def feature_max_side(processor: Any) -> int | None:
    """`FEATURE_SIDE_FACTOR` x the checkpoint's input side; None when the processor's size cannot be read."""
    try:
        return FEATURE_SIDE_FACTOR * max(resolve_preprocessing(processor).size)
    except (ValueError, TypeError, AttributeError, KeyError):
        return None


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stacks transformed examples into a batch for the model."""
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples], dtype=torch.long),
    }


# Area fraction range of the random-resized crop per preset.
CROP_SCALES = {"light": (0.35, 1.0), "medium": (0.25, 1.0), "strong": (0.08, 1.0)}


def min_crop_scale(strength: str) -> float:
    """Smallest crop area fraction of a preset (1.0 for `none`): how far training images may be pre-downscaled."""
    return CROP_SCALES.get(strength, (1.0, 1.0))[0]


def augmentation_ops(size: tuple[int, int], interpolation: Any, strength: str) -> tuple[list[Any], list[Any]]:
    """The preset's operations: `(on the uint8 image, on the normalised float tensor)`.

    Args:
        size (`tuple[int, int]`): output (height, width).
        interpolation (`torchvision.transforms.InterpolationMode`): the checkpoint's resize interpolation.
        strength (`str`): none, light, medium or strong.
    """
    from torchvision.transforms import InterpolationMode, v2

    # The auto-augment policies run on tensors, where torchvision supports nearest and bilinear only.
    policy_interpolation = InterpolationMode.BILINEAR
    if strength == "none":
        return [v2.Resize(size, interpolation=interpolation, antialias=True)], []
    scale = CROP_SCALES.get(strength)
    if scale is None:
        raise ValueError(f"`--augmentation` must be one of none, light, medium, strong; got {strength!r}.")
    ops: list[Any] = [
        v2.RandomResizedCrop(size, scale=scale, interpolation=interpolation, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    after: list[Any] = []
    if strength == "medium":
        ops += [v2.ColorJitter(0.2, 0.2, 0.2, 0.02), v2.TrivialAugmentWide(interpolation=policy_interpolation)]
    elif strength == "strong":
        ops += [v2.ColorJitter(0.4, 0.4, 0.4, 0.05), v2.RandAugment(num_ops=2, magnitude=9, interpolation=policy_interpolation)]
        after.append(v2.RandomErasing(p=0.25))
    return ops, after

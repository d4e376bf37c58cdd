"""Measure the data the recipe advisor decides on: size, similarity to the pretraining domain, and cost.

All measurements are made on the train split (validation and test are never used for a decision):
    size           images, classes, images per class (median, min), imbalance ratio (largest / smallest class)
    similarity     how well the frozen, pretrained features already separate the classes: balanced accuracy of a
                   cosine k-NN classifier under stratified k-fold cross-validation on the cached train features,
                   as lift over chance, `(bacc - 1/K) / (1 - 1/K)` (0 = chance, 1 = perfect); plus the share of
                   grayscale images (X-ray, microscopy, sonar: modalities natural-image pretraining rarely sees)
    cost           forward throughput measured during the feature pass, to estimate an epoch's duration
`DatasetMeasurements` holds them and says which case they make ("small" / "large", "similar" / "different");
`advisor.plan_recipe` turns them into a recipe.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hf_finetune.data.images import decode_rgb, open_image_header, undecoded
from hf_finetune.probing.audit import GRAY_MODES, channels_agree
from hf_finetune.probing.stage_probe import BlockGain, StageProbe, best_block_gain
from hf_finetune.training.regularization import class_counts, imbalance_ratio

logger = logging.getLogger(__name__)

# Median images per class from which a dataset counts as "large" for fine-tuning a pretrained backbone.
LARGE_IMAGES_PER_CLASS = 500
# k-NN balanced-accuracy lift over chance from which frozen features count as "similar" to the pretraining domain.
SIMILAR_LIFT = 0.85
# A block below the top stage ahead of it by more than this many fold-paired standard errors (stage probe), and by at
# least `MIN_CLEAR_GAIN`, makes the data "different". Weaker evidence than truncation asks for (`CLEAR_GAIN_SE`),
# because the costs differ: a wrong "different" costs a fine-tune whose model selection can still keep the probe; a
# wrong "similar" never fine-tunes.
SHIFT_GAIN_SE = 1.0
# Share of grayscale images from which the data counts as a different modality.
GRAYSCALE_SHARE = 0.5
KNN_NEIGHBOURS = 5
KNN_WORKING_MEMORY_MB = 128
CV_FOLDS = 5
# Images sampled for the colour / resolution statistics.
IMAGE_SAMPLE = 200
# Shorter side a sampled image is shrunk to before its channels are compared (they are compared on 32x32).
STATISTICS_SIDE = 256
# Cost model of one training epoch, in feature-pass images: 1 forward + BACKWARD_COST per backward through the
# trainable share of the backbone. Calibrated on CPU (efficientnet_lite0, pneumoniamnist): a full fine-tuning
# epoch ran at ~0.7x the feature pass's images/s (which includes decoding and the processor's resize).
BACKWARD_COST = 1.0


@dataclass
class DatasetMeasurements:
    """What the advisor measured (recorded in `run_config.json` -> recipe -> measurements).

    Attributes:
        num_train, num_validation (`int`): split sizes.
        num_classes (`int`): classes.
        class_counts (`list[int]`): train images per class id.
        knn_balanced_accuracy (`float`, *optional*): cross-validated cosine k-NN balanced accuracy on frozen train
            features; None when a class has too few images for cross-validation.
        grayscale_fraction (`float`): share of sampled train images that are grayscale.
        median_image_side (`int`): median of the sampled images' shorter side, in pixels.
        model_input_side (`int`): the checkpoint's input size (shorter side).
        forward_images_per_second (`float`, *optional*): measured forward throughput, preprocessing included.
        backbone_units (`int`): unfreeze units of the backbone (top first).
        feature_dim (`int`): size of the frozen features.
        stage_probe (`dict`, *optional*): the stage probe curve (`StageProbe.to_dict()`: CV macro-F1 per backbone
            stage); None when it did not run.
    """

    num_train: int
    num_validation: int
    num_classes: int
    class_counts: list[int]
    knn_balanced_accuracy: float | None
    grayscale_fraction: float
    median_image_side: int
    model_input_side: int
    forward_images_per_second: float | None
    backbone_units: int
    feature_dim: int = 0
    stage_probe: dict[str, Any] | None = None

    @property
    def images_per_class(self) -> float:
        """Median train images per class."""
        return float(np.median(self.class_counts))

    @property
    def imbalance_ratio(self) -> float:
        """Largest / smallest class."""
        return imbalance_ratio(self.class_counts)

    @property
    def knn_lift(self) -> float | None:
        """k-NN balanced accuracy as lift over chance, `(bacc - 1/K) / (1 - 1/K)`; None when it was not measured."""
        if self.knn_balanced_accuracy is None:
            return None
        chance = 1.0 / self.num_classes
        return (self.knn_balanced_accuracy - chance) / (1.0 - chance)

    @property
    def size(self) -> str:
        """`large` from `LARGE_IMAGES_PER_CLASS` median images per class, else `small`."""
        return "large" if self.images_per_class >= LARGE_IMAGES_PER_CLASS else "small"

    @property
    def block_gain(self) -> BlockGain | None:
        """The stage probe's best block below the top stage and its lead; None without a stage probe."""
        return best_block_gain(StageProbe.from_dict(self.stage_probe)) if self.stage_probe else None

    @property
    def top_stage_outdone(self) -> bool:
        """A block below the top stage separates the classes better than the top, by more than `SHIFT_GAIN_SE`
        fold-paired standard errors and at least `MIN_CLEAR_GAIN` macro-F1 (`BlockGain.beyond`)."""
        gain = self.block_gain
        return gain is not None and gain.beyond(SHIFT_GAIN_SE)

    @property
    def knn_domain(self) -> str:
        """The call from the images alone: `different` for mostly grayscale images or a k-NN lift under
        `SIMILAR_LIFT`, else `similar`."""
        lift = self.knn_lift
        if self.grayscale_fraction >= GRAYSCALE_SHARE:
            return "different"
        if lift is None:
            return "similar"  # no evidence of a shift: colour images and too few per class to measure
        return "similar" if lift >= SIMILAR_LIFT else "different"

    @property
    def domain(self) -> str:
        """`knn_domain`, except that a top stage outdone by an earlier block (`top_stage_outdone`) makes it
        `different`."""
        # A top stage outdone by an earlier block is specialised to another domain, whatever the k-NN lift says: on
        # eurosat / mobilenet_v2 the lift sits at the threshold (0.84-0.85 by seed) while blocks.3 beats the top.
        return "different" if self.top_stage_outdone else self.knn_domain

    def epoch_seconds(self, trainable_share: float) -> float | None:
        """Estimated seconds of one epoch (training + validation) when `trainable_share` of the backbone trains."""
        if not self.forward_images_per_second:
            return None
        per_image = 1.0 / self.forward_images_per_second
        train = self.num_train * per_image * (1.0 + BACKWARD_COST * trainable_share)
        return train + self.num_validation * per_image

    def to_dict(self) -> dict[str, Any]:
        """The measurements and what they make of the data, as `run_config.json` records them."""
        out = asdict(self)
        out.update(
            images_per_class_median=self.images_per_class,
            images_per_class_min=min(self.class_counts),
            imbalance_ratio=round(self.imbalance_ratio, 3),
            knn_lift_over_chance=None if self.knn_lift is None else round(self.knn_lift, 4),
            size=self.size,
            domain=self.domain,
        )
        return out


def knn_cross_validated_accuracy(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float | None:
    """Balanced accuracy of a cosine k-NN classifier under stratified k-fold CV; None if a class has < 2 images."""
    import sklearn
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    smallest = min(np.bincount(labels)[np.unique(labels)])
    folds = min(CV_FOLDS, int(smallest))
    if folds < 2 or len(np.unique(labels)) < 2:
        return None
    neighbours = max(1, min(KNN_NEIGHBOURS, len(labels) - len(labels) // folds - 1))
    classifier = KNeighborsClassifier(n_neighbors=neighbours, metric="cosine")
    # scikit-learn computes neighbours in chunks of up to `working_memory` MB of distances (1 GB by default): the
    # advisor's peak memory at 50k images. Smaller chunks give the same neighbours.
    with sklearn.config_context(working_memory=KNN_WORKING_MEMORY_MB):
        predictions = cross_val_predict(classifier, features, labels, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return float(balanced_accuracy_score(labels, predictions))


def image_statistics(split: Any, sample: int = IMAGE_SAMPLE, seed: int = 0) -> tuple[float, int]:
    """(share of grayscale images, median shorter side) over a seeded sample of a split's images.

    One image at a time: sizes and modes come from the file headers; only colour-mode images are decoded, each
    shrunk (`STATISTICS_SIDE`, at reduced JPEG scale) before its channels are compared, so 200 camera photos never
    sit in memory together.
    """
    rng = np.random.default_rng(seed)
    rows = sorted(rng.choice(len(split), size=min(sample, len(split)), replace=False).tolist())
    gray, sides = 0, []
    for ref in undecoded(split).select(rows)["image"]:
        with open_image_header(ref) as image:
            sides.append(min(image.size))
            mode = image.mode
        if mode in GRAY_MODES or channels_agree(decode_rgb(ref, STATISTICS_SIDE)):
            gray += 1
    return gray / max(1, len(rows)), int(np.median(sides)) if sides else 0


def measure_dataset(splits: Any, features: Any, stage_units: int, model_input_side: int, seed: int = 0) -> DatasetMeasurements:
    """Measures the train split (sizes, balance, colour, resolution) and its cached frozen features (k-NN CV).

    Args:
        splits (`DataSplits`): the run's splits.
        features (`SplitFeatures`): the cached features of the splits.
        stage_units (`int`): number of backbone unfreeze units.
        model_input_side (`int`): the checkpoint's input size.
        seed (`int`, defaults to 0): seed of the CV folds and the image sample.
    """
    labels = features.train.labels
    grayscale, side = image_statistics(splits.train, seed=seed)
    # --streaming: the features are the sample's, the sizes the whole stream's.
    counts = splits.stream.class_counts if splits.stream is not None else class_counts(labels, len(splits.labels))
    return DatasetMeasurements(
        num_train=sum(counts),
        num_validation=len(features.validation),
        num_classes=len(splits.labels),
        class_counts=counts,
        knn_balanced_accuracy=knn_cross_validated_accuracy(features.train.features, labels, seed=seed),
        grayscale_fraction=grayscale,
        median_image_side=side,
        model_input_side=model_input_side,
        forward_images_per_second=features.images_per_second,
        backbone_units=stage_units,
        feature_dim=int(features.train.features.shape[1]),
    )

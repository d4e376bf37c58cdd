"""Where the backbone and the images come from: `ModelArguments` and `DataArguments`."""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_finetune.config.choices import ADVISOR_HELP, AUGMENTATIONS


@dataclass
class ModelArguments:
    """Which backbone to fine-tune and how to load it."""

    model: str = field(
        metadata={
            "help": "Backbone to fine-tune: a Hub id (e.g. facebook/dinov2-small, timm/resnet50.a1_in1k) or a "
            "local directory holding config.json and weights. Both go through the same from_pretrained path."
        }
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit) of --model."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded Hub files are cached."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow custom model code from the Hub repo to run. Off by default: only enable for repos you trust."},
    )


@dataclass
class DataArguments:
    """Which images to train on and how to split them."""

    dataset: str = field(
        metadata={
            "help": "A local ImageFolder directory (class sub-folders, optionally under train/ val/ test/) or a Hub "
            "dataset id."
        }
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name of a Hub dataset."})
    image_column: str | None = field(
        default=None, metadata={"help": "Column holding the images (default: the dataset's only Image column)."}
    )
    label_column: str | None = field(
        default=None, metadata={"help": "Column holding the labels (default: the dataset's only ClassLabel column)."}
    )
    validation_fraction: float = field(
        default=0.15,
        metadata={"help": "Share of train held out (stratified) for validation when the dataset has no usable one."},
    )
    test_fraction: float = field(
        default=0.15,
        metadata={
            "help": "Share of train held out (stratified) as the test split when the dataset has neither a test nor a "
            "validation split. With train + validation only, the given validation split becomes the untouched "
            "test split and a fresh validation split is carved from train."
        },
    )
    augmentation: str | None = field(
        default=None,
        metadata={
            "help": f"Training augmentation, one of {AUGMENTATIONS}: light = random resized crop + flip; medium adds "
            "colour jitter and TrivialAugment; strong = wider crops + RandAugment + colour jitter + random erasing. "
            f"({ADVISOR_HELP}: light for a fine-tune of few images from the probe head, medium for large data from a "
            "different domain; the probe needs none.)"
        },
    )
    label_depth: int = field(
        default=1,
        metadata={
            "help": "Local folders: which folder level below the dataset (or below its train/ val/ test/ folders) "
            "names the class. 1 (default): the first level, deeper folders are flattened into it (cat/2019/x.jpg is "
            "a cat); 2: the second level (cat/2019/x.jpg is a 2019)."
        },
    )
    allow_missing_train_classes: bool = field(
        default=False,
        metadata={
            "help": "Train even when some classes of the validation/test folders have no training image (refused by "
            "default: the model cannot learn them, and they score F1 0)."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the training split shard by shard instead of loading it (a Hub dataset, or a local folder "
            "of parquet / webdataset shards): for data larger than memory or disk. Validation and test come from the "
            "dataset's own splits or a hash of each image, the advisor, probe and audit use a bounded sample "
            "(`--streaming-sample`), and training reads the stream shuffled within `--shuffle-buffer` rows."
        },
    )
    streaming_sample: int = field(
        default=2000,
        metadata={"help": "`--streaming`: about this many training images (a stratified random sample, drawn in the "
                  "pass that counts the stream's labels) on which the feature pass, the recipe advisor, the linear "
                  "probe and the data audit run."},
    )
    shuffle_buffer: int = field(
        default=1000,
        metadata={"help": "`--streaming`: rows held in the shuffle buffer (undecoded; more mixes better and costs "
                  "their bytes in memory)."},
    )
    check_images: bool = field(
        default=True,
        metadata={
            "help": "Decode every image once before training and leave out (with a logged list, recorded in "
            "run_config.json) the ones that cannot be read, instead of failing mid-epoch."
        },
    )

    def __post_init__(self) -> None:
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ValueError(f"`--{name.replace('_', '-')}` must lie in (0, 0.5), got {value}.")
        if self.label_depth < 1:
            raise ValueError(f"`--label-depth` must be >= 1 (1 = the first folder level names the class), got {self.label_depth}.")
        for name in ("streaming_sample", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"`--{name.replace('_', '-')}` must be at least 1, got {getattr(self, name)}.")
        if self.augmentation is not None and self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"`--augmentation` must be one of {AUGMENTATIONS}, got {self.augmentation!r}.")

"""Command-line / config-file arguments: the single source of truth for every default.

The CLI, the examples and the demo read these dataclasses; nothing restates a default.
They are parsed by `transformers.HfArgumentParser`, so every flag can also come from one
JSON or YAML file, and every `TrainingArguments` flag works as well.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType

STRATEGIES = ("linear_probe", "head_then_unfreeze", "top_k", "full")
AUTO = "auto"
AUGMENTATIONS = ("none", "light", "medium", "strong")
PEFT_METHODS = ("none", "lora")
# What an evaluation reports (`evaluation.compute_metrics` plus the loss): the metrics a run can select on.
VALIDATION_METRICS = ("macro_f1", "accuracy", "loss")
HEAD_INITS = ("probe", "random")
MIXUP_MODES = ("off", "on", "auto")
CLASS_BALANCE = ("none", "weighted_loss", "sampler")
OPTIMIZERS = ("adamw", "radam", "sgd")
LR_SCHEDULES = ("trainer", "plateau", "one_cycle", "cyclic")

# A field left at None is decided by the recipe advisor (`advisor.py`) before training. When nothing decides it
# (a trainer assembled by hand from the Python API), these values apply: the fixed recipe hf_finetune had before the
# advisor existed.
FALLBACKS: dict[str, object] = {
    "strategy": "head_then_unfreeze",
    "layer_decay": 0.7,
    "head_epochs": 1,
    "top_k": 2,
    "stages_per_unfreeze": 1,
    "head_init": "random",
    "head_dropout": 0.0,
    "fix_bn_stats": False,
    "mixup": "off",
    "class_balance": "none",
    "augmentation": "light",
    "num_train_epochs": 10.0,
    "label_smoothing_factor": 0.1,
    "learning_rate": 3e-4,
    "head_lr_multiplier": 10.0,
}
_ADVISOR = "default: chosen by the recipe advisor (see `run_config.json` -> recipe)"


def fill_fallbacks(*args: object) -> list[str]:
    """Sets every undecided field (None, or strategy "auto") of the given argument objects to `FALLBACKS`.

    Returns the names of the fields that were filled.
    """
    filled = []
    for obj in args:
        for name, value in FALLBACKS.items():
            current = getattr(obj, name, "absent")
            if current is None or (name == "strategy" and current == AUTO):
                setattr(obj, name, value)
                filled.append(name)
    return filled


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
            f"({_ADVISOR}: light for a fine-tune of few images from the probe head, medium for large data from a "
            "different domain; the probe needs none.)"
        },
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
        if self.augmentation is not None and self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"`--augmentation` must be one of {AUGMENTATIONS}, got {self.augmentation!r}.")


@dataclass
class FinetuneArguments:
    """The recipe: which stages train when, and at which learning rate."""

    strategy: str = field(
        default=AUTO,
        metadata={
            "help": "Freezing strategy: auto (default: the recipe advisor measures dataset size, class balance and "
            "how well frozen features already separate the classes, and picks one of the others), linear_probe "
            "(backbone frozen throughout; trained on cached features), head_then_unfreeze (head first, then one more "
            "stage per unfreeze step, top stage first), top_k (only the top --top-k stages and the head train), full "
            "(everything trains). Every other choice of the advisor is overridden by giving its flag."
        },
    )
    time_budget: float | None = field(
        default=None,
        metadata={
            "help": "Minutes of training (epochs incl. validation) the advisor plans for: it picks the number of epochs "
            "from the throughput measured during the feature pass. Ignored when --num-train-epochs is given."
        },
    )
    layer_decay: float | None = field(
        default=None,
        metadata={
            "help": "Layer-wise LR decay: stage at depth d (embeddings 0 .. top D) trains at "
            f"learning_rate * layer_decay ** (D - d). 1.0 turns it off. ({_ADVISOR}: closer to 1 when lower "
            "layers must adapt to a different domain.)"
        },
    )
    head_init: str | None = field(
        default=None,
        metadata={
            "help": f"How the new head starts, one of {HEAD_INITS}: probe = the linear probe fitted on cached frozen "
            "features (LP-FT: no random head distorting the backbone early; replaces the head-only epochs), random. "
            f"({_ADVISOR})"
        },
    )
    head_learning_rate: float | None = field(
        default=None, metadata={"help": "LR of the head (default: --head-lr-multiplier x --learning-rate)."}
    )
    head_lr_multiplier: float | None = field(
        default=None,
        metadata={
            "help": f"The head's LR as a multiple of --learning-rate when --head-learning-rate is not given ({_ADVISOR}: "
            "1 when few images fine-tune from the linear-probe head, which is already fitted; else 10, since a fresh "
            "head must move much further than the pretrained backbone)."
        },
    )
    head_epochs: int | None = field(
        default=None,
        metadata={
            "help": "head_then_unfreeze: epochs with only the head trainable before unfreezing starts "
            f"({_ADVISOR}: 0 when the head starts from the probe, else 1)."
        },
    )
    unfreeze_every: int = field(
        default=1, metadata={"help": "head_then_unfreeze: epochs between two unfreeze steps (epoch schedule)."}
    )
    stages_per_unfreeze: int | None = field(
        default=None,
        metadata={"help": f"head_then_unfreeze: stages unfrozen at each step, top stage first ({_ADVISOR})."},
    )
    unfreeze_on_plateau: bool = field(
        default=False,
        metadata={
            "help": "head_then_unfreeze: unfreeze the next stage when validation macro-F1 has not improved for "
            "--plateau-patience epochs, instead of on the epoch schedule."
        },
    )
    plateau_patience: int = field(default=1, metadata={"help": "Epochs without improvement that count as a plateau."})
    top_k: int | None = field(
        default=None, metadata={"help": f"top_k: number of top backbone stages trained with the head ({_ADVISOR})."}
    )
    truncate_after: str | None = field(
        default=None,
        metadata={
            "help": "Cut the backbone after this stage (a name such as blocks.3, or an index: embeddings = 0): the "
            "stages above are removed, the head reads the cut. 'auto' = where the stage probe's best stage beats the "
            "top one by more than the cross-validation noise (small data); 'none' = full depth. Default: auto with "
            "--strategy auto, else none. A truncated model is reloaded with the Auto classes by allowing its saved "
            "modeling file to run (see the model card)."
        },
    )
    train_stages: str | None = field(
        default=None,
        metadata={
            "help": "Surgical fine-tuning: comma-separated backbone stages (names such as blocks.0,blocks.1 or indices "
            "such as 1,2) that train for the whole run, with the head; every other stage stays frozen. Layer-wise LR "
            "decay applies within them (the highest listed stage gets --learning-rate). Implies --strategy full."
        },
    )
    unfreeze_warmup_epochs: float = field(
        default=0.5,
        metadata={"help": "A newly unfrozen stage ramps its LR linearly from 0 over this many epochs instead of jumping."},
    )
    train_bn: bool = field(
        default=False,
        metadata={"help": "Let BatchNorm layers of frozen stages update their running statistics (default: kept fixed)."},
    )
    head_dropout: float | None = field(
        default=None,
        metadata={"help": f"Dropout on the head's input features while training ({_ADVISOR})."},
    )
    drop_path_rate: float | None = field(
        default=None,
        metadata={
            "help": "Stochastic depth (drop-path) rate, for backbones that have it (ViT family, ConvNeXt, Swin, timm "
            f"models); ignored with a warning elsewhere ({_ADVISOR}; the checkpoint's own value if nothing decides)."
        },
    )
    mixup: str | None = field(
        default=None,
        metadata={
            "help": f"Mixup/CutMix on training batches, one of {MIXUP_MODES}: on, off, or auto = switched on by the "
            "train/validation gap monitor when the macro-F1 gap stays above --gap-threshold for --gap-patience epochs "
            f"({_ADVISOR})."
        },
    )
    mixup_alpha: float = field(default=0.2, metadata={"help": "Mixup Beta(alpha, alpha) parameter; 0 disables mixup."})
    cutmix_alpha: float = field(default=1.0, metadata={"help": "CutMix Beta(alpha, alpha) parameter; 0 disables CutMix."})
    gap_threshold: float = field(
        default=0.1, metadata={"help": "Train minus validation macro-F1 above which the gap monitor calls it overfitting."}
    )
    gap_patience: int = field(
        default=2, metadata={"help": "Epochs the gap must stay above --gap-threshold before mixup/CutMix switches on."}
    )
    class_balance: str | None = field(
        default=None,
        metadata={
            "help": f"Class-imbalance handling, one of {CLASS_BALANCE}: weighted_loss (cross-entropy weighted by "
            f"inverse class frequency), sampler (class-balanced sampling) ({_ADVISOR}: weighted_loss when the largest "
            "class has 3x the images of the smallest)."
        },
    )
    noisy_labels: bool = field(
        default=False,
        metadata={"help": "Labels are known to be noisy: raise label smoothing (unless --label-smoothing-factor is given)."},
    )
    l2sp: float = field(
        default=0.0,
        metadata={
            "help": "L2-SP strength: penalty alpha/2 * ||w - w_pretrained||^2 over trainable backbone parameters, "
            "pulling them toward the pretrained weights (against forgetting on small data). 0 = off."
        },
    )
    optimizer: str = field(
        default="adamw",
        metadata={
            "help": f"Optimizer, one of {OPTIMIZERS} (torch's AdamW, RAdam with decoupled weight decay, SGD with "
            "Nesterov momentum 0.9). Use `trainer` to take transformers' --optim instead.",
        },
    )
    lr_schedule: str = field(
        default="trainer",
        metadata={
            "help": f"LR schedule, one of {LR_SCHEDULES}: trainer = --lr-scheduler-type after warmup (default cosine); "
            "plateau = ReduceLROnPlateau on validation macro-F1 (x0.5 after --plateau-patience epochs); one_cycle = "
            "linear rise to the peak LR over the first 30%%, cosine down to 1/1000; cyclic = triangular cycles of "
            "one epoch up and one epoch down between peak/10 and peak."
        },
    )
    lr_find: bool = field(
        default=False,
        metadata={
            "help": "Run an LR range test (`python -m hf_finetune lr-find`) on the trainable groups before training "
            "and use its suggestion as --learning-rate (the LR-find plot and JSON go to --output-dir)."
        },
    )
    baseline: bool = field(
        default=True,
        metadata={"help": "Train the linear-probe baseline on cached frozen features and report it beside the fine-tune."},
    )
    feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where frozen backbone features are cached (default: ~/.cache/hf_finetune/features)."},
    )
    kfold: int = field(
        default=0,
        metadata={
            "help": "Run K stratified folds over train+validation (each fold is once the validation split; the test "
            "split stays held out) and report mean and 95%% t-interval of test accuracy and macro-F1 in "
            "kfold_report.json. 0 = a single run."
        },
    )
    fix_bn_stats: bool | None = field(
        default=None,
        metadata={
            "help": "Keep BatchNorm running statistics fixed (normalise with them, eval mode) in trainable stages too; "
            "the BatchNorm affine weights still train. No effect on models without BatchNorm "
            f"({_ADVISOR}: on when the head starts from the probe, which was fitted on features normalised with the "
            "pretrained statistics)."
        },
    )
    early_stopping_patience: int = field(
        default=4, metadata={"help": "Stop after this many epochs without a better validation macro-F1 (0 = never)."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into an --output-dir that already holds a different run."}
    )
    peft: str = field(
        default="none",
        metadata={
            "help": f"Parameter-efficient fine-tuning, one of {PEFT_METHODS}. 'lora' trains LoRA adapters in the "
            "backbone (base weights stay frozen; adapters follow the freezing strategy stage by stage) and the head "
            "fully; the saved model has the adapters merged in, the adapter alone goes to OUTPUT_DIR/adapter/."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "--peft lora: rank of the adapter matrices."})
    lora_alpha: float = field(default=16, metadata={"help": "--peft lora: scaling numerator (adapter update x alpha / r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "--peft lora: dropout on the adapter's input."})
    lora_target_modules: str | None = field(
        default=None,
        metadata={
            "help": "--peft lora: comma-separated module names (or name suffixes) that get adapters, e.g. "
            "'q_proj,v_proj'; 'all-linear' for every linear layer. Default: chosen per architecture by the backbone "
            "adapter (attention query/value projections for ViT-family models, non-depthwise convolutions and "
            "linear layers of the blocks for CNNs)."
        },
    )

    def __post_init__(self) -> None:
        if self.strategy not in (AUTO, *STRATEGIES):
            raise ValueError(f"`--strategy` must be one of {(AUTO, *STRATEGIES)}, got {self.strategy!r}.")
        for name, allowed in (
            ("head_init", HEAD_INITS), ("mixup", MIXUP_MODES), ("class_balance", CLASS_BALANCE),
            ("optimizer", (*OPTIMIZERS, "trainer")), ("lr_schedule", LR_SCHEDULES),
        ):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"`--{name.replace('_', '-')}` must be one of {allowed}, got {value!r}.")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(
                f"`--layer-decay` must lie in (0, 1], got {self.layer_decay}: 1.0 gives every stage the same LR, "
                "smaller values give lower stages smaller LRs."
            )
        if self.head_learning_rate is not None and not (self.head_learning_rate > 0 and math.isfinite(self.head_learning_rate)):
            raise ValueError(f"`--head-learning-rate` must be a positive number, got {self.head_learning_rate}.")
        if self.head_lr_multiplier is not None and not (self.head_lr_multiplier > 0 and math.isfinite(self.head_lr_multiplier)):
            raise ValueError(f"`--head-lr-multiplier` must be a positive number, got {self.head_lr_multiplier}.")
        for name in ("head_epochs", "plateau_patience", "early_stopping_patience", "mixup_alpha", "cutmix_alpha", "l2sp"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"`--{name.replace('_', '-')}` must be >= 0, got {getattr(self, name)}.")
        for name in ("unfreeze_every", "stages_per_unfreeze", "top_k", "gap_patience"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"`--{name.replace('_', '-')}` must be >= 1, got {getattr(self, name)}.")
        for name in ("head_dropout", "drop_path_rate"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"`--{name.replace('_', '-')}` must lie in [0, 1), got {value}.")
        if self.time_budget is not None and not (self.time_budget > 0 and math.isfinite(self.time_budget)):
            raise ValueError(f"`--time-budget` must be a positive number of minutes, got {self.time_budget}.")
        if self.kfold == 1 or self.kfold < 0:
            raise ValueError(f"`--kfold` must be 0 (off) or at least 2 folds, got {self.kfold}.")
        if self.unfreeze_warmup_epochs < 0:
            raise ValueError(f"`--unfreeze-warmup-epochs` must be >= 0, got {self.unfreeze_warmup_epochs}.")
        self._check_depth()
        if self.unfreeze_on_plateau and self.strategy != "head_then_unfreeze":
            raise ValueError(
                f"`--unfreeze-on-plateau` only applies to `--strategy head_then_unfreeze`, got {self.strategy!r}: "
                "drop the flag or switch the strategy."
            )
        self._check_peft()

    def _check_depth(self) -> None:
        """`--truncate-after` / `--train-stages`: values that can be checked before the model is loaded."""
        if self.truncate_after is not None and not self.truncate_after.strip():
            raise ValueError("`--truncate-after` is empty: pass a stage name or index, 'auto' or 'none'.")
        if self.train_stages is None:
            return
        if not [s for s in self.train_stages.split(",") if s.strip()]:
            raise ValueError(f"`--train-stages` names no stage, got {self.train_stages!r}: pass e.g. 'blocks.0,blocks.1' or '1,2'.")
        if self.strategy == AUTO:
            self.strategy = "full"  # the listed stages train from the first step to the last
        elif self.strategy != "full":
            raise ValueError(
                f"`--train-stages` trains the listed stages for the whole run, which `--strategy {self.strategy}` "
                f"contradicts ({'it never trains the backbone' if self.strategy == 'linear_probe' else 'it picks the trainable stages itself'}): "
                "drop `--strategy` (or pass `--strategy full`), or drop `--train-stages`."
            )

    def _check_peft(self) -> None:
        if self.peft not in PEFT_METHODS:
            raise ValueError(f"`--peft` must be one of {PEFT_METHODS}, got {self.peft!r}.")
        if self.peft == "none":
            if self.lora_target_modules is not None:
                raise ValueError(
                    f"`--lora-target-modules` {self.lora_target_modules!r} was given without `--peft lora`: add "
                    "`--peft lora` or drop the flag."
                )
            return
        if self.lora_r < 1:
            raise ValueError(f"`--lora-r` must be >= 1, got {self.lora_r}.")
        if not (self.lora_alpha > 0 and math.isfinite(self.lora_alpha)):
            raise ValueError(f"`--lora-alpha` must be a positive number, got {self.lora_alpha}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"`--lora-dropout` must lie in [0, 1), got {self.lora_dropout}.")
        if self.lora_target_modules is not None and not [m for m in self.lora_target_modules.split(",") if m.strip()]:
            raise ValueError(
                f"`--lora-target-modules` names no module, got {self.lora_target_modules!r}: pass e.g. 'q_proj,v_proj' "
                "or leave it out for the per-architecture default."
            )
        if self.strategy == "linear_probe":
            raise ValueError(
                "`--peft lora` trains adapters inside the backbone, but `--strategy linear_probe` never unfreezes "
                "it: choose head_then_unfreeze, top_k or full, or drop `--peft`."
            )
        if self.train_bn:
            raise ValueError(
                "`--train-bn` cannot be combined with `--peft lora`: LoRA keeps every base weight and BatchNorm "
                "statistic of the backbone as pretrained, so that the saved adapter reproduces the merged model. "
                "Drop one of the two flags."
            )

    @property
    def lora_target_module_list(self) -> list[str] | str | None:
        """`--lora-target-modules` as peft takes it: a list of names, the string 'all-linear', or None (default)."""
        if self.lora_target_modules is None:
            return None
        names = [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]
        return "all-linear" if names == ["all-linear"] else names


def _has_gpu(use_cpu: bool) -> bool:
    import torch

    return not use_cpu and torch.cuda.is_available()


def default_num_workers(use_cpu: bool = False) -> int:
    """Data-loading workers per process: 0 on CPU; with a GPU, half the cores shared by the local processes, <= 8."""
    if not _has_gpu(use_cpu):
        return 0
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, (os.cpu_count() or 2) // (2 * local_processes)))


@dataclass
class FinetuneTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults for a small image dataset on a modest machine.

    Every stock flag still works; only the defaults below differ from transformers'.
    """

    output_dir: str | None = field(
        default="runs/hf_finetune", metadata={"help": "Where the model, checkpoints, reports and plots are written."}
    )
    # The top backbone stage's LR; lower stages get layer-decayed fractions, the head --head-lr-multiplier times it.
    learning_rate: float | None = field(
        default=None,
        metadata={
            "help": f"LR of the top backbone stage (see --layer-decay; {_ADVISOR}: 1e-4 when few images fine-tune from "
            "the linear-probe head, else 3e-4)."
        },
    )
    num_train_epochs: float | None = field(
        default=None,
        metadata={"help": f"Maximum epochs (early stopping may end sooner; {_ADVISOR}: fits --time-budget, else 10)."},
    )
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Evaluation batch size per device."})
    # Decoupled weight decay; biases, norms, position embeddings and tokens are exempt (see param_groups).
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay on weight matrices."})
    lr_scheduler_type: SchedulerType | str = field(default="cosine", metadata={"help": "LR schedule after warmup (cosine, linear, ...)."})
    # A float < 1 is a fraction of all steps in transformers 5.
    warmup_steps: float = field(default=0.1, metadata={"help": "Warmup steps, or a fraction of all steps if < 1."})
    # Small data: soft targets curb over-confidence on a handful of images per class.
    label_smoothing_factor: float | None = field(
        default=None,
        metadata={"help": f"Label smoothing of the cross-entropy loss ({_ADVISOR}: 0.1, 0.2 with --noisy-labels)."},
    )
    eval_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "When to evaluate on the validation split."})
    save_strategy: SaveStrategy | str = field(default="epoch", metadata={"help": "When to save a checkpoint."})
    logging_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "When to log the training loss."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (the best one always is)."})
    load_best_model_at_end: bool = field(
        default=True, metadata={"help": "Reload the best validation checkpoint before the test evaluation."}
    )
    metric_for_best_model: str | None = field(default="macro_f1", metadata={"help": "Validation metric that picks the best checkpoint."})
    greater_is_better: bool | None = field(default=True, metadata={"help": "Whether a larger --metric-for-best-model is better."})
    # Images arrive through an on-the-fly transform that needs the raw image column.
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep dataset columns (the transform needs them)."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Experiment trackers to report to."})
    dataloader_num_workers: int | None = field(
        default=None,
        metadata={
            "help": "Data-loading worker processes (default: 0 without a GPU, where workers would take cores from the "
            "model's own compute; with a GPU, half the CPU cores per process, at most 8, so decoding and augmentation "
            "keep the GPU busy)."
        },
    )
    dataloader_pin_memory: bool | None = field(
        default=None,
        metadata={"help": "Pinned host memory for faster copies to the GPU (default: on with a GPU, off without one)."},
    )
    # The freeze stage, schedule history and early-stopping counter live in callbacks; a resume must bring them back.
    restore_callback_states_from_checkpoint: bool = field(
        default=True, metadata={"help": "Restore the callbacks' state (freeze stage, schedule log) when resuming."}
    )

    def __post_init__(self) -> None:
        # Checked before the parent's own checks so a bad value is reported with the flag's name, at parse time,
        # instead of after the model has loaded (or, for negative epochs, never: zero steps and a "result").
        # None = decided by the recipe advisor before training.
        if self.max_steps <= 0 and self.num_train_epochs is not None and not self.num_train_epochs > 0:
            raise ValueError(f"`--num-train-epochs` must be > 0 (or set `--max-steps`), got {self.num_train_epochs}.")
        if self.learning_rate is not None and not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"`--learning-rate` must be a positive number, got {self.learning_rate}.")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"`--{name.replace('_', '-')}` must be >= 1, got {getattr(self, name)}.")
        if self.label_smoothing_factor is not None and not 0.0 <= self.label_smoothing_factor < 1.0:
            raise ValueError(f"`--label-smoothing-factor` must lie in [0, 1), got {self.label_smoothing_factor}.")
        metric = self.metric_for_best_model
        if metric is not None and metric.removeprefix("eval_") not in VALIDATION_METRICS:
            raise ValueError(
                f"`--metric-for-best-model` must be one of {VALIDATION_METRICS} (what a validation pass reports), "
                f"got {metric!r}."
            )
        if self.dataloader_num_workers is None:
            self.dataloader_num_workers = default_num_workers(self.use_cpu)
        elif self.dataloader_num_workers < 0:
            raise ValueError(f"`--dataloader-num-workers` must be >= 0, got {self.dataloader_num_workers}.")
        if self.dataloader_pin_memory is None:  # pinning without a GPU only earns a warning from every DataLoader
            self.dataloader_pin_memory = _has_gpu(self.use_cpu)
        # Under torchrun / accelerate launch on a machine without GPUs, accelerate only starts a (gloo) process group
        # when told to run on CPU; without it every process would train alone on the whole dataset.
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not self.use_cpu:
            import torch

            if not torch.cuda.is_available():
                self.use_cpu = True
        super().__post_init__()


@dataclass
class ShareArguments:
    """Sharing the result: model card, Hub upload, Gradio Space.

    Pushing itself is switched on with the stock `--push-to-hub` flag (repository `--hub-model-id`, default: the
    output directory's name in your namespace; `--hub-private-repo`). hf_finetune uploads once, at the end, from the
    complete output directory; the Trainer never pushes mid-run. The token comes from `HF_TOKEN` or `hf auth login`.
    """

    push_demo: bool = field(
        default=False,
        metadata={"help": "With --push-to-hub: also create a Gradio Space (spaces_demo/) that runs the pushed model."},
    )
    space_id: str | None = field(
        default=None, metadata={"help": "Space repository for --push-demo (default: the model repository id + '-demo')."}
    )
    license: str | None = field(
        default=None,
        metadata={
            "help": "Licence in the model card metadata (a Hub licence id such as apache-2.0). Default: the base "
            "model's licence when its model card or timm config states one, else 'other'."
        },
    )
    example_images: int = field(
        default=4,
        metadata={
            "help": "Test images (spread over the classes) copied to OUTPUT_DIR/examples/ for the demo; they are "
            "uploaded with the model. 0 keeps private data out of the repository."
        },
    )

    def __post_init__(self) -> None:
        if self.example_images < 0:
            raise ValueError(f"`--example-images` must be >= 0, got {self.example_images}.")


def check_argument_combinations(finetune_args: FinetuneArguments, training_args: FinetuneTrainingArguments) -> None:
    """Cross-checks between the recipe and the Trainer's flags; raises `ValueError` naming the flags to change."""
    evaluates = str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy)) != "no"
    if not evaluates:
        for flag, active in (
            ("--early-stopping-patience", finetune_args.early_stopping_patience > 0),
            ("--unfreeze-on-plateau", finetune_args.unfreeze_on_plateau),
        ):
            if active:
                raise ValueError(
                    f"`{flag}` needs validation metrics, but `--eval-strategy` is 'no': use `--eval-strategy epoch` "
                    f"or turn `{flag}` off{' (0)' if flag == '--early-stopping-patience' else ''}."
                )

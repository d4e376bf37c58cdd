"""The Trainer's arguments with hf_finetune's defaults (`FinetuneTrainingArguments`), the sharing arguments
(`ShareArguments`) and the checks that span several argument groups."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType

from hf_finetune.config.choices import ADVISOR_HELP, VALIDATION_METRICS
from hf_finetune.config.finetune import FinetuneArguments

# `--report-to` trackers that need a package: transformers' availability check, the module and what to install.
# (kubeflow needs none: transformers adds it by itself inside a Kubeflow TrainJob.)
_TRACKER_PACKAGES: dict[str, tuple[str, str, str]] = {
    "azure_ml": ("is_azureml_available", "azureml", "azureml-sdk"),
    "clearml": ("is_clearml_available", "clearml", "clearml"),
    "codecarbon": ("is_codecarbon_available", "codecarbon", "codecarbon"),
    "comet_ml": ("is_comet_available", "comet_ml", "comet-ml"),
    "dagshub": ("is_dagshub_available", "dagshub", "dagshub mlflow"),
    "dvclive": ("is_dvclive_available", "dvclive", "dvclive"),
    "flyte": ("is_flytekit_available", "flytekit", "flytekit"),
    "mlflow": ("is_mlflow_available", "mlflow", "mlflow"),
    "neptune": ("is_neptune_available", "neptune", "neptune"),
    "swanlab": ("is_swanlab_available", "swanlab", "swanlab"),
    "tensorboard": ("is_tensorboard_available", "tensorboard", "tensorboard"),
    "trackio": ("is_trackio_available", "trackio", "trackio"),
    "wandb": ("is_wandb_available", "wandb", "wandb"),
}


def check_trackers(report_to: list[str]) -> None:
    """Refuses a `--report-to` tracker transformers does not know or cannot use, before anything loads.

    transformers only finds out when the Trainer is built (after the model and the data were loaded), and then raises
    a `RuntimeError` from the tracker's callback.

    Args:
        report_to (`list[str]`): the trackers, as `TrainingArguments` normalises `--report-to`.
    """
    import importlib.util

    from transformers import integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for name in report_to:
        if name not in INTEGRATION_TO_CALLBACK:
            raise ValueError(
                f"`--report-to` {name!r} is not a tracker transformers knows: use one or more of "
                f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}, or 'all' (every installed one) or 'none'."
            )
        if name not in _TRACKER_PACKAGES:
            continue
        available, module, package = _TRACKER_PACKAGES[name]
        if getattr(integrations, available)():
            continue
        if importlib.util.find_spec(module) is None:
            raise ValueError(
                f"`--report-to` {name!r}: the {name} package is not installed. Install it with "
                f"`pip install {package}`, or drop {name!r} from `--report-to`."
            )
        raise ValueError(
            f"`--report-to` {name!r}: {module} is installed but transformers cannot use it (`{available}()` is False; "
            f"see its warning above, e.g. a missing API key or an outdated version). Fix that (`pip install -U "
            f"{package}`), or drop {name!r} from `--report-to`."
        )


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
            "help": f"LR of the top backbone stage (see --layer-decay; {ADVISOR_HELP}: 1e-4 when few images fine-tune from "
            "the linear-probe head, else 3e-4).",
            "aliases": ["--lr"],
        },
    )
    num_train_epochs: float | None = field(
        default=None,
        metadata={
            "help": f"Maximum epochs (early stopping may end sooner; {ADVISOR_HELP}: fits --time-budget, else 10).",
            "aliases": ["--epochs"],
        },
    )
    per_device_train_batch_size: int = field(
        default=16, metadata={"help": "Training batch size per device.", "aliases": ["--batch-size", "--batch_size"]}
    )
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Evaluation batch size per device."})
    # Decoupled weight decay; biases, norms, position embeddings and tokens are exempt (see param_groups).
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay on weight matrices."})
    lr_scheduler_type: SchedulerType | str = field(default="cosine", metadata={"help": "LR schedule after warmup (cosine, linear, ...)."})
    # A float < 1 is a fraction of all steps in transformers 5.
    warmup_steps: float = field(default=0.1, metadata={"help": "Warmup steps, or a fraction of all steps if < 1."})
    # Small data: soft targets curb over-confidence on a handful of images per class.
    label_smoothing_factor: float | None = field(
        default=None,
        metadata={"help": f"Label smoothing of the cross-entropy loss ({ADVISOR_HELP}: 0.1, 0.2 with --noisy-labels)."},
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
    dataloader_persistent_workers: bool | None = field(
        default=None,
        metadata={"help": "Keep data-loading workers (and their decode caches) alive between epochs (default: on "
                  "whenever there are workers)."},
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
        if self.dataloader_persistent_workers is None:  # a worker's decode cache would be rebuilt every epoch
            self.dataloader_persistent_workers = self.dataloader_num_workers > 0
        if self.dataloader_pin_memory is None:  # pinning without a GPU only earns a warning from every DataLoader
            self.dataloader_pin_memory = _has_gpu(self.use_cpu)
        # Under torchrun / accelerate launch on a machine without GPUs, accelerate only starts a (gloo) process group
        # when told to run on CPU; without it every process would train alone on the whole dataset.
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not self.use_cpu:
            import torch

            if not torch.cuda.is_available():
                self.use_cpu = True
        super().__post_init__()
        check_trackers(self.report_to)  # after the parent turned the flag into a list ('all' into what is installed)


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

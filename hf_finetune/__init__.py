"""hf_finetune: disciplined fine-tuning of pretrained vision backbones on small image datasets."""

from .arguments import DataArguments, FinetuneArguments, FinetuneTrainingArguments, ModelArguments, ShareArguments
from .backbone import (
    Stage,
    StageMap,
    load_model_and_processor,
    lora_target_modules,
    no_weight_decay_names,
    split_stages,
    tunable_parameter_names,
)
from .data import DataSplits, attach_transforms, collate, load_splits
from .evaluation import classification_report, compute_metrics
from .freezing import StageUnfreezeCallback, set_trainable_stages, unfreeze_units
from .hub import PushResult, push_to_hub
from .lora import apply_lora, save_lora_model
from .model_card import build_model_card, write_model_card
from .image_check import drop_unreadable_images
from .interrupt import InterruptCallback, NonFiniteLossError, TrainingInterrupted
from .param_groups import build_param_groups, stage_learning_rates
from .run import RunResult, build_trainer, run_finetune
from .schedule_log import ScheduleRecorderCallback
from .trainer import FinetuneTrainer

__version__ = "0.1.0"

__all__ = [
    "DataArguments",
    "DataSplits",
    "FinetuneArguments",
    "FinetuneTrainer",
    "FinetuneTrainingArguments",
    "InterruptCallback",
    "ModelArguments",
    "NonFiniteLossError",
    "PushResult",
    "RunResult",
    "ScheduleRecorderCallback",
    "ShareArguments",
    "Stage",
    "StageMap",
    "StageUnfreezeCallback",
    "TrainingInterrupted",
    "apply_lora",
    "attach_transforms",
    "build_model_card",
    "build_param_groups",
    "build_trainer",
    "classification_report",
    "collate",
    "compute_metrics",
    "drop_unreadable_images",
    "load_model_and_processor",
    "load_splits",
    "lora_target_modules",
    "no_weight_decay_names",
    "push_to_hub",
    "run_finetune",
    "save_lora_model",
    "set_trainable_stages",
    "split_stages",
    "stage_learning_rates",
    "tunable_parameter_names",
    "unfreeze_units",
    "write_model_card",
]

"""hf_finetune: disciplined fine-tuning of pretrained vision backbones on small image datasets."""

from .arguments import DataArguments, FinetuneArguments, FinetuneTrainingArguments, ModelArguments
from .backbone import Stage, StageMap, load_model_and_processor, no_weight_decay_names, split_stages
from .data import DataSplits, attach_transforms, collate, load_splits
from .evaluation import classification_report, compute_metrics
from .freezing import StageUnfreezeCallback, set_trainable_stages, unfreeze_units
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
    "ModelArguments",
    "RunResult",
    "ScheduleRecorderCallback",
    "Stage",
    "StageMap",
    "StageUnfreezeCallback",
    "attach_transforms",
    "build_param_groups",
    "build_trainer",
    "classification_report",
    "collate",
    "compute_metrics",
    "load_model_and_processor",
    "load_splits",
    "no_weight_decay_names",
    "run_finetune",
    "set_trainable_stages",
    "split_stages",
    "stage_learning_rates",
    "unfreeze_units",
]

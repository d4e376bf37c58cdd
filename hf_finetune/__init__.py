"""hf_finetune: disciplined fine-tuning of pretrained vision backbones on small image datasets."""

from .advisor import DatasetMeasurements, RecipePlan, measure_dataset, plan_recipe
from .arguments import DataArguments, FinetuneArguments, FinetuneTrainingArguments, ModelArguments, ShareArguments
from .augment import BatchMixer
from .backbone import (
    Stage,
    StageMap,
    load_model_and_processor,
    lora_target_modules,
    no_weight_decay_names,
    split_stages,
    tunable_parameter_names,
)
from .baseline import LinearProbe, fit_linear_probe
from .data import DataSplits, attach_transforms, collate, load_splits
from .evaluation import classification_report, compute_metrics
from .features import FeatureSet, SplitFeatures, compute_split_features, extract_features
from .freezing import StageUnfreezeCallback, set_trainable_stages, unfreeze_units
from .hub import PushResult, push_to_hub
from .image_check import drop_unreadable_images
from .interrupt import InterruptCallback, NonFiniteLossError, TrainingInterrupted
from .kfold import run_kfold
from .lora import apply_lora, save_lora_model
from .lr_curves import PlateauLRCallback
from .lr_find import lr_range_test
from .model_card import build_model_card, write_model_card
from .monitor import GapMonitorCallback, TrainPredictionLog
from .param_groups import build_param_groups, stage_learning_rates
from .run import RunResult, build_trainer, prepare_run, run_finetune
from .schedule_log import ScheduleRecorderCallback
from .stage_probe import StageProbe, probe_stages
from .trainer import FinetuneTrainer
from .truncation import truncate_model

__version__ = "0.1.0"

__all__ = [
    "BatchMixer",
    "StageProbe",
    "DataArguments",
    "DataSplits",
    "DatasetMeasurements",
    "FeatureSet",
    "FinetuneArguments",
    "FinetuneTrainer",
    "FinetuneTrainingArguments",
    "GapMonitorCallback",
    "InterruptCallback",
    "LinearProbe",
    "ModelArguments",
    "NonFiniteLossError",
    "PlateauLRCallback",
    "PushResult",
    "RecipePlan",
    "RunResult",
    "ScheduleRecorderCallback",
    "ShareArguments",
    "SplitFeatures",
    "Stage",
    "StageMap",
    "StageUnfreezeCallback",
    "TrainPredictionLog",
    "TrainingInterrupted",
    "apply_lora",
    "attach_transforms",
    "build_model_card",
    "build_param_groups",
    "build_trainer",
    "classification_report",
    "collate",
    "compute_metrics",
    "compute_split_features",
    "drop_unreadable_images",
    "extract_features",
    "fit_linear_probe",
    "load_model_and_processor",
    "load_splits",
    "lora_target_modules",
    "lr_range_test",
    "measure_dataset",
    "no_weight_decay_names",
    "plan_recipe",
    "probe_stages",
    "prepare_run",
    "push_to_hub",
    "run_finetune",
    "run_kfold",
    "save_lora_model",
    "set_trainable_stages",
    "split_stages",
    "stage_learning_rates",
    "truncate_model",
    "tunable_parameter_names",
    "unfreeze_units",
    "write_model_card",
]

"""hf_finetune: disciplined fine-tuning of pretrained vision backbones on small image datasets."""

from .advisor import DatasetMeasurements, RecipePlan, measure_dataset, plan_recipe
from .arguments import DataArguments, FinetuneArguments, FinetuneTrainingArguments, ModelArguments
from .augment import BatchMixer
from .backbone import Stage, StageMap, load_model_and_processor, no_weight_decay_names, split_stages
from .data import DataSplits, attach_transforms, collate, load_splits
from .evaluation import classification_report, compute_metrics
from .baseline import LinearProbe, fit_linear_probe
from .features import FeatureSet, SplitFeatures, compute_split_features, extract_features
from .freezing import StageUnfreezeCallback, set_trainable_stages, unfreeze_units
from .kfold import run_kfold
from .lr_curves import PlateauLRCallback
from .lr_find import lr_range_test
from .monitor import GapMonitorCallback, TrainPredictionLog
from .param_groups import build_param_groups, stage_learning_rates
from .run import RunResult, build_trainer, prepare_run, run_finetune
from .schedule_log import ScheduleRecorderCallback
from .trainer import FinetuneTrainer

__version__ = "0.1.0"

__all__ = [
    "BatchMixer",
    "DataArguments",
    "DataSplits",
    "DatasetMeasurements",
    "FeatureSet",
    "FinetuneArguments",
    "FinetuneTrainer",
    "FinetuneTrainingArguments",
    "GapMonitorCallback",
    "LinearProbe",
    "ModelArguments",
    "PlateauLRCallback",
    "RecipePlan",
    "RunResult",
    "ScheduleRecorderCallback",
    "SplitFeatures",
    "Stage",
    "StageMap",
    "StageUnfreezeCallback",
    "TrainPredictionLog",
    "attach_transforms",
    "build_param_groups",
    "build_trainer",
    "classification_report",
    "collate",
    "compute_metrics",
    "compute_split_features",
    "extract_features",
    "fit_linear_probe",
    "load_model_and_processor",
    "load_splits",
    "lr_range_test",
    "measure_dataset",
    "no_weight_decay_names",
    "plan_recipe",
    "prepare_run",
    "run_finetune",
    "run_kfold",
    "set_trainable_stages",
    "split_stages",
    "stage_learning_rates",
    "unfreeze_units",
]

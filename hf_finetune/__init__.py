"""hf_finetune: disciplined fine-tuning of pretrained vision backbones on small image datasets."""

from hf_finetune.backbones.loading import load_model_and_processor
from hf_finetune.backbones.split import split_stages
from hf_finetune.backbones.stages import Stage, StageMap
from hf_finetune.backbones.taps import extract_features
from hf_finetune.backbones.targets import lora_target_modules, no_weight_decay_names, tunable_parameter_names
from hf_finetune.backbones.truncation import truncate_model
from hf_finetune.config.finetune import FinetuneArguments
from hf_finetune.config.sources import DataArguments, ModelArguments
from hf_finetune.config.training import FinetuneTrainingArguments, ShareArguments
from hf_finetune.data.check import drop_unreadable_images
from hf_finetune.data.mixing import BatchMixer
from hf_finetune.data.splits import DataSplits, load_splits
from hf_finetune.data.transforms import attach_transforms, collate
from hf_finetune.evaluation.metrics import classification_report, compute_metrics
from hf_finetune.pipeline.assemble import PreparedRun, build_trainer, prepare_run
from hf_finetune.pipeline.kfold import run_kfold
from hf_finetune.pipeline.run import RunResult, run_finetune
from hf_finetune.probing.features import FeatureSet, SplitFeatures, compute_split_features
from hf_finetune.probing.linear_probe import LinearProbe, fit_linear_probe
from hf_finetune.probing.stage_probe import StageProbe, probe_stages
from hf_finetune.recipe.advisor import RecipePlan, plan_recipe
from hf_finetune.recipe.measure import DatasetMeasurements, measure_dataset
from hf_finetune.recipe.resolve import RunArguments
from hf_finetune.sharing.export import export_onnx
from hf_finetune.sharing.hub import PushResult, push_to_hub
from hf_finetune.sharing.predict import predict_images
from hf_finetune.sharing.model_card import build_model_card, write_model_card
from hf_finetune.training.callbacks.freezing import StageUnfreezeCallback, set_trainable_stages, unfreeze_units
from hf_finetune.training.callbacks.interrupt import InterruptCallback, NonFiniteLossError, TrainingInterrupted
from hf_finetune.training.callbacks.monitor import GapMonitorCallback, TrainPredictionLog
from hf_finetune.training.callbacks.plateau import PlateauLRCallback
from hf_finetune.training.callbacks.schedule_log import ScheduleRecorderCallback
from hf_finetune.training.interpolation import interpolate_state
from hf_finetune.training.lora import apply_lora, save_lora_model
from hf_finetune.training.lr_find import lr_range_test
from hf_finetune.training.param_groups import build_param_groups, stage_learning_rates
from hf_finetune.training.trainer import FinetuneTrainer

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
    "PreparedRun",
    "PushResult",
    "RecipePlan",
    "RunArguments",
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
    "export_onnx",
    "extract_features",
    "fit_linear_probe",
    "load_model_and_processor",
    "load_splits",
    "lora_target_modules",
    "lr_range_test",
    "measure_dataset",
    "no_weight_decay_names",
    "interpolate_state",
    "plan_recipe",
    "predict_images",
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

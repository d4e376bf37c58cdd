"""The name of every file and folder a run writes into its output directory.

Every layer that writes or reads a run folder (training callbacks, evaluation, the model card, the Hub upload, the
pipeline) takes the names from here, so the folder's layout is defined once.
"""

RUN_CONFIG_FILE = "run_config.json"  # resolved arguments, advisor plan, seeds, versions, what happened
TEST_REPORT_FILE = "test_report.json"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
SCHEDULE_FILE = "schedule.json"  # per-epoch freeze state and per-group LR history
LR_SCHEDULE_FILE = "lr_schedule.png"
TRAINING_CURVES_FILE = "training_curves.png"
STAGE_PROBE_FILE = "stage_probe.json"
STAGE_PROBE_PLOT = "stage_probe.png"
LR_FIND_JSON = "lr_find.json"
LR_FIND_PLOT = "lr_find.png"
KFOLD_REPORT_FILE = "kfold_report.json"
CARD_FILE = "README.md"  # the model card
EXAMPLES_DIR = "examples"  # example images for the card and the demo
ADAPTER_DIR = "adapter"  # the LoRA adapter beside the merged model
TOP_LOSSES_PLOT = "top_losses.png"  # the most confidently wrong images (--interpret-split)
TOP_LOSSES_JSON = "top_losses.json"
RELIABILITY_PLOT = "reliability_diagram.png"  # calibration before / after temperature scaling
ONNX_DIR = "onnx"  # `python -m hf_finetune export OUTPUT_DIR`: model.onnx and its check
ONNX_MODEL_FILE = "model.onnx"
ONNX_REPORT_FILE = "export_report.json"
DATA_AUDIT_FILE = "data_audit.json"  # duplicates, suspect labels, image statistics (the data audit)
SUSPECT_LABELS_PLOT = "suspect_labels.png"  # the most suspect labels of the data audit
DUPLICATE_PAIRS_PLOT = "duplicate_pairs.png"  # the closest cross-split pairs of the data audit

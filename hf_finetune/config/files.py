"""TODO docstring."""

from __future__ import annotations

import logging

pass
pass

logger = logging.getLogger(__name__)


STAGE_PROBE_FILE = "stage_probe.json"


STAGE_PROBE_PLOT = "stage_probe.png"


ADAPTER_DIR = "adapter"


LR_FIND_JSON = "lr_find.json"


LR_FIND_PLOT = "lr_find.png"


SCHEDULE_FILE = "schedule.json"


TEST_REPORT_FILE = "test_report.json"


CONFUSION_MATRIX_FILE = "confusion_matrix.png"


LR_SCHEDULE_FILE = "lr_schedule.png"


TRAINING_CURVES_FILE = "training_curves.png"


KFOLD_REPORT_FILE = "kfold_report.json"


CARD_FILE = "README.md"


EXAMPLES_DIR = "examples"


RUN_CONFIG_FILE = "run_config.json"

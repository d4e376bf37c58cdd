"""Command-line / config-file arguments: the single source of truth for every default.

The CLI, the examples and the demo read these dataclasses; nothing restates a default.
They are parsed by `transformers.HfArgumentParser`, so every flag can also come from one
JSON or YAML file, and every `TrainingArguments` flag works as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hf_finetune.config.audit import (
    AUDIT_HELP,
    AUDIT_MODES,
    DEDUPE_HELP,
    DROP_SUSPECTS_HELP,
    NEAR_DUPLICATE_THRESHOLD,
    THRESHOLD_HELP,
    check_audit_arguments,
)
from hf_finetune.config.choices import (
    ADVISOR_HELP,
    AUTO,
    CLASS_BALANCE,
    HEAD_INITS,
    LR_SCHEDULES,
    MIXUP_MODES,
    OPTIMIZERS,
    PEFT_METHODS,
    STRATEGIES,
)
from hf_finetune.config.evaluation import CALIBRATE_HELP, EMA_HELP, INTERPRET_SPLIT_HELP, TTA_HELP, check_ema_decay


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
            f"learning_rate * layer_decay ** (D - d). 1.0 turns it off. ({ADVISOR_HELP}: closer to 1 when lower "
            "layers must adapt to a different domain.)"
        },
    )
    head_init: str | None = field(
        default=None,
        metadata={
            "help": f"How the new head starts, one of {HEAD_INITS}: probe = the linear probe fitted on cached frozen "
            "features (LP-FT: no random head distorting the backbone early; replaces the head-only epochs), random. "
            f"({ADVISOR_HELP})"
        },
    )
    head_learning_rate: float | None = field(
        default=None, metadata={"help": "LR of the head (default: --head-lr-multiplier x --learning-rate)."}
    )
    head_lr_multiplier: float | None = field(
        default=None,
        metadata={
            "help": f"The head's LR as a multiple of --learning-rate when --head-learning-rate is not given ({ADVISOR_HELP}: "
            "1 when few images fine-tune from the linear-probe head, which is already fitted; else 10, since a fresh "
            "head must move much further than the pretrained backbone)."
        },
    )
    head_epochs: int | None = field(
        default=None,
        metadata={
            "help": "head_then_unfreeze: epochs with only the head trainable before unfreezing starts "
            f"({ADVISOR_HELP}: 0 when the head starts from the probe, else 1)."
        },
    )
    unfreeze_every: int = field(
        default=1, metadata={"help": "head_then_unfreeze: epochs between two unfreeze steps (epoch schedule)."}
    )
    stages_per_unfreeze: int | None = field(
        default=None,
        metadata={"help": f"head_then_unfreeze: stages unfrozen at each step, top stage first ({ADVISOR_HELP})."},
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
        default=None, metadata={"help": f"top_k: number of top backbone stages trained with the head ({ADVISOR_HELP})."}
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
        metadata={"help": f"Dropout on the head's input features while training ({ADVISOR_HELP})."},
    )
    drop_path_rate: float | None = field(
        default=None,
        metadata={
            "help": "Stochastic depth (drop-path) rate, for backbones that have it (ViT family, ConvNeXt, Swin, timm "
            f"models); ignored with a warning elsewhere ({ADVISOR_HELP}; the checkpoint's own value if nothing decides)."
        },
    )
    mixup: str | None = field(
        default=None,
        metadata={
            "help": f"Mixup/CutMix on training batches, one of {MIXUP_MODES}: on, off, or auto = switched on by the "
            "train/validation gap monitor when the macro-F1 gap stays above --gap-threshold for --gap-patience epochs "
            f"({ADVISOR_HELP})."
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
            f"inverse class frequency), sampler (class-balanced sampling) ({ADVISOR_HELP}: weighted_loss when the largest "
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
            f"({ADVISOR_HELP}: on when the head starts from the probe, which was fitted on features normalised with the "
            "pretrained statistics)."
        },
    )
    early_stopping_patience: int = field(
        default=4, metadata={"help": "Stop after this many epochs without a better validation macro-F1 (0 = never)."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into an --output-dir that already holds a different run."}
    )
    keep_checkpoints: bool = field(
        default=False,
        metadata={
            "help": "Keep the checkpoint-* folders this run wrote once it has finished (by default they are removed "
            "after the final model is saved: it already holds the best checkpoint's weights)."
        },
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
    tta: bool = field(default=False, metadata={"help": TTA_HELP})
    ema: float | None = field(default=None, metadata={"help": EMA_HELP})
    interpret_split: str = field(default="test", metadata={"help": INTERPRET_SPLIT_HELP, "choices": ["test", "validation"]})
    calibrate: bool | None = field(default=None, metadata={"help": CALIBRATE_HELP})
    audit: str = field(default=AUTO, metadata={"help": AUDIT_HELP, "choices": list(AUDIT_MODES)})
    dedupe: bool = field(default=False, metadata={"help": DEDUPE_HELP})
    near_duplicate_threshold: float = field(default=NEAR_DUPLICATE_THRESHOLD, metadata={"help": THRESHOLD_HELP})
    drop_suspect_labels: int = field(default=0, metadata={"help": DROP_SUSPECTS_HELP})

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
        check_ema_decay(self.ema)
        if self.kfold == 1 or self.kfold < 0:
            raise ValueError(f"`--kfold` must be 0 (off) or at least 2 folds, got {self.kfold}.")
        if self.unfreeze_warmup_epochs < 0:
            raise ValueError(f"`--unfreeze-warmup-epochs` must be >= 0, got {self.unfreeze_warmup_epochs}.")
        self._check_depth()
        check_audit_arguments(self)
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

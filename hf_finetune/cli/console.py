"""What `python -m hf_finetune` prints: log format and levels, third-party noise a run expects, progress bars.

One place decides what reaches the console. hf_finetune's own INFO lines are shown; transformers' WARNING lines too,
except those a fine-tuning run causes on purpose and explains itself:

- the LOAD REPORT table listing the classifier weights re-initialised for the new head (`ignore_mismatched_sizes`;
  hf_finetune logs "New N-class head" instead). A report that lists anything else (unexpected keys, conversion
  errors) is kept.
- "Requested torchvision backend is not available. Falling back to pil backend": the processor works either way.
- "The `save_pretrained` method is disabled for TimmWrapperImageProcessor": at every checkpoint; the model's
  config.json holds the processor's settings, as transformers intends.

Progress bars: every long phase has one (image check, feature pass, training, evaluation); transformers' sub-second
"Loading weights" and "Writing model shards" bars, drawn at every load and checkpoint, are not shown.
"""

from __future__ import annotations

import logging
import re
import sys

# Substrings of third-party log records that are expected in every run and carry nothing for the user.
EXPECTED_NOISE = (
    "backend is not available. Falling back to",
    "`save_pretrained` method is disabled for TimmWrapperImageProcessor",
)
_LOAD_REPORT = "LOAD REPORT"
# Rows of a load report: `key | STATUS | detail`. A report whose every row is a new head's weight is expected.
_REPORT_ROW = re.compile(r"^\S+\s*\|\s*([A-Z]+)\s*\|", re.MULTILINE)
_EXPECTED_REPORT_STATUSES = {"MISMATCH", "MISSING"}


class ExpectedNoiseFilter(logging.Filter):
    """Drops the third-party log records listed in the module docstring; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        if any(noise in message for noise in EXPECTED_NOISE):
            return False
        if _LOAD_REPORT in message:
            statuses = set(_REPORT_ROW.findall(message))
            return not statuses or not statuses <= _EXPECTED_REPORT_STATUSES
        return True


_FILTER = ExpectedNoiseFilter()


# Exit status of a refused command: bad flags, files or values (argparse's own code for usage errors).
EXIT_REFUSED = 2


def refused(err: Exception) -> int:
    """Prints a refusal (its message names what was wrong and the fix) to stderr; returns `EXIT_REFUSED`."""
    print(f"error: {err}", file=sys.stderr)
    return EXIT_REFUSED


def configure_console(package_logger: logging.Logger) -> None:
    """Log format and levels of the CLI, and the noise filter on every handler that prints.

    Args:
        package_logger (`logging.Logger`): the `hf_finetune` logger, shown at INFO.
    """
    import transformers

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.WARNING)
    package_logger.setLevel(logging.INFO)
    transformers.logging.set_verbosity_warning()
    # transformers' loggers print through their own handler (they do not propagate to the root logger).
    handlers = [*logging.getLogger().handlers, *transformers.logging._get_library_root_logger().handlers]
    for handler in handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


# transformers' progress bars that only flash by: one per model load and one per checkpoint written.
QUIET_BARS = ("Loading weights", "Writing model shards")


def _quiet_short_bars(factory, args, kwargs):
    """transformers' tqdm hook: the bars in `QUIET_BARS` are created disabled, every other bar as asked."""
    if kwargs.get("desc") in QUIET_BARS:
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


def set_progress_bars(enabled: bool) -> None:
    """Progress bars of transformers, datasets and hf_finetune's own phases (they share transformers' switch) on or
    off: `--disable-tqdm true` turns them all off."""
    import datasets
    import transformers

    if hasattr(transformers.utils.logging, "set_tqdm_hook"):  # public since transformers 5.x; older: the bars show
        transformers.utils.logging.set_tqdm_hook(_quiet_short_bars)
    if enabled:
        transformers.utils.logging.enable_progress_bar()
        datasets.utils.logging.enable_progress_bar()
    else:
        transformers.utils.logging.disable_progress_bar()
        datasets.utils.logging.disable_progress_bar()


def summary_block(result, seconds: float) -> str:
    """The run's final summary: what was trained, the test numbers beside the baseline, where the files are and what
    to run next. Printed once, by the main process, after the log lines.

    Args:
        result (`RunResult`): what `run_finetune` returned.
        seconds (`float`): wall time of the whole run.
    """
    import os

    report, out = result.test_report, result.output_dir
    lines = [f"hf_finetune: test accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} on "
             f"{report['num_samples']} held-out images ({_duration(seconds)}) -> {out}"]
    if result.recipe is not None:
        used = result.recipe.used_choices()
        lines.append(f"  hf_finetune recipe ({result.recipe.case}): " + ", ".join(f"{n}={c.value}" for n, c in used.items()))
    baseline = report.get("baseline")
    if baseline:
        lines.append(f"  linear-probe baseline: accuracy {baseline['accuracy']:.4f}, macro-F1 {baseline['macro_f1']:.4f}")
    files = sorted(name for name in os.listdir(out) if not name.startswith(".")) if os.path.isdir(out) else []
    if files:
        lines.append("  files: " + ", ".join(files))
    lines.append(f"  next: python -m hf_finetune demo {out}   |   predict {out} IMAGES...   |   push {out} --repo-id you/name")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}m {rest:02d}s" if minutes else f"{rest}s"

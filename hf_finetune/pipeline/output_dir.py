"""Where a run may write: `--output-dir` is checked before anything is loaded or written.

Refused: the dataset folder or a folder inside it (the next run on that dataset would read the outputs as data), the
`--model` folder or a folder holding it (the pretrained weights would be overwritten, or rotated away with the
checkpoints), and a non-empty folder that holds no hf_finetune run (its files would be replaced, and another tool's
`checkpoint-*` folders deleted by the Trainer's checkpoint rotation) unless `--overwrite-output-dir` is given, which
then says which of its files a run replaces; `checkpoint-*` folders of another tool are refused even then, since
hf_finetune never deletes files it did not write.

A run that fails before training (a bad `--model`, dataset or flag) takes back what it wrote (`undone_on_failure`):
an empty folder it created would only be in the way, and a stray audit file would make the next run refuse the folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from hf_finetune.config import files

logger = logging.getLogger(__name__)

# Files that only an hf_finetune command writes: a folder holding one of them holds a run (or an lr-find) of ours.
OUR_MARKERS = frozenset(
    {files.RUN_CONFIG_FILE, files.SCHEDULE_FILE, files.TEST_REPORT_FILE, files.LR_FIND_JSON, files.KFOLD_REPORT_FILE}
)
# Names a run may write at the top of its output folder: hf_finetune's own and what `save_pretrained` and the
# Trainer write there.
_HF_NAMES = frozenset({
    "config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "preprocessor_config.json",
    "training_args.bin", "trainer_state.json", "all_results.json", "train_results.json", "eval_results.json", "runs",
})
_SHOWN = 10


def written_names() -> frozenset[str]:
    """Every top-level name a run may write into its output folder (`config.files` plus the Hugging Face files)."""
    ours = {value for name, value in vars(files).items() if name.isupper() and isinstance(value, str)}
    return frozenset(ours | _HF_NAMES)


def _within(path: str, folder: str) -> bool:
    """True when `path` is `folder` or lies inside it (symlinks resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _listing(names: list[str]) -> str:
    shown = ", ".join(sorted(names)[:_SHOWN])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")


def check_output_location(output_dir: str, model: str, dataset: str, overwrite: bool) -> None:
    """Refuses an `--output-dir` a run must not write into (see the module docstring); warns what
    `--overwrite-output-dir` replaces in a folder of another tool.

    Args:
        output_dir (`str`): `--output-dir`.
        model (`str`): `--model` (a Hub id or a local folder).
        dataset (`str`): `--dataset` (a Hub id or a local folder).
        overwrite (`bool`): `--overwrite-output-dir`.
    """
    if os.path.isdir(dataset) and _within(output_dir, dataset):
        raise ValueError(
            f"`--output-dir` {output_dir!r} is the `--dataset` folder {dataset!r} or inside it: the model, checkpoints "
            "and reports would land among the images, and the next run on this dataset would read them as data. "
            "Choose an --output-dir outside the dataset folder."
        )
    model_dir = os.path.expanduser(model)
    if os.path.isdir(model_dir) and _within(model_dir, output_dir):
        raise ValueError(
            f"`--output-dir` {output_dir!r} is the `--model` folder {model!r} or holds it: the fine-tuned model would "
            "overwrite the pretrained weights it starts from (and checkpoint rotation could delete them). Choose "
            "another --output-dir."
        )
    if not os.path.isdir(output_dir):
        return
    entries = [entry for entry in os.listdir(output_dir) if not entry.startswith(".")]
    if not entries or OUR_MARKERS & set(entries):
        return
    checkpoints = [entry for entry in entries if entry.startswith("checkpoint-")]
    replaced = sorted(written_names() & set(entries))
    if not overwrite:
        raise ValueError(
            f"`--output-dir` {output_dir!r} is not empty and holds no hf_finetune run ({_listing(entries)}). Choose a "
            "new or empty folder, or pass --overwrite-output-dir to write into it anyway"
            + (f" (it would replace {_listing(replaced)})" if replaced else "") + "."
        )
    if checkpoints:
        raise ValueError(
            f"`--output-dir` {output_dir!r} holds checkpoint folders hf_finetune did not write ({_listing(checkpoints)}):"
            " the Trainer's checkpoint rotation and resume would take them for this run's and delete or load them. "
            "Move them elsewhere or choose another --output-dir (--overwrite-output-dir never deletes files "
            "hf_finetune did not write)."
        )
    logger.warning(
        "--overwrite-output-dir: %s holds files of another tool. This run replaces %s; it deletes nothing and leaves "
        "the rest as it is.", output_dir, _listing(replaced) if replaced else "none of them",
    )


def _missing_folders(path: str) -> list[str]:
    """The folders of `path` that do not exist yet, deepest first."""
    missing, path = [], os.path.abspath(path)
    while not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


@contextmanager
def undone_on_failure(output_dir: str) -> Iterator[None]:
    """On an exception in the block, removes what the run added to `output_dir`, then re-raises.

    Only what this run made goes: files with a name an hf_finetune run writes (`written_names`) that were not there
    on entry, then each folder of the path that did not exist on entry, once it is empty. A folder that existed before
    the run stays, and so does any file of another name (and with it the folders that hold it).

    Args:
        output_dir (`str`): `--output-dir`.
    """
    missing = _missing_folders(output_dir)
    before = set(os.listdir(output_dir)) if not missing and os.path.isdir(output_dir) else set()
    try:
        yield
    except BaseException:
        removed = []
        for name in sorted(written_names() - before):
            path = os.path.join(output_dir, name)
            if os.path.isfile(path) and not os.path.islink(path):
                os.remove(path)
                removed.append(name)
        for folder in missing:
            try:
                os.rmdir(folder)  # refuses a folder that is not empty
            except FileNotFoundError:
                continue
            except OSError:
                break
        if removed:
            logger.info("The run stopped before training: removed what it had written into %s (%s).", output_dir, _listing(removed))
        raise

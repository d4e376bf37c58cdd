"""Upload a finished run to the Hugging Face Hub, and optionally a Gradio Space running it.

One upload, at the end, from the complete output directory (model, image processor, model card, plots, reports,
adapter, example images; never checkpoints): `HfApi.create_repo` + `HfApi.upload_folder`. A failed upload (no
network, no or bad token, no permission) changes nothing locally; it is logged with the exact command that retries it:

    python -m hf_finetune push OUTPUT_DIR --repo-id user/name [--private] [--push-demo [--space-id user/name-demo]]

The token comes from `HF_TOKEN` or `hf auth login` (or `--hub-token` on a training run); it is handed to `HfApi`
only and never written to logs, cards, configs or command lines.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from hf_finetune.sharing.demo import SPACES_DEMO_DIR
from hf_finetune.sharing.model_card import write_model_card

logger = logging.getLogger(__name__)

# Checkpoints are for resuming, not for users; training_args.bin is a pickle (run_config.json says the same in JSON).
IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "training_args.bin", "*.tmp", ".cache/**"]
# What a pushable output directory must hold: a loadable model and its card.
_REQUIRED = ("config.json", "README.md")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
SPACE_FILES = ("app.py", "requirements.txt", "README.md")


@dataclass
class PushResult:
    """What an upload did.

    Attributes:
        repo_id (`str`): the model repository (full id once the Hub resolved the namespace).
        url (`str`, *optional*): the model repository's URL, when the upload succeeded.
        space_id (`str`, *optional*): the demo Space, when one was pushed.
        error (`str`, *optional*): why the upload failed; `None` on success.
        retry_command (`str`): the command that repeats the upload from the local output directory.
    """

    repo_id: str
    url: str | None = None
    space_id: str | None = None
    error: str | None = None
    retry_command: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


def default_repo_id(output_dir: str) -> str:
    """The repository name `--push-to-hub` uses without `--hub-model-id`: the output directory's name."""
    return os.path.basename(os.path.abspath(output_dir))


def check_repo_id(repo_id: str, flag: str = "--repo-id") -> str:
    """Validates a Hub repository id (`name` or `namespace/name`); raises ValueError naming `flag`."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(
            f"`{flag}` {repo_id!r} is not a valid Hub repository id ({err}). Use 'name' or 'namespace/name' with "
            "letters, digits, '-', '_' and '.' only."
        ) from None
    return repo_id


def check_pushable(output_dir: str) -> None:
    """Raises ValueError unless `output_dir` holds a complete run (model config, weights, model card)."""
    if not os.path.isdir(output_dir):
        raise ValueError(f"`{output_dir}` does not exist: pass the --output-dir of a finished run.")
    missing = [name for name in _REQUIRED if not os.path.isfile(os.path.join(output_dir, name))]
    if not any(os.path.isfile(os.path.join(output_dir, name)) for name in _WEIGHTS):
        missing.append("model.safetensors")
    if missing:
        raise ValueError(
            f"`{output_dir}` is not a complete run: {', '.join(missing)} missing. Push the --output-dir of a finished "
            "run (README.md is regenerated with `python -m hf_finetune card OUTPUT_DIR`)."
        )


def retry_command(output_dir: str, repo_id: str, private: bool | None, push_demo: bool, space_id: str | None) -> str:
    """The `python -m hf_finetune push ...` command that repeats an upload (never with a token)."""
    argv = ["python", "-m", "hf_finetune", "push", output_dir, "--repo-id", repo_id]
    if private:
        argv.append("--private")
    if push_demo:
        argv.append("--push-demo")
        if space_id:
            argv += ["--space-id", space_id]
    return shlex.join(argv)


def uploaded_files(output_dir: str) -> list[str]:
    """The files `push_to_hub` uploads from `output_dir` (relative paths), by huggingface_hub's own pattern filter."""
    from huggingface_hub.utils import filter_repo_objects

    paths = [
        os.path.relpath(os.path.join(root, name), output_dir).replace(os.sep, "/")
        for root, _, names in os.walk(output_dir)
        for name in names
    ]
    return sorted(filter_repo_objects(paths, ignore_patterns=IGNORE_PATTERNS))


def _space_folder(destination: str, model_repo_id: str) -> None:
    """Copies the packaged Space folder (`SPACES_DEMO_DIR`) into `destination`, its README pointing at `model_repo_id`."""
    import gradio
    from huggingface_hub import SpaceCard

    for name in SPACE_FILES:
        shutil.copy2(SPACES_DEMO_DIR / name, os.path.join(destination, name))
    card = SpaceCard.load(os.path.join(destination, "README.md"))
    card.data.models = [model_repo_id]
    card.data.title = f"{model_repo_id.split('/')[-1]} demo"
    card.data.sdk_version = gradio.__version__
    card.save(os.path.join(destination, "README.md"))


def push_demo_space(api: Any, model_repo_id: str, space_id: str, private: bool | None = None) -> str:
    """Creates (or updates) a Gradio Space running the packaged demo app on `model_repo_id`; returns the Space id."""
    space = api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        _space_folder(folder, model_repo_id)
        api.upload_folder(
            repo_id=space, repo_type="space", folder_path=folder, commit_message=f"Demo of {model_repo_id} (hf_finetune)"
        )
    if private:
        logger.warning("The model is private: add an HF_TOKEN secret with read access in the settings of Space %s.", space)
    return space


def push_to_hub(
    output_dir: str,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    push_demo: bool = False,
    space_id: str | None = None,
    commit_message: str = "Upload fine-tuned model (hf_finetune)",
) -> PushResult:
    """Uploads a finished run's output directory to the Hub model repository `repo_id` (created if needed).

    The model card is regenerated first so its usage snippet and model-index name the repository. Checkpoints are not
    uploaded (`IGNORE_PATTERNS`). Upload errors are caught: the local directory is left as it was (the card is
    restored), the error and the retry command are logged and returned.

    Args:
        output_dir (`str`): the run's output directory.
        repo_id (`str`): `name` (in the token's namespace) or `namespace/name`.
        private (`bool`, *optional*): create the repository private (ignored when it exists).
        token (`str`, *optional*): Hub token; default `HF_TOKEN` or the `hf auth login` one.
        push_demo (`bool`, *optional*, defaults to `False`): also push a Gradio Space (see `push_demo_space`).
        space_id (`str`, *optional*): the Space's id (default: the model repository id + `-demo`).
        commit_message (`str`, *optional*): the commit message.

    Returns:
        `PushResult`.

    Raises:
        `ValueError`: `output_dir` is not a complete run, or `repo_id`/`space_id` is not a valid repository id.
    """
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    if space_id:
        check_repo_id(space_id, "--space-id")
    check_pushable(output_dir)
    result = PushResult(repo_id=repo_id, retry_command=retry_command(output_dir, repo_id, private, push_demo, space_id))
    card_path = os.path.join(output_dir, "README.md")
    with open(card_path, encoding="utf-8") as f:
        card_before = f.read()
    try:
        api = HfApi(token=token)
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        result.repo_id = repo.repo_id
        result.retry_command = retry_command(output_dir, repo.repo_id, private, push_demo, space_id)
        write_model_card(output_dir, repo_id=repo.repo_id)
        api.upload_folder(
            repo_id=repo.repo_id, folder_path=output_dir, ignore_patterns=IGNORE_PATTERNS, commit_message=commit_message
        )
        result.url = str(repo)
        logger.info("Pushed %s to %s", output_dir, result.url)
        if push_demo:
            result.space_id = push_demo_space(api, repo.repo_id, space_id or f"{repo.repo_id}-demo", private)
            logger.info("Demo Space: https://huggingface.co/spaces/%s", result.space_id)
    except Exception as err:  # noqa: BLE001 - any upload failure (network, auth, permission) must leave a retry path
        result.error = f"{type(err).__name__}: {err}"
        with open(card_path, "w", encoding="utf-8", newline="") as f:
            f.write(card_before)  # the card names no repository the model did not reach
        logger.error(
            "Upload to the Hub failed (%s). The local output in %s is complete and unchanged. Log in (`hf auth login` or HF_TOKEN) "
            "if needed, then retry with:\n    %s",
            result.error, output_dir, result.retry_command,
        )
    return result

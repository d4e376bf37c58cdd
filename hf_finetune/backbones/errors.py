"""Loading errors, translated into `ValueError`s that name `--model`, show the value and say the fix.

`from_pretrained` reports a missing checkpoint, an offline cache miss, a gated repository or refused pickled weights
as an `OSError` (or an `UnpicklingError`) whose text is about files; the user passed a model id or a folder. This
module checks the location before anything loads and turns those errors into messages about what to pass instead.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path


def looks_like_local_path(value: str) -> bool:
    """Whether `value` can only be meant as a local path: it starts like one, or is no valid Hub repo id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if value.startswith((".", "~", os.sep)) or os.path.isabs(value) or (os.altsep and os.altsep in value):
        return True
    try:
        validate_repo_id(value)
    except HFValidationError:
        return True
    return False


def _not_found_message(value: str) -> str:
    return (
        f"`--model` {value!r} does not exist: pass a Hugging Face Hub model id (e.g. 'facebook/dinov2-small') or a "
        "local directory containing a config.json."
    )


def check_location(value: str) -> str:
    """Returns the local directory (user-expanded) or the Hub id to load; raises for paths that cannot be either."""
    value = os.fspath(value)
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"`--model` {value!r} is a directory without a config.json: pass a Hugging Face Hub model id or a "
                "local directory saved with `save_pretrained` (or in the timm Hub layout)."
            )
        return str(path)
    if path.exists() or looks_like_local_path(value):
        raise ValueError(_not_found_message(value))
    return value


def _caused_by(err: BaseException, types: tuple[type[BaseException], ...], phrases: tuple[str, ...]) -> bool:
    """Whether `err` or an exception in its cause/context chain is one of `types` or says one of `phrases`."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, types) or any(phrase in str(seen).lower() for phrase in phrases):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def location_error(value: str, err: BaseException) -> ValueError:
    """Turns an OSError (or a refused pickle) from a `from_pretrained` call into a ValueError that says what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled

    if isinstance(err, pickle.UnpicklingError):
        # transformers reads .bin/.pth weights with torch.load(weights_only=True): anything but tensors is refused.
        reason = re.search(r"WeightsUnpickler error: (.*?)(?: Please use|$)", str(err), re.S)
        return ValueError(
            f"`--model` {value!r}: refused to load its pickled weights (pytorch_model.bin/.pth): they hold Python "
            f"objects other than tensors, which could run code when loaded ({reason.group(1).strip() if reason else err}). "
            "Use a checkpoint with model.safetensors; for weights you trust, load them once with "
            "`torch.load(..., weights_only=False)` and re-save with `save_pretrained` (safetensors)."
        )
    if os.path.isdir(value):
        return ValueError(f"`--model` {value!r} could not be loaded: {err}")
    offline = getattr(constants, "HF_HUB_OFFLINE", False)
    if offline or _caused_by(
        err,
        (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError),
        ("couldn't connect", "offline mode"),
    ):
        return ValueError(
            f"`--model` {value!r} is not a local directory and is not in the Hugging Face cache, and the Hub cannot "
            f"be reached (offline). Download it once with network access (e.g. `hf download {value}`), or pass a "
            "local directory with a config.json; set HF_HUB_OFFLINE=1 only when the cache already holds the model."
        )
    if _caused_by(err, (GatedRepoError,), ("gated repo",)):
        return ValueError(
            f"`--model` {value!r} is a gated Hub repository: accept its licence on the Hub, then pass `token` "
            f"(or run `hf auth login`). ({err})"
        )
    return ValueError(f"{_not_found_message(value)} ({err})")


def unreadable_config_error(value: str, err: ValueError, supported: list[str]) -> ValueError:
    """Turns `AutoConfig`'s ValueError (custom code refused, or an unknown config) into one that says what to do.

    Args:
        value (`str`): `--model`.
        err (`ValueError`): what `AutoConfig.from_pretrained` raised (without `trust_remote_code` when it asks for it).
        supported (`list[str]`): the model types hf_finetune loads, listed in the message.
    """
    if "trust_remote_code" in str(err):
        return ValueError(
            f"`--model` {value!r} needs custom Python code from its repository to load (its config.json has an "
            "`auto_map`). hf_finetune does not run it unless you pass `--trust-remote-code`: do that only for a "
            "repository you trust, after reading its .py files."
        )
    return ValueError(
        f"`--model` {value!r} has a config.json transformers cannot read as a model config ({err}). "
        f"Supported model types: {', '.join(supported)}."
    )

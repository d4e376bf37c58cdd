"""`python -m hf_finetune demo OUTPUT_DIR`: serve a fine-tuned model's Gradio demo on this machine.

    python -m hf_finetune demo runs/my-model [--host 127.0.0.1] [--port 7860] [--top-k 3]

The app is the one a Space runs (the packaged copy of `spaces_demo/app.py`, loaded by
`hf_finetune.sharing.demo.load_app`); it needs the `demo` extra (`pip install "hf_finetune[demo]"`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from hf_finetune.cli.console import refused
from hf_finetune.sharing.demo import load_app

logger = logging.getLogger(__name__)


def _model_error(model: str) -> str | None:
    """Why `model` cannot be served, before anything is loaded; None when it may be."""
    if os.path.exists(model):
        if os.path.isfile(os.path.join(model, "config.json")):
            return None
        return (
            f"`{model}` holds no config.json: pass the --output-dir of a finished run (it holds the saved model) or a "
            "Hub model id."
        )
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        return f"`{model}` is neither a folder on this machine nor a Hub model id (`user/name`): check the path."
    return None


def demo_main(argv: list[str]) -> int:
    """`python -m hf_finetune demo OUTPUT_DIR`: serves the demo on http://127.0.0.1:PORT until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m hf_finetune demo",
        description="Launch the Gradio demo (spaces_demo/app.py) locally for a fine-tuned model.",
    )
    parser.add_argument("model", help="The --output-dir of a finished run, or a Hub model id.")
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on (default 127.0.0.1: this machine only).")
    parser.add_argument("--port", type=int, default=None, help="Port (default: Gradio's, 7860 or the next free one).")
    parser.add_argument("--top-k", type=int, default=None, help="Labels shown per prediction (default: up to 5).")
    args = parser.parse_args(argv)
    error = _model_error(args.model)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    app = load_app()
    try:
        demo = app.build_demo(args.model, top_k=args.top_k)
    except ValueError as err:  # a bad --top-k or an unreadable run record: the message names it and the fix
        return refused(err)
    app.launch(demo, host=args.host, port=args.port)
    return 0

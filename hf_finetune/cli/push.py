"""`python -m hf_finetune push OUTPUT_DIR --repo-id user/name`: upload a finished run to the Hugging Face Hub.

    python -m hf_finetune push runs/my-model --repo-id user/name [--private] [--push-demo [--space-id user/name-demo]]

The upload is `hf_finetune.sharing.hub.push_to_hub`. Exit codes: 0 pushed, 1 the upload failed (the local run is
unchanged and the retry command is printed), 2 bad arguments or an incomplete run.
"""

from __future__ import annotations

import argparse
import logging
import sys

from hf_finetune.cli.console import refused
from hf_finetune.sharing.hub import push_to_hub

logger = logging.getLogger(__name__)


def push_main(argv: list[str]) -> int:
    """`python -m hf_finetune push OUTPUT_DIR --repo-id user/name [--private] [--push-demo] [--space-id ID]`."""
    parser = argparse.ArgumentParser(
        prog="python -m hf_finetune push",
        description="Upload a finished run (model, image processor, model card, plots, reports; no checkpoints) to "
        "the Hugging Face Hub. The token comes from HF_TOKEN or `hf auth login`.",
    )
    parser.add_argument("output_dir", help="The --output-dir of a finished run.")
    parser.add_argument("--repo-id", required=True, help="Model repository: 'name' (your namespace) or 'namespace/name'.")
    parser.add_argument("--private", action="store_true", help="Create the repository private.")
    parser.add_argument("--push-demo", action="store_true", help="Also create a Gradio Space (spaces_demo/) running the model.")
    parser.add_argument("--space-id", default=None, help="Space repository for --push-demo (default: REPO_ID-demo).")
    args = parser.parse_args(argv)
    if args.space_id and not args.push_demo:
        print("error: `--space-id` is only used with `--push-demo`: add --push-demo or drop --space-id.", file=sys.stderr)
        return 2
    try:
        result = push_to_hub(
            args.output_dir, args.repo_id, private=args.private or None, push_demo=args.push_demo, space_id=args.space_id
        )
    except ValueError as err:
        return refused(err)
    if not result.ok:
        print(f"hf_finetune: upload failed ({result.error}); {args.output_dir} is unchanged. Retry with:\n  {result.retry_command}", file=sys.stderr)
        return 1
    print(f"hf_finetune: pushed {args.output_dir} -> {result.url}" + (f" (demo: https://huggingface.co/spaces/{result.space_id})" if result.space_id else ""))
    return 0

"""`python -m hf_finetune predict OUTPUT_DIR INPUT... --output predictions.csv`: classify new images with a finished
run's model; one CSV row per image (top-k labels and probabilities, or the error that kept it from being read).

    python -m hf_finetune predict runs/my-model photos/ extra.jpg --output predictions.csv [--top-k 3] [--tta]
    python -m hf_finetune predict runs/my-model beans:test --output beans_test.csv      # a Hub dataset split
"""

from __future__ import annotations

import argparse
import logging

from hf_finetune.cli.console import refused
from hf_finetune.sharing.predict import (
    DEFAULT_TOP_K,
    predict_images,
    write_predictions_csv,
)

logger = logging.getLogger(__name__)


def predict_main(argv: list[str]) -> int:
    """`python -m hf_finetune predict OUTPUT_DIR INPUT...`; exit code 0 even when some images were unreadable."""
    parser = argparse.ArgumentParser(
        prog="python -m hf_finetune predict",
        description="Classify images with a finished run's model: writes one CSV row per image (top-k labels and "
        "probabilities; unreadable files get a row with their error).",
    )
    parser.add_argument("output_dir", help="The --output-dir of a finished run (the saved model).")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="Image files, folders (searched recursively), or Hub dataset splits as NAME:SPLIT.")
    parser.add_argument("--output", default="predictions.csv", help="The CSV to write (default: predictions.csv).")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help=f"Labels per image (default: {DEFAULT_TOP_K}).")
    parser.add_argument("--batch-size", type=int, default=32, help="Images per forward pass (default: 32).")
    parser.add_argument("--tta", action="store_true", help="Test-time augmentation: average the logits over the image, its mirror image and three crops.")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA when available).")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar.")
    args = parser.parse_args(argv)
    try:
        predictions = predict_images(
            args.output_dir, args.inputs, top_k=args.top_k, batch_size=args.batch_size, tta=args.tta,
            device=args.device, progress=not args.no_progress,
        )
    except ValueError as err:
        return refused(err)
    path = write_predictions_csv(predictions, args.output, args.top_k)
    failed = sum(p.error is not None for p in predictions)
    unreadable = f" ({failed} unreadable, listed with their error)" if failed else ""
    print(f"hf_finetune predict: {len(predictions)} image(s){unreadable} -> {path}")
    return 0

"""`python -m hf_finetune export OUTPUT_DIR --format onnx`: export a finished run's model and check the export.

    python -m hf_finetune export runs/my-model --format onnx      # -> runs/my-model/onnx/model.onnx

onnxruntime's logits on the run's example images must match PyTorch's within 1e-4 (`--atol`), or the command exits
with code 1; a missing onnx / onnxruntime or a folder that is no finished run is exit code 2.
"""

from __future__ import annotations

import argparse
import logging

from hf_finetune.cli.console import refused
from hf_finetune.sharing.export import ATOL, FORMATS, OPSET, export_onnx

logger = logging.getLogger(__name__)


def export_main(argv: list[str]) -> int:
    """`python -m hf_finetune export OUTPUT_DIR --format onnx`."""
    parser = argparse.ArgumentParser(
        prog="python -m hf_finetune export",
        description="Export a finished run's model (dynamic batch) and check it: onnxruntime must reproduce PyTorch's "
        "logits on the run's example images.",
    )
    parser.add_argument("output_dir", help="The --output-dir of a finished run (the saved model).")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="Export format (default: onnx).")
    parser.add_argument("--export-dir", default=None, help="Where to write (default: OUTPUT_DIR/onnx).")
    parser.add_argument("--atol", type=float, default=ATOL, help=f"Largest accepted logit difference (default: {ATOL}).")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default: {OPSET}).")
    args = parser.parse_args(argv)
    try:
        result = export_onnx(args.output_dir, args.export_dir, atol=args.atol, opset=args.opset)
    except ValueError as err:
        return refused(err)
    checked = f"{result.images} example image(s)" if result.images else "random pixels (the run has no examples/)"
    verdict = "match" if result.passed else "DO NOT match"
    print(
        f"hf_finetune export: {result.path} (dynamic batch, opset {result.opset}); onnxruntime logits {verdict} "
        f"PyTorch's on {checked}: max |diff| {result.max_abs_diff:.2e} (atol {result.atol:.0e})"
    )
    return 0 if result.passed else 1

"""Export of a finished run's model: `python -m hf_finetune export OUTPUT_DIR --format onnx`.

The classifier (full, truncated or LoRA-merged) is exported with `torch.onnx.export` (input `pixel_values`
`[batch, 3, H, W]` with a dynamic batch axis, output `logits`), then checked by the command itself: onnxruntime runs
the example images of the run (`examples/`) through the exported file, as one batch and one by one, and its logits
must match PyTorch's within `atol` (1e-4). The result is `OUTPUT_DIR/onnx/` (model.onnx, config.json,
preprocessor_config.json, export_report.json); the model card is rewritten to say how to use it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_finetune.config.files import (
    EXAMPLES_DIR,
    ONNX_DIR,
    ONNX_MODEL_FILE,
    ONNX_REPORT_FILE,
)
from hf_finetune.data.images import open_image, to_rgb
from hf_finetune.data.transforms import resolve_preprocessing
from hf_finetune.sharing.model_card import write_model_card
from hf_finetune.sharing.predict import load_classifier

logger = logging.getLogger(__name__)

FORMATS = ("onnx",)
ATOL = 1e-4
OPSET = 17
_COPIED = ("config.json", "preprocessor_config.json")


@dataclass
class ExportResult:
    """What `export_onnx` wrote and how closely onnxruntime reproduced PyTorch."""

    path: str
    images: int
    max_abs_diff: float
    atol: float
    passed: bool
    opset: int
    dynamic_batch: bool = True


class _LogitsOnly(torch.nn.Module):
    """`pixel_values -> logits`: the tensor in, the tensor out, as the exporter and onnxruntime take them."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ValueError(
            f"`--format onnx` needs onnx and onnxruntime ({err.name} is missing): "
            "`pip install \"hf_finetune[export]\"` (or `pip install onnx onnxruntime`)."
        ) from err
    return onnx, onnxruntime


def _check_pixels(model_dir: str, processor: Any, size: tuple[int, int]) -> tuple[torch.Tensor, int]:
    """The run's example images, preprocessed; random pixels of the model's size when the run shipped none."""
    folder = Path(model_dir) / EXAMPLES_DIR
    images = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        try:
            images.append(to_rgb(open_image({"path": str(path), "bytes": None})))
        except Exception:  # noqa: BLE001, S112 - a non-image file in examples/ is not an example
            continue
    if images:
        return processor(images, return_tensors="pt")["pixel_values"], len(images)
    logger.warning("%s has no example images: the export is checked on random pixels.", folder)
    return torch.randn(4, 3, *size, generator=torch.Generator().manual_seed(0)), 0


def export_onnx(model_dir: str, output_dir: str | None = None, atol: float = ATOL, opset: int = OPSET) -> ExportResult:
    """Exports a finished run's model to ONNX and checks it with onnxruntime.

    Args:
        model_dir (`str`): the --output-dir of a finished run.
        output_dir (`str`, *optional*): where to write (default `model_dir/onnx`).
        atol (`float`, defaults to 1e-4): largest accepted |onnxruntime logit - PyTorch logit|.
        opset (`int`, defaults to 17): ONNX opset.

    Returns:
        `ExportResult` (also written as `export_report.json`); `passed` is False when the logits differ by more than
        `atol` (the file is kept for inspection).
    """
    onnx, onnxruntime = _require_onnx()
    model, processor = load_classifier(model_dir, device="cpu")
    output_dir = output_dir or os.path.join(model_dir, ONNX_DIR)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, ONNX_MODEL_FILE)
    wrapper = _LogitsOnly(model).eval()
    pixels, num_images = _check_pixels(model_dir, processor, resolve_preprocessing(processor).size)
    trace_input = pixels[:2] if len(pixels) >= 2 else pixels.repeat(2, 1, 1, 1)
    with warnings.catch_warnings():
        # The TorchScript exporter (deprecated in favour of torch.export, which needs onnxscript too) covers every
        # torch >= 2.4 and the transformers / timm image models hf_finetune trains.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (trace_input,), path, dynamo=False, input_names=["pixel_values"], output_names=["logits"],
            dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
        )
    onnx.checker.check_model(path)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = wrapper(pixels).numpy()
    # All images as one batch (a batch size the trace never saw), then the first alone.
    got = session.run(["logits"], {"pixel_values": pixels.numpy()})[0]
    single = session.run(["logits"], {"pixel_values": pixels[:1].numpy()})[0]
    diff = float(max(np.abs(got - expected).max(), np.abs(single - expected[:1]).max()))
    result = ExportResult(path, num_images, diff, atol, diff <= atol, opset)
    for name in _COPIED:  # optimum's ORTModelForImageClassification and the processor read them beside model.onnx
        if os.path.isfile(os.path.join(model_dir, name)):
            shutil.copy2(os.path.join(model_dir, name), os.path.join(output_dir, name))
    with open(os.path.join(output_dir, ONNX_REPORT_FILE), "w") as f:
        json.dump({"format": "onnx", **asdict(result), "path": ONNX_MODEL_FILE, "input": "pixel_values", "output": "logits"}, f, indent=2)
    if not result.passed:
        logger.error("onnxruntime logits differ from PyTorch's by %.2e (> %.0e).", diff, atol)
    if output_dir == os.path.join(model_dir, ONNX_DIR) and os.path.isfile(os.path.join(model_dir, "run_config.json")):
        write_model_card(model_dir, write_plots=False)  # the card's "ONNX" section
    return result

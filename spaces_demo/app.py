"""Gradio demo of an image classifier fine-tuned with hf_finetune: upload an image, get the top-k labels.

Self-contained on purpose: a Hugging Face Space runs this file with the packages of `requirements.txt` only, so it
imports neither hf_finetune nor anything from this repository. `python -m hf_finetune demo OUTPUT_DIR` loads this same
file by path and calls `build_demo`, so the local demo and the Space share one implementation.

Which model it serves, first match wins:
    1. the `model` argument (`python app.py path/or/hub-id`, or `build_demo(model)`);
    2. the environment variable `HF_FINETUNE_MODEL` (a Space variable);
    3. the first entry of `models:` in this folder's README.md front matter (set by `--push-demo`).
A model is a local output directory of hf_finetune or a Hub model id. Preprocessing is the model's own saved image
processor, through `transformers.pipeline("image-classification")`. The test metrics come from the model card
(`README.md` metadata: model-index), the confusion matrix and example images from the files next to the model.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Set before gradio is imported: no usage analytics or version checks over the network.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

MODEL_ENV = "HF_FINETUNE_MODEL"
HERE = Path(__file__).resolve().parent
DEFAULT_TOP_K = 5
CARD_FILE = "README.md"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
EXAMPLES_DIR = "examples"
TRUNCATION_FIELD = "hf_finetune_truncation"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class ModelFiles:
    """Local paths of the files the demo shows next to the predictions (each may be missing)."""

    card: str | None = None
    confusion_matrix: str | None = None
    examples: list[str] = field(default_factory=list)


def resolve_model(model: str | None = None) -> str:
    """The model to serve: `model`, else `$HF_FINETUNE_MODEL`, else the first `models:` entry of this README.md."""
    if model:
        return model
    if os.environ.get(MODEL_ENV):
        return os.environ[MODEL_ENV]
    readme = HERE / CARD_FILE
    if readme.is_file():
        from huggingface_hub import SpaceCard

        models = SpaceCard.load(readme).data.get("models") or []
        if models:
            return models[0]
    raise SystemExit(
        f"No model to serve: pass a model directory or Hub id (`python app.py runs/my-model`), set ${MODEL_ENV}, or "
        f"list it under `models:` in {readme}."
    )


def find_model_files(model: str) -> ModelFiles:
    """Collects the card, confusion matrix and example images of a local output directory or a Hub model repo."""
    if os.path.isdir(model):
        root = Path(model)
        examples_dir = root / EXAMPLES_DIR
        examples = sorted(str(p) for p in examples_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES) if examples_dir.is_dir() else []
        return ModelFiles(
            card=str(root / CARD_FILE) if (root / CARD_FILE).is_file() else None,
            confusion_matrix=str(root / CONFUSION_MATRIX_FILE) if (root / CONFUSION_MATRIX_FILE).is_file() else None,
            examples=examples,
        )
    from huggingface_hub import HfApi, hf_hub_download

    def download(name: str) -> str | None:
        try:
            return hf_hub_download(model, name)
        except Exception:  # noqa: BLE001 - an optional file that is missing or unreachable is just not shown
            return None

    try:
        names = HfApi().list_repo_files(model)
    except Exception:  # noqa: BLE001 - offline or private: fall back to the files we can fetch one by one
        names = []
    examples = [download(n) for n in sorted(names) if n.startswith(EXAMPLES_DIR + "/") and n.lower().endswith(_IMAGE_SUFFIXES)]
    return ModelFiles(card=download(CARD_FILE), confusion_matrix=download(CONFUSION_MATRIX_FILE), examples=[e for e in examples if e])


def card_metrics(card_path: str | None) -> list[tuple[str, float]]:
    """(name, value) of every eval result in the model card's model-index."""
    if not card_path:
        return []
    from huggingface_hub import ModelCard

    data = ModelCard.load(card_path, ignore_metadata_errors=True).data
    return [(result.metric_name or result.metric_type, result.metric_value) for result in data.eval_results or []]


def metrics_markdown(metrics: list[tuple[str, Any]], model: str) -> str:
    if not metrics:
        return f"No test metrics found in the model card of `{model}`."
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |" for name, value in metrics]
    return "\n".join(lines)


def load_classifier(model: str) -> Any:
    """`pipeline("image-classification")` for `model`.

    A model whose backbone hf_finetune truncated (`--truncate-after`; its config.json has `hf_finetune_truncation`)
    ships `modeling_hf_finetune_truncated.py`, which rebuilds the cut architecture: only for such a model is that file
    run (`trust_remote_code=True`). Serve only models you trust.
    """
    from transformers import AutoConfig, pipeline

    truncated = bool(getattr(AutoConfig.from_pretrained(model), TRUNCATION_FIELD, None))
    return pipeline("image-classification", model=model, trust_remote_code=truncated)


def build_demo(model: str, top_k: int | None = None, title: str | None = None) -> Any:
    """Builds the Gradio app serving `model`.

    Args:
        model (`str`): a local hf_finetune output directory or a Hub model id.
        top_k (`int`, *optional*): labels shown per prediction (default: min(5, number of classes)).
        title (`str`, *optional*): page title (default: the model's name).

    Returns:
        `gradio.Blocks`: the app, not yet launched.
    """
    import gradio as gr

    classifier = load_classifier(model)
    labels = list(classifier.model.config.id2label.values())
    top_k = min(top_k or DEFAULT_TOP_K, len(labels))
    files = find_model_files(model)
    name = title or Path(model.rstrip("/")).name

    def classify(image: Any) -> dict[str, float]:
        if image is None:
            return {}
        from PIL import ImageOps

        # Upright as in training: a phone photo stored sideways carries an EXIF rotate tag (a no-op without one).
        predictions = classifier(ImageOps.exif_transpose(image).convert("RGB"), top_k=top_k)
        return {p["label"]: float(p["score"]) for p in predictions}

    with gr.Blocks(title=name) as demo:
        gr.Markdown(
            f"# {name}\nUpload an image: the model sorts it into one of {len(labels)} classes "
            f"({', '.join(labels)}) and shows its top {top_k} scores."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Image", sources=["upload", "clipboard"], elem_id="input-image")
                button = gr.Button("Classify", variant="primary", elem_id="classify")
                if files.examples:
                    gr.Examples(examples=files.examples, inputs=image, label="Example test images")
            with gr.Column():
                prediction = gr.Label(num_top_classes=top_k, label="Prediction", elem_id="prediction")
        with gr.Accordion("Test metrics (from the model card)", open=True):
            gr.Markdown(metrics_markdown(card_metrics(files.card), model))
            if files.confusion_matrix:
                gr.Image(files.confusion_matrix, label="Confusion matrix (test split)", interactive=False, height=360)
        button.click(classify, inputs=image, outputs=prediction)
        image.upload(classify, inputs=image, outputs=prediction)
    return demo


def launch(demo: Any, host: str | None = None, port: int | None = None, **kwargs: Any) -> Any:
    """Launches `demo` without any call to the internet (no share link, system fonts instead of Google Fonts).

    `host`/`port` default to Gradio's own (`GRADIO_SERVER_NAME`/`GRADIO_SERVER_PORT`, which a Space sets).
    """
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    return demo.launch(server_name=host, server_port=port, share=False, theme=theme, **kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Gradio demo of an hf_finetune image classifier.")
    parser.add_argument("model", nargs="?", default=None, help=f"Output directory or Hub id (default: ${MODEL_ENV}, then README.md `models:`).")
    parser.add_argument("--host", default=None, help="Interface to listen on (default: Gradio's, 127.0.0.1 locally).")
    parser.add_argument("--port", type=int, default=None, help="Port (default: Gradio's, 7860).")
    parser.add_argument("--top-k", type=int, default=None, help=f"Labels shown per prediction (default {DEFAULT_TOP_K}).")
    args = parser.parse_args(argv)
    launch(build_demo(resolve_model(args.model), top_k=args.top_k), host=args.host, port=args.port)


if __name__ == "__main__":
    main()

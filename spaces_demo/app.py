"""Gradio demo of an image classifier fine-tuned with hf_finetune: upload an image or click an example, get the top-k labels.

Self-contained on purpose: a Hugging Face Space runs this file with the packages of `requirements.txt` only, so it
imports neither hf_finetune nor anything from this repository. `python -m hf_finetune demo OUTPUT_DIR` loads this same
file by path and calls `build_demo`, so the local demo and the Space share one implementation.

Which model it serves, first match wins:
    1. the `model` argument (`python app.py path/or/hub-id`, or `build_demo(model)`);
    2. the environment variable `HF_FINETUNE_MODEL` (a Space variable);
    3. the first entry of `models:` in this folder's README.md front matter (set by `--push-demo`).
A model is a local output directory of hf_finetune or a Hub model id. Preprocessing is the model's own saved image
processor, through `transformers.pipeline("image-classification")`. What the page says about the model comes from the
files of the run next to it: the model card (`README.md`: name, base model, dataset, test metrics), `run_config.json`
(base model, dataset and strategy when the card has no Hub id for them), `test_report.json` (test metrics, per-class
results, the linear-probe baseline), `confusion_matrix.png` and `examples/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
# The run folder's file names, restated from hf_finetune/config/files.py: this file cannot import hf_finetune.
CARD_FILE = "README.md"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
TEST_REPORT_FILE = "test_report.json"
RUN_CONFIG_FILE = "run_config.json"
EXAMPLES_DIR = "examples"
TRUNCATION_FIELD = "hf_finetune_truncation"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class ModelFiles:
    """Local paths of the files the demo shows next to the predictions (each may be missing)."""

    card: str | None = None
    confusion_matrix: str | None = None
    examples: list[str] = field(default_factory=list)
    test_report: str | None = None
    run_config: str | None = None


@dataclass(frozen=True)
class RunSummary:
    """What the page says about the served model, read from its card and run records; any part may be unknown.

    Hub models and datasets come with their Hub page (`*_url`); a local one is named by its folder only, so a Space
    never shows where it lay on the training machine.
    """

    name: str
    base_model: str | None = None
    base_model_url: str | None = None
    dataset: str | None = None
    dataset_url: str | None = None
    strategy: str | None = None
    accuracy: float | None = None
    macro_f1: float | None = None
    num_test: int | None = None
    per_class: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    card_link: str = ""  # Markdown: the Hub model page, or which folder's README.md


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
    """Collects the card, run records, confusion matrix and example images of a local output directory or a Hub model."""
    names = (CARD_FILE, CONFUSION_MATRIX_FILE, TEST_REPORT_FILE, RUN_CONFIG_FILE)
    if os.path.isdir(model):
        root = Path(model)
        examples_dir = root / EXAMPLES_DIR
        examples = sorted(str(p) for p in examples_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES) if examples_dir.is_dir() else []
        card, matrix, report, config = (str(root / name) if (root / name).is_file() else None for name in names)
        return ModelFiles(card=card, confusion_matrix=matrix, examples=examples, test_report=report, run_config=config)
    from huggingface_hub import HfApi, hf_hub_download

    def download(name: str) -> str | None:
        try:
            return hf_hub_download(model, name)
        except Exception:  # noqa: BLE001 - an optional file that is missing or unreachable is just not shown
            return None

    try:
        repo_files = HfApi().list_repo_files(model)
    except Exception:  # noqa: BLE001 - offline or private: fall back to the files we can fetch one by one
        repo_files = []
    examples = [download(n) for n in sorted(repo_files) if n.startswith(EXAMPLES_DIR + "/") and n.lower().endswith(_IMAGE_SUFFIXES)]
    card, matrix, report, config = (download(name) for name in names)
    return ModelFiles(card=card, confusion_matrix=matrix, examples=[e for e in examples if e], test_report=report, run_config=config)


def read_json(path: str | None) -> dict[str, Any]:
    """The JSON object in `path`; `{}` when there is no such file (a model trained elsewhere has no run records)."""
    if not path:
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"`{path}` is not valid JSON ({err}): restore it from the finished run, or delete it to serve the demo "
            "without what it records."
        ) from err
    if not isinstance(data, dict):
        raise ValueError(  # noqa: TRY004 - a bad file's content, not a bad argument's type
            f"`{path}` holds a JSON {type(data).__name__}, not an object: restore it from the finished run."
        )
    return data


def card_metrics(card_path: str | None) -> list[tuple[str, float]]:
    """(name, value) of every eval result in the model card's model-index."""
    if not card_path:
        return []
    from huggingface_hub import ModelCard

    data = ModelCard.load(card_path, ignore_metadata_errors=True).data
    return [(result.metric_name or result.metric_type, result.metric_value) for result in data.eval_results or []]


def _hub_url(repo_id: str, kind: str = "") -> str:
    return f"{os.environ.get('HF_ENDPOINT', 'https://huggingface.co').rstrip('/')}/{kind}{repo_id}"


def _first(value: Any) -> str | None:
    """The first name of a card field that may hold one name or a list of them."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return str(value) if value else None


def _folder_name(path: Any) -> str | None:
    return Path(str(path).rstrip("/")).name if path else None


def summarize_run(model: str, files: ModelFiles) -> RunSummary:
    """Reads what the page says about `model` from its card, `run_config.json` and `test_report.json`.

    The card's metadata names Hub base models and datasets; a local base model or image folder is named by its folder
    (the card's model-index dataset name, else `run_config.json`). The test metrics come from `test_report.json`, else
    from the card's model-index.
    """
    from huggingface_hub import ModelCard

    card = ModelCard.load(files.card, ignore_metadata_errors=True).data if files.card else None
    config, report = read_json(files.run_config), read_json(files.test_report)
    base_id, dataset_id = _first(card and card.base_model), _first(card and card.datasets)
    results = (card.eval_results if card else None) or []
    by_type = {result.metric_type: result.metric_value for result in results}
    local = os.path.isdir(model)
    if not files.card:
        card_link = ""
    elif local:
        card_link = f"`{CARD_FILE}` in `{model}`"
    else:
        card_link = f"[{model} on the Hugging Face Hub]({_hub_url(model)})"
    return RunSummary(
        name=((card and card.model_name) or _folder_name(model)) if local else model,
        base_model=base_id or _folder_name((config.get("model") or {}).get("model")),
        base_model_url=_hub_url(base_id) if base_id else None,
        dataset=dataset_id or (results[0].dataset_name if results else None) or _folder_name((config.get("data") or {}).get("dataset")),
        dataset_url=_hub_url(dataset_id, "datasets/") if dataset_id else None,
        strategy=(config.get("finetune") or {}).get("strategy"),
        accuracy=report.get("accuracy", by_type.get("accuracy")),
        macro_f1=report.get("macro_f1", by_type.get("f1")),
        num_test=report.get("num_samples"),
        per_class=report.get("per_class") or {},
        baseline=report.get("baseline") or None,
        card_link=card_link,
    )


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "–"


def _named(name: str, url: str | None) -> str:
    return f"[`{name}`]({url})" if url else f"`{name}`"


def header_markdown(summary: RunSummary, labels: list[str], top_k: int) -> str:
    """The page's title block: the model, what it was fine-tuned from and on, its test metrics and the baseline's."""
    # A linear probe trains no backbone weight: "trained" would be the honest verb there, "fine-tuned" is not.
    probe = summary.strategy == "linear_probe"
    origin = "A linear probe" if probe else "Fine-tuned"
    if summary.base_model:
        origin += f" {'on the frozen' if probe else 'from'} {_named(summary.base_model, summary.base_model_url)}"
    if summary.dataset:
        origin += f" {'trained on' if probe else 'on'} {_named(summary.dataset, summary.dataset_url)}"
    origin += " with hf_finetune" + (f" (strategy `{summary.strategy}`)." if summary.strategy else ".")
    lines = [f"# {summary.name}", origin]
    if summary.accuracy is not None or summary.macro_f1 is not None:
        scores = f"**Test accuracy {_fmt(summary.accuracy)} · macro-F1 {_fmt(summary.macro_f1)}**"
        scores += f" on {summary.num_test} held-out test images" if summary.num_test else ""
        if summary.baseline:
            scores += (
                f"; linear-probe baseline: accuracy {_fmt(summary.baseline.get('accuracy'))} · "
                f"macro-F1 {_fmt(summary.baseline.get('macro_f1'))}"
            )
        lines.append(scores + ".")
    lines.append(
        f"Upload an image or click an example: the model sorts it into one of {len(labels)} classes "
        f"({', '.join(f'`{label}`' for label in labels)}) and shows its top {top_k} scores. "
        + (f"Model card: {summary.card_link}." if summary.card_link else "This model has no model card.")
    )
    return "\n\n".join(lines)


def metrics_markdown(summary: RunSummary) -> str:
    """Test accuracy and macro-F1 of the served model, beside the linear-probe baseline's when the run recorded one."""
    if summary.accuracy is None and summary.macro_f1 is None:
        return f"No test metrics found: `{summary.name}` has neither a {TEST_REPORT_FILE} nor metrics in its model card."
    rows = [("accuracy", "accuracy"), ("macro-F1", "macro_f1")]
    if not summary.baseline:
        table = ["| test metric | this model |", "|---|---|"]
        table += [f"| {name} | {_fmt(getattr(summary, key))} |" for name, key in rows]
        return "\n".join(table) + "\n\nThis run recorded no linear-probe baseline."
    table = ["| test metric | this model | linear-probe baseline |", "|---|---|---|"]
    table += [f"| {name} | {_fmt(getattr(summary, key))} | {_fmt(summary.baseline.get(key))} |" for name, key in rows]
    method = summary.baseline.get("method") or "a linear probe on the frozen backbone's features"
    note = f"\n\nThe baseline is {method}, scored on the same test images."
    if summary.strategy == "linear_probe":
        note += " This model *is* that probe (strategy `linear_probe`), so the two columns agree."
    return "\n".join(table) + note


def per_class_markdown(summary: RunSummary) -> str:
    """Precision, recall, F1 and support of each class on the test split (and the baseline's F1 when recorded)."""
    if not summary.per_class:
        return f"No per-class results: `{summary.name}` has no {TEST_REPORT_FILE}."
    baseline = (summary.baseline or {}).get("per_class") or {}
    header = "| class | precision | recall | F1 | support |" + (" baseline F1 |" if baseline else "")
    lines = [header, "|---" * header.count(" |") + "|"]
    for label, m in summary.per_class.items():
        row = f"| {label} | {_fmt(m.get('precision'))} | {_fmt(m.get('recall'))} | {_fmt(m.get('f1'))} | {m.get('support', '–')} |"
        lines.append(row + (f" {_fmt((baseline.get(label) or {}).get('f1'))} |" if baseline else ""))
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
        title (`str`, *optional*): page title (default: the model card's model name).

    Returns:
        `gradio.Blocks`: the app, not yet launched.
    """
    import gradio as gr

    if top_k is not None and top_k < 1:
        raise ValueError(f"`top_k` must be at least 1, got {top_k}: pass --top-k 1 or more (or leave it out for up to 5).")
    files = find_model_files(model)
    summary = summarize_run(model, files)
    if title:
        summary = dataclasses.replace(summary, name=title)
    classifier = load_classifier(model)
    labels = list(classifier.model.config.id2label.values())
    top_k = min(top_k or DEFAULT_TOP_K, len(labels))

    def classify(image: Any) -> dict[str, float]:
        if image is None:
            return {}
        from PIL import ImageOps

        # Upright as in training: a phone photo stored sideways carries an EXIF rotate tag (a no-op without one).
        predictions = classifier(ImageOps.exif_transpose(image).convert("RGB"), top_k=top_k)
        return {p["label"]: float(p["score"]) for p in predictions}

    # The browser tab: which model, from what, on what.
    page_title = " · ".join(part for part in (summary.name, summary.base_model, summary.dataset) if part)
    with gr.Blocks(title=page_title) as demo:
        gr.Markdown(header_markdown(summary, labels, top_k), elem_id="header")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Image", sources=["upload", "clipboard"], elem_id="input-image", height=300)
                button = gr.Button("Classify", variant="primary", elem_id="classify")
            with gr.Column():
                prediction = gr.Label(num_top_classes=top_k, label="Prediction", elem_id="prediction")
        if files.examples:
            # Clicking one loads it into the input and classifies it (live, not from a cache written at start-up).
            gr.Examples(
                examples=files.examples, inputs=image, outputs=prediction, fn=classify, run_on_click=True,
                cache_examples=False, label="Example test images: click one to classify it", elem_id="examples",
            )
        with gr.Accordion("Test results (from the run's test_report.json and model card)", open=True), gr.Row():
            with gr.Column(scale=3):
                gr.Markdown(metrics_markdown(summary), elem_id="test-metrics")
                gr.Markdown(per_class_markdown(summary), elem_id="per-class")
            if files.confusion_matrix:
                with gr.Column(scale=2):
                    # No label badge: it would cover the plot's own title.
                    gr.Image(
                        files.confusion_matrix, label="Confusion matrix (test split)", show_label=False,
                        interactive=False, height=360, buttons=["fullscreen", "download"], elem_id="confusion-matrix",
                    )
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

"""The Gradio demo: a pushable Space folder, model resolution, and a headless-Chromium test of a prediction."""

from __future__ import annotations

import ast
import os
import shutil
import socket
from pathlib import Path

import pytest
from huggingface_hub import SpaceCard
from PIL import Image

from hf_finetune.cli.main import main
from hf_finetune.sharing.demo import SPACES_DEMO_DIR, load_app

CHROMIUM = "/usr/bin/chromium"
# Headless, and nothing that reaches the network on its own (updates, sync, QUIC probes, first-run pages).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
]


def test_spaces_demo_folder_can_be_pushed_as_a_space_as_is():
    assert sorted(p.name for p in SPACES_DEMO_DIR.iterdir() if p.is_file()) == ["README.md", "app.py", "requirements.txt"]
    data = SpaceCard.load(SPACES_DEMO_DIR / "README.md").data
    assert data.sdk == "gradio" and data.app_file == "app.py" and data.sdk_version
    requirements = (SPACES_DEMO_DIR / "requirements.txt").read_text()
    for package in ("transformers", "torch", "timm", "huggingface-hub"):
        assert package in requirements
    # Self-contained: a Space has no hf_finetune installed.
    tree = ast.parse((SPACES_DEMO_DIR / "app.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert "hf_finetune" not in imported
    # ... and it runs as a script from anywhere (a Space runs `python app.py`).
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(SPACES_DEMO_DIR / "app.py"), "--help"], capture_output=True, text=True, cwd="/", timeout=60)
    assert result.returncode == 0 and "HF_FINETUNE_MODEL" in result.stdout


def test_example_images_are_spread_over_classes_from_decoded_or_undecoded_images(image_folder, tmp_path):
    import datasets

    from hf_finetune import DataArguments, load_splits
    from hf_finetune.sharing.demo import save_example_images

    splits = load_splits(DataArguments(dataset=str(image_folder)), seed=0)
    for name, split in (("decoded", splits.test), ("undecoded", splits.test.cast_column("image", datasets.Image(decode=False)))):
        paths = save_example_images(split, splits.labels, str(tmp_path / name), 4)
        assert len(paths) == 4 and {Path(p).name.split("_")[0] for p in paths} == {"cat", "dog", "fish"}
        assert all(Image.open(p).mode == "RGB" for p in paths)
    assert save_example_images(splits.test, splits.labels, str(tmp_path / "none"), 0) == []
    assert not (tmp_path / "none").exists()


def test_model_resolution_order(monkeypatch, tmp_path):
    app = load_app()
    monkeypatch.setenv(app.MODEL_ENV, "env/model")
    assert app.resolve_model("arg/model") == "arg/model"
    assert app.resolve_model() == "env/model"
    monkeypatch.delenv(app.MODEL_ENV)
    (tmp_path / "README.md").write_text("---\nsdk: gradio\napp_file: app.py\nmodels:\n- me/pushed-model\n---\n")
    monkeypatch.setattr(app, "HERE", tmp_path)
    assert app.resolve_model() == "me/pushed-model"
    (tmp_path / "README.md").write_text("---\nsdk: gradio\nmodels: []\n---\n")
    with pytest.raises(SystemExit, match="No model to serve"):
        app.resolve_model()


def test_demo_reads_metrics_confusion_matrix_and_examples_of_a_run(finished_run_dir):
    import json

    app = load_app()
    files = app.find_model_files(str(finished_run_dir))
    assert files.confusion_matrix.endswith("confusion_matrix.png") and files.card.endswith("README.md")
    assert len(files.examples) == 4
    report = json.loads((finished_run_dir / "test_report.json").read_text())
    metrics = dict(app.card_metrics(files.card))
    assert metrics == {"Test accuracy": pytest.approx(report["accuracy"]), "Test macro-F1": pytest.approx(report["macro_f1"])}


def test_demo_command_refuses_a_directory_without_a_model(tmp_path, capsys):
    assert main(["demo", str(tmp_path)]) == 2
    assert f"`{tmp_path}` holds no config.json" in capsys.readouterr().err


def test_demo_command_serves_the_run_on_localhost(finished_run_dir, monkeypatch):
    app = load_app()
    launched = {}
    monkeypatch.setattr(app, "launch", lambda demo, host=None, port=None: launched.update(demo=demo, host=host, port=port))
    assert main(["demo", str(finished_run_dir), "--port", "7999", "--top-k", "2"]) == 0
    assert launched["host"] == "127.0.0.1" and launched["port"] == 7999
    assert type(launched["demo"]).__name__ == "Blocks"


def test_demo_fetches_card_matrix_and_examples_of_a_hub_model(finished_run_dir, monkeypatch):
    import huggingface_hub

    app = load_app()
    hub_files = {
        "README.md": finished_run_dir / "README.md",
        "confusion_matrix.png": finished_run_dir / "confusion_matrix.png",
        **{f"examples/{p.name}": p for p in (finished_run_dir / "examples").iterdir()},
    }
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id: [*hub_files, "config.json"])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, name: str(hub_files[name]))
    files = app.find_model_files("me/tiny-vit")
    assert files.card == str(finished_run_dir / "README.md")
    assert files.confusion_matrix == str(finished_run_dir / "confusion_matrix.png")
    assert len(files.examples) == 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch_chromium(playwright):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install it with `apt-get update && apt-get install -y chromium`.")
    try:
        return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    except Exception as err:  # noqa: BLE001 - any launch failure means this machine cannot run the browser test
        pytest.skip(f"Chromium at {CHROMIUM} cannot be launched here: {err}")


def test_browser_upload_an_image_and_see_the_predicted_label(finished_run_dir, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    from transformers import pipeline

    # A test image from the run, scaled up so the screenshot shows it; the expected label is the pipeline's own.
    example = sorted((finished_run_dir / "examples").glob("dog_*.png"))[0]
    image_path = tmp_path / "upload.png"
    Image.open(example).resize((256, 256), Image.NEAREST).save(image_path)
    expected = pipeline("image-classification", model=str(finished_run_dir))(Image.open(image_path), top_k=1)[0]["label"]

    app = load_app()
    demo = app.build_demo(str(finished_run_dir))
    port = _free_port()
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    screenshot = tmp_path / "demo_after_prediction.png"
    try:
        with sync_api.sync_playwright() as playwright:
            browser = _launch_chromium(playwright)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            page.wait_for_selector("#input-image input[type=file]", state="attached", timeout=60_000)
            page.set_input_files("#input-image input[type=file]", str(image_path))  # an upload classifies at once
            # Done = the label and its scores are shown and Gradio's progress overlay has faded out completely.
            page.wait_for_function(
                """label => { const root = document.querySelector('#prediction');
                              if (!root) return false;
                              const text = root.innerText;
                              const busy = [...root.querySelectorAll('.wrap')]
                                  .some(e => parseFloat(getComputedStyle(e).opacity) > 0.001);
                              return text.includes(label) && text.includes('%') && !text.includes('processing') && !busy; }""",
                arg=expected,
                timeout=60_000,
            )
            prediction = page.inner_text("#prediction")
            page.screenshot(path=str(screenshot), full_page=True)
            page_text = page.inner_text("body")
            browser.close()
    finally:
        demo.close()
    # gr.Label: the top label as a heading, then one line per class with its score.
    lines = [line.strip() for line in prediction.splitlines() if line.strip()]
    assert lines[:2] == ["Prediction", expected]
    assert {"cat", "dog", "fish"} <= set(lines) and sum(line.endswith("%") for line in lines) == 3
    assert "Test accuracy" in page_text and "Confusion matrix" in page_text
    # The page fetched nothing from the internet (no fonts, analytics or CDN scripts).
    assert requested and all(url.startswith((f"http://127.0.0.1:{port}/", "data:", "blob:")) for url in requested), [
        url for url in requested if not url.startswith(f"http://127.0.0.1:{port}/")
    ]
    assert screenshot.stat().st_size > 20_000
    # Kept for a person to look at: copy it out of pytest's tmp dir when asked to.
    if os.environ.get("HFF_DEMO_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["HFF_DEMO_SCREENSHOT"])

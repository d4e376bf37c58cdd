"""The Gradio demo: a pushable Space folder, model resolution, and a headless-Chromium test of a prediction."""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
from pathlib import Path

import pytest
from conftest import copy_run
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

    result = subprocess.run([sys.executable, str(SPACES_DEMO_DIR / "app.py"), "--help"], check=False, capture_output=True, text=True, cwd="/", timeout=60)
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


def _with_baseline(run_dir: Path, destination: Path) -> Path:
    """A copy of the run whose test_report.json records a linear-probe baseline (the fixture runs with --baseline false),
    with values that cannot be confused with the model's own."""
    run = copy_run(run_dir, destination)
    report = json.loads((run / "test_report.json").read_text())
    report["baseline"] = {
        "accuracy": 0.5123, "macro_f1": 0.4321, "method": "logistic regression on frozen features",
        "per_class": {label: {"precision": 0.5, "recall": 0.5, "f1": 0.1111 * (i + 1), "support": m["support"]}
                      for i, (label, m) in enumerate(report["per_class"].items())},
    }
    (run / "test_report.json").write_text(json.dumps(report))
    return run


def test_demo_reads_metrics_confusion_matrix_and_examples_of_a_run(finished_run_dir, tiny_checkpoint):
    app = load_app()
    files = app.find_model_files(str(finished_run_dir))
    assert files.confusion_matrix.endswith("confusion_matrix.png") and files.card.endswith("README.md")
    assert files.test_report.endswith("test_report.json") and files.run_config.endswith("run_config.json")
    assert len(files.examples) == 4
    report = json.loads((finished_run_dir / "test_report.json").read_text())
    metrics = dict(app.card_metrics(files.card))
    assert metrics == {"Test accuracy": pytest.approx(report["accuracy"]), "Test macro-F1": pytest.approx(report["macro_f1"])}

    summary = app.summarize_run(str(finished_run_dir), files)
    # A local base model and image folder are named by their folder, never by where they lay on the training machine.
    assert summary.name == finished_run_dir.name and summary.base_model == Path(tiny_checkpoint("vit")).name
    assert summary.dataset == "images" and summary.base_model_url is None and summary.dataset_url is None
    assert summary.strategy == "head_then_unfreeze" and summary.num_test == report["num_samples"]
    assert summary.macro_f1 == report["macro_f1"] and summary.per_class == report["per_class"]
    assert summary.baseline is None and summary.card_link == f"`README.md` in `{finished_run_dir}`"
    header = app.header_markdown(summary, report["labels"], 3)
    assert header.startswith(f"# {finished_run_dir.name}\n")
    assert f"from `{summary.base_model}` on `images`" in header and f"macro-F1 {report['macro_f1']:.4f}" in header
    assert "baseline" not in header and "This run recorded no linear-probe baseline." in app.metrics_markdown(summary)
    rows = app.per_class_markdown(summary).splitlines()
    assert rows[0] == "| class | precision | recall | F1 | support |" and len(rows) == 2 + len(report["labels"])
    cat = report["per_class"]["cat"]
    assert rows[2] == f"| cat | {cat['precision']:.4f} | {cat['recall']:.4f} | {cat['f1']:.4f} | {cat['support']} |"


def test_demo_shows_the_linear_probe_baseline_a_run_recorded(finished_run_dir, tmp_path):
    app = load_app()
    run = _with_baseline(finished_run_dir, tmp_path / "run")
    summary = app.summarize_run(str(run), app.find_model_files(str(run)))
    assert summary.baseline["macro_f1"] == 0.4321
    assert "linear-probe baseline: accuracy 0.5123 · macro-F1 0.4321" in app.header_markdown(summary, ["cat", "dog", "fish"], 3)
    metrics = app.metrics_markdown(summary).splitlines()
    assert metrics[0] == "| test metric | this model | linear-probe baseline |"
    assert metrics[3] == f"| macro-F1 | {summary.macro_f1:.4f} | 0.4321 |"
    assert "The baseline is logistic regression on frozen features" in app.metrics_markdown(summary)
    rows = app.per_class_markdown(summary).splitlines()
    assert rows[0].endswith("| baseline F1 |") and rows[3].endswith("| 0.2222 |")  # dog, the second class


def test_demo_refuses_unreadable_run_records_and_bad_arguments(finished_run_dir, tmp_path, capsys):
    run = copy_run(finished_run_dir, tmp_path / "run")
    (run / "test_report.json").write_text('{"accuracy": 0.9,')
    assert main(["demo", str(run)]) == 2
    assert f"`{run / 'test_report.json'}` is not valid JSON" in capsys.readouterr().err
    (run / "test_report.json").write_text("[0.9]")
    assert main(["demo", str(run)]) == 2
    assert "holds a JSON list, not an object" in capsys.readouterr().err
    assert main(["demo", str(finished_run_dir), "--top-k", "0"]) == 2
    assert "`top_k` must be at least 1, got 0: pass --top-k 1 or more" in capsys.readouterr().err
    assert main(["demo", str(tmp_path / "no_such_run")]) == 2
    assert f"`{tmp_path / 'no_such_run'}` is neither a folder on this machine nor a Hub model id" in capsys.readouterr().err


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
        "test_report.json": finished_run_dir / "test_report.json",
        "run_config.json": finished_run_dir / "run_config.json",
        **{f"examples/{p.name}": p for p in (finished_run_dir / "examples").iterdir()},
    }
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id: [*hub_files, "config.json"])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, name: str(hub_files[name]))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    files = app.find_model_files("me/tiny-vit")
    assert files.card == str(finished_run_dir / "README.md")
    assert files.confusion_matrix == str(finished_run_dir / "confusion_matrix.png")
    assert len(files.examples) == 4
    summary = app.summarize_run("me/tiny-vit", files)
    # A Hub model is named by its repo id and its card is linked on the Hub.
    assert summary.name == "me/tiny-vit" and summary.per_class and summary.dataset == "images"
    assert summary.card_link == "[me/tiny-vit on the Hugging Face Hub](https://huggingface.co/me/tiny-vit)"


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


# Done = `label` is the top label (the line under the heading "Prediction"; a previous prediction still lists it
# further down), the scores are shown and Gradio's progress overlay has faded out completely.
_PREDICTION_SHOWN = """label => { const root = document.querySelector('#prediction');
                                 if (!root) return false;
                                 const lines = root.innerText.split('\\n').map(l => l.trim()).filter(l => l);
                                 const busy = [...root.querySelectorAll('.wrap')]
                                     .some(e => parseFloat(getComputedStyle(e).opacity) > 0.001);
                                 return lines[1] === label && lines.some(l => l.endsWith('%'))
                                     && !lines.some(l => l.includes('processing')) && !busy; }"""


class ServedDemo:
    """The demo of a finished run (with a recorded baseline) served on localhost, and one headless Chromium page."""

    def __init__(self, run: Path, port: int, page) -> None:
        self.run, self.port, self.page = run, port, page
        self.requested: list[str] = []
        page.on("request", lambda request: self.requested.append(request.url))

    def open(self):
        """A fresh page load: no prediction and no image yet."""
        self.page.goto(f"http://127.0.0.1:{self.port}/", wait_until="domcontentloaded")
        self.page.wait_for_selector("#input-image input[type=file]", state="attached", timeout=60_000)
        return self.page

    def prediction_lines(self, expected: str) -> list[str]:
        """The lines of the prediction once `expected` is its top label (a test failure showing them if it never is)."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self.page.wait_for_function(_PREDICTION_SHOWN, arg=expected, timeout=60_000)
        except PlaywrightTimeout:
            pytest.fail(f"the demo never showed {expected!r} as its top label; it shows {self.page.inner_text('#prediction')!r}")
        return [line.strip() for line in self.page.inner_text("#prediction").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def served_demo(finished_run_dir, tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    run = _with_baseline(finished_run_dir, tmp_path_factory.mktemp("served") / "run")
    app = load_app()
    demo = app.build_demo(str(run))
    port = _free_port()
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = _launch_chromium(playwright)
            served = ServedDemo(run, port, browser.new_page(viewport={"width": 1280, "height": 1000}))
            yield served
            browser.close()
    finally:
        demo.close()
    # The page fetched nothing from the internet (no fonts, analytics or CDN scripts).
    assert served.requested and all(url.startswith((f"http://127.0.0.1:{port}/", "data:", "blob:")) for url in served.requested), [
        url for url in served.requested if not url.startswith(f"http://127.0.0.1:{port}/")
    ]


def test_browser_click_an_example_and_see_its_predicted_label(served_demo, tmp_path):
    from transformers import pipeline

    classify = pipeline("image-classification", model=str(served_demo.run))
    examples = sorted((served_demo.run / "examples").iterdir())  # the demo's order: app.find_model_files sorts them
    expected = [classify(Image.open(path), top_k=1)[0]["label"] for path in examples]
    # The first example, then one the model labels differently (if any): each click classifies the clicked image.
    picks = [0] + [i for i, label in enumerate(expected) if label != expected[0]][:1]
    page = served_demo.open()
    assert page.inner_text("#prediction").strip() in ("Prediction", "")  # nothing classified before the click
    for index in picks:
        page.locator("#examples button.gallery-item").nth(index).click()
        lines = served_demo.prediction_lines(expected[index])
        # gr.Label: the top label as a heading, then one line per class with its score.
        assert lines[:2] == ["Prediction", expected[index]], (examples[index].name, lines)
        assert sum(line.endswith("%") for line in lines) == 3
    screenshot = tmp_path / "demo_after_example_click.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 20_000
    # Kept for a person to look at: copy it out of pytest's tmp dir when asked to.
    if os.environ.get("HFF_DEMO_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["HFF_DEMO_SCREENSHOT"])


def test_browser_page_is_titled_from_the_card_with_per_class_table_and_baseline(served_demo, finished_run_dir, tiny_checkpoint):
    name = finished_run_dir.name  # the model name the card records (the copy served here sits in another folder)
    report = json.loads((served_demo.run / "test_report.json").read_text())
    page = served_demo.open()
    page.wait_for_selector("#per-class table", timeout=60_000)
    header = page.inner_text("#header")
    assert header.splitlines()[0] == name
    assert f"Fine-tuned from {Path(tiny_checkpoint('vit')).name} on images with hf_finetune" in header
    assert f"Test accuracy {report['accuracy']:.4f} · macro-F1 {report['macro_f1']:.4f}" in header
    assert "linear-probe baseline: accuracy 0.5123 · macro-F1 0.4321" in header
    assert f"Model card: README.md in {served_demo.run}" in header
    assert page.title() == f"{name} · {Path(tiny_checkpoint('vit')).name} · images"
    rows = [[cell.strip() for cell in row.split("\t")] for row in page.inner_text("#per-class table").splitlines() if row.strip()]
    assert rows[0] == ["class", "precision", "recall", "F1", "support", "baseline F1"]
    assert [row[0] for row in rows[1:]] == report["labels"]
    for row, (label, m) in zip(rows[1:], report["per_class"].items()):
        assert row[1:5] == [f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", str(m["support"])], label
    assert "0.4321" in page.inner_text("#test-metrics")
    assert page.locator("#confusion-matrix img").count() == 1


def test_browser_upload_an_image_and_see_the_predicted_label(served_demo, tmp_path):
    from transformers import pipeline

    # A test image from the run, scaled up; the expected label is the pipeline's own.
    example = min((served_demo.run / "examples").glob("dog_*.png"))
    image_path = tmp_path / "upload.png"
    Image.open(example).resize((256, 256), Image.NEAREST).save(image_path)
    expected = pipeline("image-classification", model=str(served_demo.run))(Image.open(image_path), top_k=1)[0]["label"]
    page = served_demo.open()
    page.set_input_files("#input-image input[type=file]", str(image_path))  # an upload classifies at once
    lines = served_demo.prediction_lines(expected)
    assert lines[:2] == ["Prediction", expected]
    assert {"cat", "dog", "fish"} <= set(lines) and sum(line.endswith("%") for line in lines) == 3

"""The Gradio demo, locally: `python -m hf_finetune demo OUTPUT_DIR`.

The app itself is `space/app.py` of this sub-package (package data, with the Space's `requirements.txt` and
`README.md`; the repository's `spaces_demo/` is the same folder, ready to push), self-contained so that the same file
runs on a Hugging Face Space (where hf_finetune is not installed). This module loads it by path (`load_app`) so the
CLI, the tests and the Space share one implementation, and picks the example images a run ships for it
(`save_example_images`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

from PIL import Image

from hf_finetune.config.files import EXAMPLES_DIR
from hf_finetune.data.images import to_rgb

logger = logging.getLogger(__name__)

# Package data (pyproject.toml), so a wheel install finds the app as a source checkout does. pip installs packages as
# plain files, and the app is imported by file path: the resource is used as one.
SPACES_DEMO_DIR = Path(str(resources.files("hf_finetune.sharing") / "space"))

_MODULE_NAME = "hf_finetune_spaces_demo_app"


def load_app() -> ModuleType:
    """Imports the packaged Space app (`SPACES_DEMO_DIR/app.py`) by path, once per process."""
    if _MODULE_NAME in sys.modules:
        return sys.modules[_MODULE_NAME]
    path = SPACES_DEMO_DIR / "app.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"The demo app {str(path)!r} is missing from the installed hf_finetune: reinstall it "
            "(`pip install --force-reinstall hf_finetune`)."
        )
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


def build_demo(model: str, top_k: int | None = None, title: str | None = None) -> Any:
    """The demo's `gradio.Blocks` for `model` (an output directory or a Hub id): titled from its model card and run
    records (base model, dataset, test metrics, the linear-probe baseline), with the per-class test results, examples
    that classify on click and a link to the card. See the Space app's `build_demo` for the arguments."""
    return load_app().build_demo(model, top_k=top_k, title=title)


def save_example_images(dataset: Any, labels: list[str], output_dir: str, count: int) -> list[str]:
    """Copies up to `count` images of `dataset`, spread over the classes (round robin), to `output_dir/examples/`.

    Args:
        dataset (`datasets.Dataset`): a split with `image` and `label` columns (transforms are bypassed).
        labels (`list[str]`): class names by id (used in the file names).
        output_dir (`str`): the run's output directory.
        count (`int`): how many images at most; 0 writes nothing.

    Returns:
        `list[str]`: the written paths.
    """
    import datasets

    if count <= 0 or len(dataset) == 0:
        return []
    raw = dataset.with_format(None)  # the stored images, not the training/eval transform's tensors
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(raw["label"]):
        by_class.setdefault(int(label), []).append(index)
    picked: list[int] = []
    round_index = 0
    while len(picked) < count and any(round_index < len(v) for v in by_class.values()):
        for label in sorted(by_class):
            if round_index < len(by_class[label]) and len(picked) < count:
                picked.append(by_class[label][round_index])
        round_index += 1
    folder = os.path.join(output_dir, EXAMPLES_DIR)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for index in picked:
        example = raw[index]
        image = example["image"]
        if not isinstance(image, Image.Image):  # an undecoded {"path", "bytes"} reference
            image = datasets.Image().decode_example(image)
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in labels[int(example["label"])])
        path = os.path.join(folder, f"{name}_{index}.png")
        to_rgb(image).save(path)
        paths.append(path)
    return paths

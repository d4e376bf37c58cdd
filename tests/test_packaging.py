"""Packaging: a wheel install (not editable) is complete, and the repository's ready-to-use folders are the packaged
copies.

The model card template and the Space app are package data (`hf_finetune/sharing/templates/`, `.../space/`); the
top-level `model_card_templates/` and `spaces_demo/` stay for people who read or push them from a checkout.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from cli_runs import REPO, cli_env
from conftest import FAST_RUN_FLAGS, write_image_folder
from hf_finetune.sharing.demo import SPACES_DEMO_DIR
from hf_finetune.sharing.model_card import TEMPLATE_DIR

# Top-level folder of the repository -> the packaged folder the library reads.
MIRRORS = {REPO / "model_card_templates": TEMPLATE_DIR, REPO / "spaces_demo": SPACES_DEMO_DIR}

# Run inside the wheel's venv: where hf_finetune and the demo app come from, then `python -m hf_finetune demo OUT`
# through the real CLI with Gradio's `launch` replaced (a test serves nothing).
_DEMO_PROBE = """
import sys
import hf_finetune
from hf_finetune.cli.main import main
from hf_finetune.sharing.demo import load_app
app = load_app()
app.launch = lambda demo, host=None, port=None: print("demo built:", type(demo).__name__)
print("package:", hf_finetune.__file__)
print("app:", app.__file__)
sys.exit(main(["demo", sys.argv[1]]))
"""


def test_top_level_folders_are_byte_identical_to_the_packaged_copies():
    for top, packaged in MIRRORS.items():
        names = sorted(p.name for p in top.iterdir() if p.is_file())
        assert names == sorted(p.name for p in packaged.iterdir() if p.is_file()), (top, packaged)
        for name in names:
            assert (top / name).read_bytes() == (packaged / name).read_bytes(), (
                f"{top / name} and {packaged / name} differ: edit one and copy it over the other"
            )


def _build_wheel(tmp_path: Path) -> Path:
    """`pip wheel` of a copy of the sources (the build leaves no build/ or egg-info in the repository)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "hf_finetune", source / "hf_finetune", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "wheels"), str(source)]
    if importlib.util.find_spec("setuptools"):
        command.insert(4, "--no-build-isolation")  # build with this venv's setuptools: nothing to download
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp_path / "wheels").glob("hf_finetune-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new venv with only `wheel` installed in it; its dependencies are this venv's, seen through a `.pth` file.

    A path line in a `.pth` file is added to sys.path, but the `.pth` files in that folder are not run: this venv's
    editable install of hf_finetune (a `.pth` import hook) stays invisible. pip comes from this venv too, hence
    `--without-pip` (no ensurepip) and `--ignore-installed` (pip must not count, or touch, the editable install).
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True
    ).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(site_packages) / "_dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "--quiet", str(wheel)],
        check=True, capture_output=True, timeout=120,
    )
    return python


def test_a_wheel_install_writes_the_model_card_and_finds_the_demo_app(tmp_path, tiny_checkpoint):
    python = _fresh_venv(tmp_path, _build_wheel(tmp_path))
    env = cli_env()
    del env["PYTHONPATH"]  # nothing of the repository on the path ...
    work = tmp_path / "work"  # ... nor as the current directory
    folder = write_image_folder(work / "images", per_class=10)
    out = work / "out"
    run = subprocess.run(
        [python, "-m", "hf_finetune", "--model", tiny_checkpoint("vit"), "--dataset", str(folder), "--output-dir", str(out), *FAST_RUN_FLAGS],
        cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "model-index" in card and "Test accuracy" in card

    demo = subprocess.run(
        [python, "-c", _DEMO_PROBE, str(out)], cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in demo.stdout.splitlines() if ": " in line)
    installed = Path(lines["package"]).resolve()
    assert installed.is_relative_to((tmp_path / "venv").resolve()) and not installed.is_relative_to(REPO)
    assert Path(lines["app"]).resolve() == installed.parent / "sharing" / "space" / "app.py"
    assert lines["demo built"] == "Blocks"

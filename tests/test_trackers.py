"""`--report-to`: every tracker gets each optimizer group's LR, the freeze events, the train/validation gap and, at the
end, the test metrics beside the linear-probe baseline's, all through the Trainer's own log (read back here from the
TensorBoard event files); a tracker transformers cannot use is refused before anything loads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import FAST_RUN_FLAGS, write_image_folder
from helpers import assert_mentions, parse_time_error
from hf_finetune.cli.main import main

# FAST_RUN_FLAGS without `--baseline false`: the baseline's test metrics must reach the trackers too.
_FLAGS = [flag for pair in zip(FAST_RUN_FLAGS[::2], FAST_RUN_FLAGS[1::2]) if pair[0] != "--baseline" for flag in pair]


def _scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of every TensorBoard event file under `out`, as `tag -> [(step, value), ...]`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, list[tuple[int, float]]] = {}
    files = sorted(out.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {out}"
    for path in files:
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            series.setdefault(tag, []).extend((event.step, event.value) for event in events.Scalars(tag))
    return series


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory, tiny_checkpoint):
    pytest.importorskip("tensorboard")
    root = tmp_path_factory.mktemp("trackers")
    folder = write_image_folder(root / "images", per_class=10)
    out = root / "out"
    argv = ["--model", tiny_checkpoint("vit"), "--dataset", str(folder), "--output-dir", str(out), *_FLAGS,
            "--early-stopping-patience", "0", "--report-to", "tensorboard"]
    assert main(argv) == 0
    return out, _scalars(out)


def test_every_parameter_group_has_its_own_lr_series(tensorboard_run):
    out, scalars = tensorboard_run
    groups = json.loads((out / "schedule.json").read_text())["lr_history"]["groups"]
    stages = [stage["name"] for stage in json.loads((out / "run_config.json").read_text())["stages"]]
    assert len(groups) > 2
    assert {tag.removeprefix("train/lr/") for tag in scalars if tag.startswith("train/lr/")} == set(groups)
    assert {name.split("/")[0] for name in groups} == set(stages)  # every stage's groups, the frozen ones too
    # Sampled where the Trainer samples its own `learning_rate` (the head's, group 0), so the head's series matches it.
    head = next(name for name in groups if name.startswith(stages[-1] + "/"))
    assert [step for step, _ in scalars[f"train/lr/{head}"]] == [step for step, _ in scalars["train/learning_rate"]]
    assert [lr for _, lr in scalars[f"train/lr/{head}"]] == pytest.approx([lr for _, lr in scalars["train/learning_rate"]])
    # A group's LR is 0 exactly while its stage is frozen (an event at step s applies from step s + 1 on).
    events = json.loads((out / "run_config.json").read_text())["freeze_events"]
    for name in groups:
        stage = name.split("/")[0]
        for step, lr in scalars[f"train/lr/{name}"]:
            trainable = [e["trainable"] for e in events if e["step"] < step][-1] + [stages[-1]]
            assert (lr > 0) == (stage in trainable), (name, step, lr)


def test_freeze_events_and_gap_reach_the_tracker_at_their_steps(tensorboard_run):
    out, scalars = tensorboard_run
    record = json.loads((out / "run_config.json").read_text())
    # The start (head only), then one unfreeze per epoch; events of one step (the start and an unfreeze at epoch 0)
    # reach the tracker as one point.
    trainable: dict[int, float] = {}
    unfrozen: dict[int, float] = {}
    for event in record["freeze_events"]:
        trainable[event["step"]] = float(len(event["trainable"]))
        unfrozen[event["step"]] = unfrozen.get(event["step"], 0.0) + len(event.get("unfrozen", []))
    assert len(trainable) >= 3 and list(trainable.values()) == sorted(trainable.values())
    assert scalars["train/stages/trainable"] == list(trainable.items())
    assert scalars["train/stages/unfrozen"] == list(unfrozen.items())
    epochs = record["gap_monitor"]["epochs"]
    gaps = [value for _, value in scalars["train/gap/macro_f1"]]
    assert gaps == pytest.approx([epoch["gap_macro_f1"] for epoch in epochs])
    # Each epoch's gap at the step of that epoch's evaluation.
    assert [step for step, _ in scalars["train/gap/macro_f1"]] == [step for step, _ in scalars["eval/macro_f1"]]


def test_test_metrics_and_baseline_reach_the_tracker_at_the_end(tensorboard_run):
    out, scalars = tensorboard_run
    report = json.loads((out / "test_report.json").read_text())
    assert "baseline" in report
    for name in ("accuracy", "macro_f1"):
        assert scalars[f"test/{name}"][-1][1] == pytest.approx(report[name])
        assert scalars[f"test/baseline_{name}"][-1][1] == pytest.approx(report["baseline"][name])


def test_a_missing_tracker_package_is_refused_before_anything_loads(tmp_path, capsys):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    err = parse_time_error(["--report-to", "wandb"], tmp_path, capsys)
    assert_mentions(err, "`--report-to`", "'wandb'", "not installed", "`pip install wandb`")


def test_an_unusable_or_unknown_tracker_is_refused(tmp_path, capsys, monkeypatch):
    import transformers.integrations

    monkeypatch.setattr(transformers.integrations, "is_tensorboard_available", lambda: False)
    err = parse_time_error(["--report-to", "tensorboard"], tmp_path, capsys)
    assert_mentions(err, "`--report-to`", "'tensorboard'", "is_tensorboard_available", "pip install -U tensorboard")
    err = parse_time_error(["--report-to", "tensorbord"], tmp_path, capsys)
    assert_mentions(err, "`--report-to`", "'tensorbord'", "tensorboard, trackio, wandb", "'none'")

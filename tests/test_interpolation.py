"""WiSE-FT interpolation: alpha 0 and 1 reproduce the two end models exactly; in between is the weighted average."""

from __future__ import annotations

import pytest
import torch

from hf_finetune.training.interpolation import capture_state, interpolate_state, load_interpolation


def _models():
    torch.manual_seed(0)
    start = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    start(torch.randn(2, 3, 6, 6))
    end = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(64, 2))
    end.train()(torch.randn(8, 3, 6, 6))  # moves the BatchNorm statistics and counter
    return start, end


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_the_ends_are_reproduced_bit_for_bit(alpha):
    start_model, end_model = _models()
    start, end = capture_state(start_model), capture_state(end_model)
    target = _models()[0]
    load_interpolation(target, start, end, alpha)
    expected = start if alpha == 0.0 else end
    for name, tensor in target.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_in_between_is_the_weighted_average_and_counters_come_from_the_end():
    start_model, end_model = _models()
    start, end = capture_state(start_model), capture_state(end_model)
    mixed = interpolate_state(start, end, 0.25)
    torch.testing.assert_close(mixed["0.weight"], 0.75 * start["0.weight"] + 0.25 * end["0.weight"])
    torch.testing.assert_close(mixed["1.running_mean"], 0.75 * start["1.running_mean"] + 0.25 * end["1.running_mean"])
    assert torch.equal(mixed["1.num_batches_tracked"], end["1.num_batches_tracked"])


def test_bad_weights_and_mismatched_states_are_refused():
    start_model, end_model = _models()
    start, end = capture_state(start_model), capture_state(end_model)
    with pytest.raises(ValueError, match="in \\[0, 1\\], got 1.5"):
        interpolate_state(start, end, 1.5)
    with pytest.raises(ValueError, match="not the same model"):
        interpolate_state(start, {k: v for k, v in end.items() if k != "3.bias"}, 0.5)

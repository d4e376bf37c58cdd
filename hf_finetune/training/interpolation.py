"""Weight-space interpolation between a fine-tune's start and its end (WiSE-FT, Wortsman et al. 2022).

`theta(alpha) = (1 - alpha) * theta_start + alpha * theta_end`: alpha 0 is the model the fine-tune started from (the
pretrained backbone with the linear-probe head), alpha 1 the fine-tuned one; in between often beats both on small
data, where the fine-tune moves the backbone far on little evidence. Both ends are returned exactly (no rounding
through the interpolation formula), so alpha 0 and 1 reproduce the two models bit for bit.
"""

from __future__ import annotations

import torch

State = dict[str, torch.Tensor]


def capture_state(model: torch.nn.Module) -> State:
    """A detached CPU copy of `model.state_dict()` (parameters and buffers)."""
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}


def interpolate_state(start: State, end: State, alpha: float) -> State:
    """The state at `alpha` between `start` (0) and `end` (1).

    Floating-point tensors (weights, BatchNorm statistics) are interpolated; integer ones (BatchNorm's batch
    counters) are taken from `end`.

    Raises:
        `ValueError`: `alpha` outside [0, 1], or the two states hold different tensors.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"The interpolation weight must lie in [0, 1], got {alpha}.")
    if start.keys() != end.keys():
        raise ValueError(f"The two states differ in {sorted(start.keys() ^ end.keys())[:5]}: not the same model.")
    if alpha == 0.0:
        return dict(start)
    if alpha == 1.0:
        return dict(end)
    return {
        name: torch.lerp(start[name], tensor, alpha) if tensor.is_floating_point() else tensor
        for name, tensor in end.items()
    }


@torch.no_grad()
def load_interpolation(model: torch.nn.Module, start: State, end: State, alpha: float) -> None:
    """Loads the state at `alpha` into `model` (in place, strictly: every tensor must match)."""
    model.load_state_dict(interpolate_state(start, end, alpha), strict=True)

"""Reading features out of a classifier: the head's input and each backbone stage's pooled output.

`FeatureTaps` hooks the modules of the `StageMap` and pools each stage's output the way the model's head pools
(`split.token_pooling`), in one forward pass; the linear probe, the stage probe and truncation read it.
`head_linear_layers` finds the head's final linear layer(s), whose inputs are the model's features.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from hf_finetune.backbones.split import split_stages, token_pooling
from hf_finetune.backbones.stages import EMBEDDINGS, StageMap
from hf_finetune.data.images import model_input
from hf_finetune.data.transforms import feature_max_side

logger = logging.getLogger(__name__)

# Images decoded and preprocessed together: a forward batch of 256 photos is prepared 32 at a time.
PROCESSOR_CHUNK = 32


def head_linear_layers(model: torch.nn.Module, stage_map: StageMap | None = None) -> list[tuple[str, torch.nn.Linear]]:
    """The head's final linear layer(s): the `nn.Linear` modules of the head stage producing `num_labels` outputs.

    Most heads have one; DeiT's distilled head has two (class and distillation token) whose logits are averaged.

    Args:
        model (`torch.nn.Module`): an image classifier from `load_model_and_processor`.
        stage_map (`StageMap`, *optional*): its stages (discovered if omitted).

    Raises:
        `ValueError`: the head has no linear layer with `num_labels` outputs.
    """
    stage_map = stage_map or split_stages(model)
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    found = []
    for root in stage_map.head.module_names:
        for name, module in model.get_submodule(root).named_modules():
            if isinstance(module, torch.nn.Linear) and (num_labels is None or module.out_features == num_labels):
                found.append((f"{root}.{name}" if name else root, module))
    if not found:
        raise ValueError(
            f"The head of {type(model).__name__} ({', '.join(stage_map.head.module_names)}) has no nn.Linear with "
            f"{num_labels} outputs, so its input features cannot be captured for the linear probe."
        )
    return found


def channels_last(module: torch.nn.Module) -> bool:
    """Whether a module's 4-D output is `[B, H, W, C]` (timm modules that declare `output_fmt="NHWC"`: ViT patch
    embeddings with dynamic image size, Swin / MaxViT stages) rather than PyTorch's `[B, C, H, W]`."""
    fmt = getattr(module, "output_fmt", None)
    return getattr(fmt, "value", fmt) == "NHWC"


def _first_tensor(output: Any) -> torch.Tensor | None:
    """The first tensor of a module's output (a tensor, a tuple/list, or a ModelOutput/dict)."""
    if isinstance(output, torch.Tensor):
        return output
    items = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def pool_stage_output(output: torch.Tensor, pooling: str = "mean", channels_last: bool = False) -> torch.Tensor:
    """One vector per image from a stage's output: global average over H, W of a 4-D `[B, C, H, W]` map (`[B, H, W,
    C]` when `channels_last`); the CLS token (`pooling="cls"`) or the mean over tokens of a `[B, N, D]` sequence; 2-D
    outputs as they are."""
    if output.ndim == 4:
        return output.mean(dim=(1, 2) if channels_last else (2, 3))
    if output.ndim == 3:
        return output[:, 0] if pooling == "cls" else output.mean(dim=1)
    return output.flatten(1)


class FeatureTaps:
    """Forward hooks that capture, in one forward pass, the head's input and (optionally) every backbone stage's
    pooled output.

    A stage's output is the output of the last of its modules to run (found while the forward runs, so the
    registration order of submodules does not matter); token sequences are pooled the way the model's head pools
    them (`split.token_pooling`), except the embeddings (their CLS token is the same for every image), which are
    averaged.

    Args:
        model (`torch.nn.Module`): the image classifier.
        stage_map (`StageMap`): its stages.
        stages (`bool`, defaults to `False`): also capture the backbone stages' outputs.
    """

    HEAD = "head"

    def __init__(self, model: torch.nn.Module, stage_map: StageMap, stages: bool = False) -> None:
        self.model = model
        self.head_layers = head_linear_layers(model, stage_map)
        pooling = token_pooling(model)
        self.stages = [s for s in stage_map.backbone if s.module_names] if stages else []
        self.pooling = {s.name: "mean" if s.name == EMBEDDINGS else pooling for s in self.stages}
        modules = dict(model.named_modules())
        # timm declares NHWC outputs on the module (patch embeddings) or on the model (Swin-like stages).
        model_nhwc = channels_last(getattr(model, "timm_model", model))
        self.channels_last = {s.name: model_nhwc or any(channels_last(modules[m]) for m in s.module_names) for s in self.stages}

    @property
    def names(self) -> list[str]:
        """`"head"` first, then the captured stages, input to output."""
        return [self.HEAD, *(s.name for s in self.stages)]

    def hook_points(self, name: str) -> list[str]:
        """What a captured vector is, for the cache key: module names and pooling."""
        if name == self.HEAD:
            return [layer_name for layer_name, _ in self.head_layers]
        stage = next(s for s in self.stages if s.name == name)
        return [f"stage:{name}", f"pool:{self.pooling[name]}", *stage.module_names]

    def capture(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward pass of `pixels` (the model's mode is left as it is): the captured vectors by name."""
        head: list[torch.Tensor | None] = [None] * len(self.head_layers)
        latest: dict[str, tuple[int, torch.Tensor]] = {}
        calls = iter(range(1 << 62))

        def head_hook(index: int):
            def capture(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
                head[index] = inputs[0].detach().flatten(1).float().cpu()

            return capture

        def stage_hook(name: str):
            def capture(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
                tensor = _first_tensor(output)
                if tensor is not None:
                    pooled = pool_stage_output(tensor.detach().float(), self.pooling[name], self.channels_last[name]).cpu()
                    latest[name] = (next(calls), pooled)

            return capture

        modules = dict(self.model.named_modules())
        handles = [module.register_forward_pre_hook(head_hook(i)) for i, (_, module) in enumerate(self.head_layers)]
        for stage in self.stages:
            handles += [modules[m].register_forward_hook(stage_hook(stage.name)) for m in stage.module_names]
        try:
            with torch.no_grad():
                self.model(pixel_values=pixels)
        finally:
            for handle in handles:
                handle.remove()
        missing = [s.name for s in self.stages if s.name not in latest]
        if missing:
            raise RuntimeError(
                f"Stage(s) {', '.join(missing)} of {type(self.model).__name__} produced no output in a forward pass: "
                "their features cannot be captured."
            )
        return {self.HEAD: torch.cat(head, dim=1), **{name: latest[name][1] for name in self.names[1:]}}

    @torch.inference_mode()
    def extract(self, processor: Any, images: list[Any], batch_size: int = 32) -> dict[str, np.ndarray]:
        """Runs `images` through the model (eval mode); returns float32 `[len(images), dim]` per name in `names`.

        `images` are PIL images or undecoded `datasets.Image` references ({"path", "bytes"}); references are decoded
        one at a time, and an image larger than `feature_max_side` is shrunk before the processor, so at most
        `PROCESSOR_CHUNK` images of bounded size are alive at once whatever the batch size and the photos' size.
        """
        images = list(images)  # a datasets Column slices lazily; a list is what the processor takes
        if not images:
            width = sum(m.in_features for _, m in self.head_layers)
            return {name: np.zeros((0, width if name == self.HEAD else 0), dtype=np.float32) for name in self.names}
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in self.names}
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        max_side = feature_max_side(processor)
        try:
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                pixels = torch.cat([
                    processor([model_input(item, max_side) for item in batch[i : i + PROCESSOR_CHUNK]], return_tensors="pt")["pixel_values"]
                    for i in range(0, len(batch), PROCESSOR_CHUNK)
                ]).to(device)
                for name, vectors in self.capture(pixels).items():
                    parts[name].append(vectors)
        finally:
            self.model.train(was_training)
        return {name: torch.cat(chunks).numpy().astype(np.float32) for name, chunks in parts.items()}


def extract_features(
    model: torch.nn.Module, processor: Any, images: list[Any], batch_size: int = 32, stage_map: StageMap | None = None
) -> np.ndarray:
    """Runs `images` through the model (eval mode) and returns the inputs of the head's final linear layer(s).

    Args:
        model (`torch.nn.Module`): the image classifier.
        processor: its image processor (the evaluation preprocessing, exactly what `pipeline` uses).
        images (`list[PIL.Image.Image]`): the images.
        batch_size (`int`, defaults to 32): images per forward pass.
        stage_map (`StageMap`, *optional*): the model's stages.

    Returns:
        `np.ndarray` float32 `[len(images), feature_dim]` (inputs of several head layers are concatenated).
    """
    taps = FeatureTaps(model, stage_map or split_stages(model))
    return taps.extract(processor, images, batch_size)[FeatureTaps.HEAD]

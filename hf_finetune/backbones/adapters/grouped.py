"""transformers MobileNetV2 and EfficientNet: flat block lists regrouped into the papers' resolution stages.

Both encoders keep every block in one flat list, so one stage per entry would be far finer than the stages of a
hierarchical model. Each adapter rebuilds the paper's stages from what the blocks or the config record.
"""

from __future__ import annotations

import itertools
import math

from torch import nn

from hf_finetune.backbones.adapters.base import BackboneAdapter, register_family


class MobileNetV2Adapter(BackboneAdapter):
    """MobileNetV2: a block without a residual connection opens a new bottleneck group."""

    name = "mobilenet_v2"
    model_types = frozenset({"mobilenet_v2"})

    def group_blocks(self, model: nn.Module, children: list[tuple[str, nn.Module]]) -> list[list[str]]:
        if not all(hasattr(child, "use_residual") for _, child in children):
            return super().group_blocks(model, children)
        # Inverted residuals: a block without a residual connection changes resolution or width, i.e. opens one of
        # the paper's bottleneck groups (t, c, n, s); the residual blocks after it belong to the same group.
        groups: list[list[str]] = []
        for name, child in children:
            if not child.use_residual or not groups:
                groups.append([])
            groups[-1].append(name)
        return groups


class EfficientNetAdapter(BackboneAdapter):
    """EfficientNet: the stage sizes follow from the config's `num_block_repeats` and `depth_coefficient`."""

    name = "efficientnet"
    model_types = frozenset({"efficientnet"})

    def group_blocks(self, model: nn.Module, children: list[tuple[str, nn.Module]]) -> list[list[str]]:
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "num_block_repeats"):
            # The encoder flattens its stages into one list; rebuild them with the encoder's own repeat rounding.
            sizes = [math.ceil(config.depth_coefficient * n) for n in config.num_block_repeats]
            if sum(sizes) == len(children):
                names = iter(name for name, _ in children)
                return [list(itertools.islice(names, size)) for size in sizes if size > 0]
        return super().group_blocks(model, children)


register_family(MobileNetV2Adapter())
register_family(EfficientNetAdapter())

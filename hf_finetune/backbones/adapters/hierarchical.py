"""transformers hierarchical families (CNNs and Swin): one stage per resolution stage.

Their encoder holds a list of downsampling stages, each a list of blocks; the structural cut picks the outer list
(it holds more parameters than any inner one), so every resolution stage is one stage. The head averages the final
feature map or tokens.
"""

from __future__ import annotations

from hf_finetune.backbones.adapters.base import BackboneAdapter, register_family


class HierarchicalAdapter(BackboneAdapter):
    """ConvNeXt (v1, v2), ResNet and Swin (v1, v2)."""

    name = "hierarchical"
    model_types = frozenset({"convnext", "convnextv2", "resnet", "swin", "swinv2"})


register_family(HierarchicalAdapter())

"""transformers ViT-like families: one stage per transformer layer, between the patch embeddings and the final norm.

They differ only in how the head pools the token sequence: ViT, DeiT, DINOv2 (with or without registers) and
data2vec-vision read the CLS token, BEiT reads it unless its config asks for mean pooling, CLIP averages the tokens.
"""

from __future__ import annotations

from torch import nn

from hf_finetune.backbones.adapters.base import BackboneAdapter, register_family


class ViTAdapter(BackboneAdapter):
    """ViT, DeiT, DINOv2 and data2vec-vision: the head reads the CLS token."""

    name = "vit"
    model_types = frozenset({"vit", "deit", "dinov2", "dinov2_with_registers", "data2vec-vision"})

    def token_pooling(self, model: nn.Module) -> str:
        return "cls"


class BeitAdapter(BackboneAdapter):
    """BEiT: the head reads the CLS token, or the mean of the patch tokens when `config.use_mean_pooling` is set."""

    name = "beit"
    model_types = frozenset({"beit"})

    def token_pooling(self, model: nn.Module) -> str:
        return "mean" if getattr(model.config, "use_mean_pooling", False) else "cls"


class ClipAdapter(BackboneAdapter):
    """CLIP's vision tower (as `CLIPForImageClassification`): the head averages the tokens."""

    name = "clip"
    model_types = frozenset({"clip"})


register_family(ViTAdapter())
register_family(BeitAdapter())
register_family(ClipAdapter())

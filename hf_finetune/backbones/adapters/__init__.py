"""One adapter per backbone family, registered the way peft registers its tuners.

Each module below defines a `BackboneAdapter` and calls `register_family` at its end; importing this package
registers them all. Adding a family means adding one module with its adapter and one import line here.
The families claim disjoint models (timm models, or a set of transformers `model_type`s), so their order does not
matter; a model none claims gets `GENERIC`, the structural cut flagged with a warning.
"""

from hf_finetune.backbones.adapters import grouped, hierarchical, timm, vit  # noqa: F401  (registers the families)
from hf_finetune.backbones.adapters.base import GENERIC, BackboneAdapter, adapter_for, register_family

__all__ = ["GENERIC", "BackboneAdapter", "adapter_for", "register_family"]

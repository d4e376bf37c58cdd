"""Small questions about a model's module tree that every family adapter and target rule asks.

Where the wrapped model sits (a peft `PeftModel`, a transformers `TimmWrapper`), a module's qualified name, whether a
parameter name lies under a module prefix, and which modules are normalisation layers. Nothing here knows a family.
"""

from __future__ import annotations

import re

from torch import nn

# What a family adapter hands `split_stages`: `[(stage name, [module or parameter name prefixes]), ...]`, input to
# output, the head last.
StageGroups = list[tuple[str, list[str]]]

# Norm layers that need not subclass torch's (FrozenBatchNorm2d, model-specific RMSNorm/LayerNorm classes).
NORM_CLASS_NAME = re.compile(r"Norm(\dd)?$")

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def unwrap_peft(model: nn.Module) -> tuple[nn.Module, str]:
    """Returns (wrapped model, parameter-name prefix) for a peft `PeftModel`, else (model, "")."""
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        inner = model.get_base_model()
        for name, module in model.named_modules():
            if module is inner:
                return inner, f"{name}." if name else ""
    return model, ""


def find_timm_model(model: nn.Module) -> tuple[nn.Module | None, str]:
    """Returns (timm model, its name prefix) for TimmWrapper models and bare timm models, else (None, "")."""
    timm_model = getattr(model, "timm_model", None)
    if isinstance(timm_model, nn.Module):
        return timm_model, "timm_model."
    if type(model).__module__.startswith("timm.") and hasattr(model, "get_classifier"):
        return model, ""
    return None, ""


def module_qualname(root: nn.Module, target: nn.Module) -> str | None:
    """The name `root.named_modules()` gives `target` (`""` for `root` itself), `None` when it is not inside `root`."""
    for name, module in root.named_modules():
        if module is target:
            return name
    return None


def under(name: str, prefix: str) -> bool:
    """Whether the dotted `name` is `prefix` or lies inside it (`"a.b.c"` is under `"a.b"`, `"a.bc"` is not)."""
    return name == prefix or name.startswith(prefix + ".")


def param_count(module: nn.Module) -> int:
    """The number of parameter values of `module`, its children included."""
    return sum(p.numel() for p in module.parameters())

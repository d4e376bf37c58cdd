"""`Stage` and `StageMap`: a model's parameters in ordered groups, input to output, the head last.

The map is what freezing, layer-wise LR decay, PEFT, the feature taps and truncation share; `split_stages` builds
it. `resolve_stages` turns a flag naming stages (by name or index) into stage names, with an error that lists the
valid ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Names of the stages around the blocks (`blocks.0` ... `blocks.{N-1}`), input to output.
EMBEDDINGS = "embeddings"
NORM = "norm"
HEAD = "head"
# Config field of a model truncated by `truncation.truncate_model` (the cut, what was removed, the kept stages).
TRUNCATION_FIELD = "hf_finetune_truncation"


@dataclass(frozen=True)
class Stage:
    """One group of a backbone, in input -> output order.

    Args:
        name (`str`):
            `"embeddings"`, `"blocks.0"` ... `"blocks.{N-1}"`, `"norm"` or `"head"`.
        param_names (`tuple[str, ...]`):
            Full parameter names, as `model.named_parameters()` yields them.
        module_names (`tuple[str, ...]`):
            Qualified names (as `model.named_modules()` yields them) of the outermost modules whose parameters all
            belong to this stage. Parameters held directly by a shared parent (e.g. timm's `cls_token`) appear in
            `param_names` only.
    """

    name: str
    param_names: tuple[str, ...]
    module_names: tuple[str, ...]


@dataclass
class StageMap:
    """The ordered stages of a model: every parameter belongs to exactly one stage; the head is always last.

    Args:
        stages (`list[Stage]`):
            Stages ordered input -> output, the head last.
        family (`str`):
            What the split was based on: a transformers `model_type` (`"vit"`, `"convnext"`, ...), `"timm:<module>"`
            (e.g. `"timm:efficientnet"`) or `"generic"`.
    """

    stages: list[Stage]
    family: str
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.stages or self.stages[-1].name != HEAD:
            raise ValueError(f"A StageMap needs the `{HEAD}` stage last, got {[s.name for s in self.stages]}.")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"Stage names must be unique, got {names}.")
        index: dict[str, int] = {}
        for depth, stage in enumerate(self.stages):
            for param_name in stage.param_names:
                if param_name in index:
                    raise ValueError(
                        f"Parameter `{param_name}` is in both `{self.stages[index[param_name]].name}` and "
                        f"`{stage.name}`; stages must partition the parameters."
                    )
                index[param_name] = depth
        self._index = index

    @property
    def backbone(self) -> list[Stage]:
        """All stages except the head, input -> output."""
        return self.stages[:-1]

    @property
    def head(self) -> Stage:
        """The classification head (always the last stage)."""
        return self.stages[-1]

    def stage_of(self, param_name: str) -> Stage:
        """Returns the stage holding `param_name` (a name from `model.named_parameters()`)."""
        return self.stages[self.depth_of(param_name)]

    def depth_of(self, param_name: str) -> int:
        """Returns the index of `param_name`'s stage: 0 for the embeddings ... `len(stages) - 1` for the head."""
        try:
            return self._index[param_name]
        except KeyError:
            raise KeyError(
                f"`{param_name}` is not a parameter of the model this StageMap was built from ({self.family})."
            ) from None


def valid_stages_text(stage_map: StageMap) -> str:
    """`0=embeddings, 1=blocks.0, ...`: the backbone stages a flag may name, by index and name."""
    return ", ".join(f"{index}={stage.name}" for index, stage in enumerate(stage_map.backbone))


def resolve_stages(stage_map: StageMap, value: str, flag: str, model_name: str) -> list[str]:
    """Backbone stage names from a comma-separated list of stage names or indices (input to output, embeddings = 0).

    Raises:
        `ValueError`: an entry is no backbone stage (the message lists the valid ones), or the list is empty.
    """
    names = [stage.name for stage in stage_map.backbone]
    items = [item.strip() for item in str(value).split(",") if item.strip()]
    if not items:
        raise ValueError(f"`{flag}` {value!r} names no stage. Valid stages of {model_name!r} (index=name): {valid_stages_text(stage_map)}.")
    resolved = []
    for item in items:
        if item.isdigit() and int(item) < len(names):
            resolved.append(names[int(item)])
        elif item in names:
            resolved.append(item)
        else:
            raise ValueError(
                f"`{flag}` {item!r} is not a backbone stage of {model_name!r}. Valid stages (index=name, input to "
                f"output): {valid_stages_text(stage_map)}."
            )
    return list(dict.fromkeys(resolved))

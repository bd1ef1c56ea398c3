"""The pipeline stage map: which IPU runs which part of FrozenInTime.

The map names groups of the model in execution order (the text tower runs first in
``FrozenInTime.forward``, then the video tower; similarity and loss follow the last stage):

    txt_embeddings: 0            # text embeddings
    txt_layers: [1, 1, 1, 2, 2, 2]   # one entry per transformer layer
    txt_proj: 2
    vid_patch_embed: 3           # patch embedding + CLS/position/time embeddings
    vid_blocks: [4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7, 7]  # one entry per space-time block
    vid_proj: 7

``validate`` checks the map against the model before anything compiles; every error names
the group, the index and the fix. ``apply`` turns it into poptorch stage boundaries
(``BeginBlock``) with a recomputation checkpoint at the output of every stage's last module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Optional, Union

from torch import nn

GROUPS = ("txt_embeddings", "txt_layers", "txt_proj", "vid_patch_embed", "vid_blocks", "vid_proj")
LIST_GROUPS = ("txt_layers", "vid_blocks")


class StageMapError(ValueError):
    """A stage map that does not fit the model or the IPU count."""


@dataclass
class StageMap:
    """IPU id per model group; list groups have one entry per layer/block."""

    txt_embeddings: int = 0
    txt_layers: list[int] = field(default_factory=list)
    txt_proj: Optional[int] = None
    vid_patch_embed: int = 0
    vid_blocks: list[int] = field(default_factory=list)
    vid_proj: Optional[int] = None
    recompute: bool = True

    @classmethod
    def from_config(cls, value: Union["StageMap", dict, None]) -> Optional["StageMap"]:
        if value is None or isinstance(value, StageMap):
            return value
        unknown = sorted(set(value) - set(GROUPS) - {"recompute"})
        if unknown:
            raise StageMapError(f"stage map: unknown group(s) {unknown}; the groups are {list(GROUPS)}")
        return cls(**value)

    def entries(self) -> list[tuple[str, Optional[int], int]]:
        """(group, index or None, ipu) in execution order; proj groups default to their tower's last IPU."""
        out: list[tuple[str, Optional[int], int]] = [("txt_embeddings", None, self.txt_embeddings)]
        out += [("txt_layers", i, ipu) for i, ipu in enumerate(self.txt_layers)]
        txt_last = self.txt_layers[-1] if self.txt_layers else self.txt_embeddings
        out.append(("txt_proj", None, txt_last if self.txt_proj is None else self.txt_proj))
        out.append(("vid_patch_embed", None, self.vid_patch_embed))
        out += [("vid_blocks", i, ipu) for i, ipu in enumerate(self.vid_blocks)]
        vid_last = self.vid_blocks[-1] if self.vid_blocks else self.vid_patch_embed
        out.append(("vid_proj", None, vid_last if self.vid_proj is None else self.vid_proj))
        return out

    @property
    def ipus_per_replica(self) -> int:
        return max(ipu for _, _, ipu in self.entries()) + 1

    def num_stages(self) -> int:
        """Pipeline stages (poptorch's ``AutoStage.SameAsIpu``: one stage per IPU)."""
        return len({ipu for _, _, ipu in self.entries()})

    def as_dict(self) -> dict[str, Any]:
        return {"txt_embeddings": self.txt_embeddings, "txt_layers": list(self.txt_layers),
                "txt_proj": self.txt_proj, "vid_patch_embed": self.vid_patch_embed,
                "vid_blocks": list(self.vid_blocks), "vid_proj": self.vid_proj}


def _where(group: str, index: Optional[int]) -> str:
    return f"{group}[{index}]" if index is not None else group


def model_groups(model: nn.Module) -> dict[str, Any]:
    """The modules each group names, found on a FrozenInTime (or anything shaped like it)."""
    text_layers = getattr(model, "text_layers", None)
    if text_layers is None:
        from ..models.text import transformer_layers

        text_layers = transformer_layers(model.text_model)
    return {
        "txt_embeddings": model.text_model.embeddings,
        "txt_layers": list(text_layers),
        "txt_proj": model.txt_proj,
        "vid_patch_embed": model.video_model.patch_embed,
        "vid_blocks": list(model.video_model.blocks),
        "vid_proj": model.vid_proj,
    }


def validate(stage_map: StageMap, model: nn.Module, *, num_ipus: Optional[int] = None,
             replication_factor: int = 1) -> None:
    """Check the map against the model and the IPU count; raise StageMapError naming group, index and fix."""
    groups = model_groups(model)
    for group in LIST_GROUPS:
        entries, layers = getattr(stage_map, group), groups[group]
        if not isinstance(entries, (list, tuple)):
            raise StageMapError(f"stage map: {group} must be a list with one IPU id per layer "
                                f"({len(layers)} layers), got {entries!r}")
        if len(entries) != len(layers):
            kind = "transformer layers" if group == "txt_layers" else "space-time blocks"
            index = min(len(entries), len(layers))
            raise StageMapError(
                f"stage map: {group} has {len(entries)} entries but the model has {len(layers)} {kind}; "
                f"the first unmatched index is {group}[{index}]. Fix: give exactly one IPU id per layer "
                f"({len(layers)} entries).")
    per_replica = None
    if num_ipus is not None:
        if num_ipus % replication_factor:
            raise StageMapError(f"stage map: {num_ipus} IPUs cannot hold {replication_factor} replicas; "
                                "fix: make trainer.devices a multiple of the replication factor")
        per_replica = num_ipus // replication_factor
    previous: Optional[tuple[str, Optional[int], int]] = None
    for group, index, ipu in stage_map.entries():
        if isinstance(ipu, bool) or not isinstance(ipu, int) or ipu < 0:
            raise StageMapError(f"stage map: {_where(group, index)} = {ipu!r} is not an IPU id; "
                                "fix: use an integer >= 0")
        if per_replica is not None and ipu >= per_replica:
            raise StageMapError(
                f"stage map: {_where(group, index)} = {ipu} is out of range: each of the {replication_factor} "
                f"replica(s) has {per_replica} IPU(s) (ids 0..{per_replica - 1}) out of {num_ipus}; fix: use an id "
                f"below {per_replica} or set trainer.devices: {stage_map.ipus_per_replica * replication_factor}")
        if previous is not None and ipu < previous[2]:
            raise StageMapError(
                f"stage map: {_where(group, index)} = {ipu} comes after {_where(previous[0], previous[1])} = "
                f"{previous[2]}, but pipeline stages must run in execution order (text tower, then video "
                f"tower); fix: use an IPU id >= {previous[2]} here")
        previous = (group, index, ipu)
    used = sorted({ipu for _, _, ipu in stage_map.entries()})
    missing = sorted(set(range(used[-1] + 1)) - set(used))
    if missing:
        raise StageMapError(f"stage map: IPU(s) {missing} get no group (an idle pipeline stage); fix: renumber "
                            f"the map so that it uses IPUs 0..{len(used) - 1} contiguously")
    if num_ipus is not None:
        needed = stage_map.ipus_per_replica * replication_factor
        if needed != num_ipus:
            raise StageMapError(
                f"stage map: the map uses {stage_map.ipus_per_replica} IPU(s) per replica x replication factor "
                f"{replication_factor} = {needed} IPUs, but trainer.devices is {num_ipus}; fix: set "
                f"trainer.devices: {needed} (or change the map or the replication factor)")


def _checkpoint_hook(poptorch: ModuleType):
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (poptorch.recomputationCheckpoint(output[0]),) + tuple(output[1:])
        if hasattr(output, "last_hidden_state"):
            return output
        return poptorch.recomputationCheckpoint(output)

    return hook


def apply(stage_map: StageMap, model: nn.Module, poptorch: ModuleType) -> list[tuple[str, int]]:
    """Annotate ``model`` in place: a ``BeginBlock`` wherever the IPU changes, checkpoints at stage ends.

    Returns the (block name, ipu) list in execution order. Safe to call again (hooks are replaced).
    """
    groups = model_groups(model)
    _remove_hooks(model)
    blocks: list[tuple[str, int]] = []
    stage_last: dict[int, nn.Module] = {}
    current: Optional[int] = None
    for group, index, ipu in stage_map.entries():
        module = groups[group][index] if index is not None else groups[group]
        if ipu != current:
            name = _where(group, index)
            poptorch.BeginBlock(module, name, ipu_id=ipu)
            blocks.append((name, ipu))
            current = ipu
        stage_last[ipu] = module
    if stage_map.recompute:
        hook = _checkpoint_hook(poptorch)
        for module in stage_last.values():
            handle = module.register_forward_hook(hook)
            model.__dict__.setdefault("_ipu_stage_hooks", []).append(handle)
    return blocks


def _remove_hooks(model: nn.Module) -> None:
    for handle in model.__dict__.pop("_ipu_stage_hooks", []):
        handle.remove()

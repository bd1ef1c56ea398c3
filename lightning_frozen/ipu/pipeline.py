"""The pipeline stage map: which IPU runs which modules of a LightningModule.

The map names module paths of the LightningModule, in the order the forward pass runs them,
each with an IPU id. A path is followed attribute by attribute, so it may go through a
property (``model.text_layers`` finds the layers of any Hugging Face encoder) and name one
child of a container (``model.video_model.blocks.3``). A ``ModuleList`` or ``Sequential``
stands for its children: give it one id (all children) or a list with one id per child.
Modules the map does not name run on the IPU of the module before them (poptorch's rule).
FrozenInTime on 8 IPUs (the Graphcore port's map)::

    model.text_model.embeddings: 0
    model.text_layers: [1, 1, 1, 2, 2, 2]
    model.txt_proj: 2
    model.video_model.patch_embed: 3        # and the CLS/position/time embeddings after it
    model.video_model.blocks: [4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7]
    model.vid_proj: 7                       # then similarity and loss

``validate`` checks the map against the module and the IPU count before anything compiles;
every error names the path, the index and the fix. ``apply`` turns it into poptorch stage
boundaries (``BeginBlock``) with a recomputation checkpoint at the output of every stage's
last named module.
"""
from __future__ import annotations

import difflib
from types import ModuleType
from typing import Any, NamedTuple, Optional, Union

from torch import Tensor, nn

StageMap = dict[str, Union[int, list[int]]]


class StageMapError(ValueError):
    """A stage map that does not fit the model or the IPU count."""


class Entry(NamedTuple):
    """One placed module: its name in errors and blocks (``path`` or ``path[i]``), the module, its IPU."""

    name: str
    module: nn.Module
    ipu: Any


def _resolve(root: nn.Module, path: str) -> nn.Module:
    node: Any = root
    parts = path.split(".")
    for depth, part in enumerate(parts):
        try:
            node = getattr(node, part)
        except AttributeError:
            known = [name for name, _ in root.named_modules() if name]
            close = difflib.get_close_matches(path, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise StageMapError(
                f"stage map: {path!r} is not a module of {type(root).__name__} ({'.'.join(parts[:depth]) or 'it'} "
                f"has no {part!r}); fix: {hint}name a module path as printed by print(model)") from None
    if not isinstance(node, nn.Module):
        raise StageMapError(f"stage map: {path!r} is a {type(node).__name__}, not a module; fix: name a module path")
    return node


def entries(stage_map: StageMap, root: nn.Module) -> list[Entry]:
    """The map's modules in its (execution) order; a ModuleList, or a container given a list, as its children."""
    out: list[Entry] = []
    for path, ipu in stage_map.items():
        module = _resolve(root, path)
        if not isinstance(ipu, (list, tuple)) and not isinstance(module, nn.ModuleList):
            out.append(Entry(path, module, ipu))  # a ModuleList is never called: its children are placed
            continue
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            raise StageMapError(f"stage map: {path} is a {type(module).__name__}, not a ModuleList or "
                                f"Sequential, so it takes one IPU id, got {ipu!r}; fix: give one id")
        children = list(module)
        ids = ipu if isinstance(ipu, (list, tuple)) else [ipu] * len(children)
        if len(ids) != len(children):
            kind = type(children[0]).__name__ if children else "module"
            raise StageMapError(
                f"stage map: {path} has {len(ids)} entries but the model has {len(children)} {kind} modules there; "
                f"the first unmatched index is {path}[{min(len(ids), len(children))}]. Fix: give exactly one IPU "
                f"id per child ({len(children)} entries), or one id for all of them.")
        out += [Entry(f"{path}[{i}]", child, child_ipu) for i, (child, child_ipu) in enumerate(zip(children, ids))]
    return out


def ipu_ids(stage_map: StageMap) -> list[int]:
    """Every IPU id the map names (with repeats)."""
    return [i for v in stage_map.values() for i in (v if isinstance(v, (list, tuple)) else [v])]


def ipus_per_replica(stage_map: StageMap) -> int:
    return max(ipu_ids(stage_map), default=0) + 1


def num_stages(stage_map: StageMap) -> int:
    """Pipeline stages (poptorch's ``AutoStage.SameAsIpu``: one stage per IPU)."""
    return len(set(ipu_ids(stage_map)))


def validate(stage_map: StageMap, root: nn.Module, *, num_ipus: Optional[int] = None,
             replication_factor: int = 1) -> list[Entry]:
    """Check the map against the module and the IPU count; raise StageMapError naming path, index and fix."""
    placed = entries(stage_map, root)
    per_replica = None
    if num_ipus is not None:
        if num_ipus % replication_factor:
            raise StageMapError(f"stage map: {num_ipus} IPUs cannot hold {replication_factor} replicas; "
                                "fix: make trainer.devices a multiple of the replication factor")
        per_replica = num_ipus // replication_factor
    seen: dict[int, str] = {}
    previous: Optional[Entry] = None
    for entry in placed:
        name, ipu = entry.name, entry.ipu
        if id(entry.module) in seen:
            raise StageMapError(f"stage map: {name} is the same module as {seen[id(entry.module)]}; "
                                "fix: name each module once")
        seen[id(entry.module)] = name
        if isinstance(ipu, bool) or not isinstance(ipu, int) or ipu < 0:
            raise StageMapError(f"stage map: {name} = {ipu!r} is not an IPU id; fix: use an integer >= 0")
        if per_replica is not None and ipu >= per_replica:
            raise StageMapError(
                f"stage map: {name} = {ipu} is out of range: each of the {replication_factor} replica(s) has "
                f"{per_replica} IPU(s) (ids 0..{per_replica - 1}) out of {num_ipus}; fix: use an id below "
                f"{per_replica} or set trainer.devices: {ipus_per_replica(stage_map) * replication_factor}")
        if previous is not None and ipu < previous.ipu:
            raise StageMapError(
                f"stage map: {name} = {ipu} comes after {previous.name} = {previous.ipu}, but pipeline stages "
                f"must run in execution order (the map lists modules in the order the forward pass runs them); "
                f"fix: use an IPU id >= {previous.ipu} here")
        previous = entry
    used = sorted({e.ipu for e in placed})
    missing = sorted(set(range(used[-1] + 1)) - set(used)) if used else []
    if missing:
        raise StageMapError(f"stage map: IPU(s) {missing} get no module (an idle pipeline stage); fix: renumber "
                            f"the map so that it uses IPUs 0..{len(used) - 1} contiguously")
    if num_ipus is not None and ipus_per_replica(stage_map) * replication_factor != num_ipus:
        needed = ipus_per_replica(stage_map) * replication_factor
        raise StageMapError(
            f"stage map: the map uses {ipus_per_replica(stage_map)} IPU(s) per replica x replication factor "
            f"{replication_factor} = {needed} IPUs, but trainer.devices is {num_ipus}; fix: set "
            f"trainer.devices: {needed} (or change the map or the replication factor)")
    return placed


def _checkpoint_hook(poptorch: ModuleType):
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, Tensor):
            return poptorch.recomputationCheckpoint(output)
        if isinstance(output, tuple) and output and isinstance(output[0], Tensor):  # Hugging Face layers
            return (poptorch.recomputationCheckpoint(output[0]),) + tuple(output[1:])
        return output

    return hook


def apply(stage_map: StageMap, root: nn.Module, poptorch: ModuleType, recompute: bool = True) -> list[tuple[str, int]]:
    """Annotate ``root`` in place: a ``BeginBlock`` wherever the IPU changes, checkpoints at stage ends.

    Returns the (block name, ipu) list in execution order. Safe to call again (hooks are replaced).
    """
    for handle in root.__dict__.pop("_ipu_stage_hooks", []):
        handle.remove()
    blocks: list[tuple[str, int]] = []
    stage_last: dict[int, nn.Module] = {}
    for entry in entries(stage_map, root):
        if not blocks or entry.ipu != blocks[-1][1]:
            poptorch.BeginBlock(entry.module, entry.name, ipu_id=entry.ipu)
            blocks.append((entry.name, entry.ipu))
        stage_last[entry.ipu] = entry.module
    if recompute:
        hook = _checkpoint_hook(poptorch)
        root.__dict__["_ipu_stage_hooks"] = [m.register_forward_hook(hook) for m in stage_last.values()]
    return blocks

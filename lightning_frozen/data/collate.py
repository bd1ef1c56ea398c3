"""Batch collation: stack clips, tokenise captions, gather metadata.

Tokenising in the DataLoader workers keeps the training step free of Python string
work, and ``padding="max_length"`` gives every batch the same token shape, which static
graphs (IPU, compiled models) need.

Input items (the dataset contract)::

    {"video": uint8 [F, 3, H, W], "text": str, "meta": {"id": ..., "path": ..., ...}}

Multi-caption items (MSR-VTT full test) carry ``"text": list[str]`` (k captions) and
``meta["caption_mask"]: list[bool]``. Their captions are flattened video-major: batch row
``b * k + j`` of ``input_ids`` is caption ``j`` of video ``b``. Items with fewer captions
than the longest in the batch are padded with empty captions whose mask is ``False``.

Output::

    {"video": uint8 [B, F, 3, H, W], "input_ids": long [B or B*k, L],
     "attention_mask": long [B or B*k, L], "meta": {key: list of B values},
     "caption_mask": bool [B, k]  (multi-caption batches only; not repeated in meta)}
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["TextVideoCollator"]

_PADDING_MODES = ("longest", "max_length")



def is_single_batch(batch: Any) -> bool:
    """A collated batch (has ``video``), as opposed to a joint ``{dataset name: batch}`` dict."""
    return isinstance(batch, dict) and "video" in batch


def named_batches(batch: Any) -> Dict[str, Any]:
    """A step's batch as ``{dataset name: batch}`` (a single batch is named "train")."""
    return {"train": batch} if is_single_batch(batch) else batch


class TextVideoCollator:
    """Picklable ``collate_fn`` for text-video items (see the module docstring).

    Args:
        tokenizer: a Hugging Face tokenizer (anything called like one and returning
            ``input_ids`` / ``attention_mask`` tensors).
        max_length: truncate captions to this many tokens; with ``padding="max_length"``
            also pad to it. ``None`` truncates at the tokenizer's own model maximum.
        padding: ``"longest"`` pads to the longest caption in the batch;
            ``"max_length"`` pads every batch to ``max_length`` (static shapes).
    """

    def __init__(self, tokenizer: Any, max_length: Optional[int] = None, padding: str = "longest") -> None:
        if padding not in _PADDING_MODES:
            raise ValueError(f"padding must be one of {_PADDING_MODES}; got padding={padding!r}.")
        if padding == "max_length" and max_length is None:
            raise ValueError(
                "padding='max_length' needs a token count: set max_length (for example "
                "max_length: 32), or use padding='longest'."
            )
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be a positive number of tokens; got max_length={max_length}.")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding = padding

    def tokenize(self, texts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Tokenise captions with this collator's padding and truncation settings."""
        out = self.tokenizer(
            list(texts),
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    def __call__(self, items: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        if len(items) == 0:
            raise ValueError("TextVideoCollator got an empty list of items.")
        batch: Dict[str, Any] = {"video": _stack_videos(items)}
        metas = [dict(item.get("meta", {})) for item in items]
        texts = [item.get("text") for item in items]
        if all(t is None for t in texts):
            pass  # video-only items (e.g. indexing a collection): nothing to tokenise
        elif all(isinstance(t, str) for t in texts):
            batch.update(self.tokenize(texts))
        elif all(isinstance(t, (list, tuple)) for t in texts):
            flat, mask = _flatten_captions(texts, [m.pop("caption_mask", None) for m in metas], metas)
            batch.update(self.tokenize(flat))
            batch["caption_mask"] = mask
        else:
            kinds = sorted({type(t).__name__ for t in texts})
            raise TypeError(
                f"Every item's 'text' in a batch must be a str, or every one a list of str; got a mix "
                f"of {kinds} (ids {[m.get('id') for m in metas]})."
            )
        keys: List[str] = []
        for m in metas:
            keys.extend(k for k in m if k not in keys)
        batch["meta"] = {k: [m.get(k) for m in metas] for k in keys}
        return batch


def _stack_videos(items: Sequence[Dict[str, Any]]) -> torch.Tensor:
    """Stack ``[F, 3, H, W]`` clips; all clips of a batch must share one shape."""
    videos = [item["video"] for item in items]
    shapes = {tuple(v.shape) for v in videos}
    if len(shapes) > 1:
        ids = [item.get("meta", {}).get("id") for item in items]
        raise ValueError(
            f"Clips in one batch must share a shape; got {sorted(shapes)} for ids {ids}. Set the "
            f"same num_frames and frame size for every item of a dataset."
        )
    return torch.stack(videos)


def _flatten_captions(
    texts: Sequence[Sequence[str]], masks: Sequence[Optional[Sequence[bool]]], metas: Sequence[Dict[str, Any]]
) -> Tuple[List[str], torch.Tensor]:
    """Flatten k captions per video video-major; pad short lists with masked-out ''."""
    k = max(len(t) for t in texts)
    if k == 0:
        raise ValueError(f"Multi-caption items need at least one caption; ids {[m.get('id') for m in metas]}.")
    flat: List[str] = []
    mask = torch.zeros(len(texts), k, dtype=torch.bool)
    for b, (caps, cap_mask, meta) in enumerate(zip(texts, masks, metas)):
        if cap_mask is None:
            cap_mask = [True] * len(caps)
        if len(cap_mask) != len(caps):
            raise ValueError(
                f"Item {meta.get('id')!r}: meta['caption_mask'] has {len(cap_mask)} entries but 'text' has "
                f"{len(caps)} captions; they must match one to one."
            )
        flat.extend(caps)
        flat.extend([""] * (k - len(caps)))
        mask[b, : len(caps)] = torch.tensor([bool(v) for v in cap_mask], dtype=torch.bool)
    return flat, mask

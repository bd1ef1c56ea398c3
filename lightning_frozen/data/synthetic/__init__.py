"""Synthetic text-video data in the real MSR-VTT, WebVid, CC3M and Kinetics layouts (real mp4 files).

``clips`` draws what a clip shows, ``layouts`` writes datasets, ``cli`` is `lightning-frozen synthetic`.
"""

from .clips import (
    COLOURS,
    DIRECTIONS,
    FOREGROUNDS,
    IMAGE_TEMPLATES,
    SHAPES,
    VIDEO_TEMPLATES,
    ClipSpec,
    caption,
    random_spec,
    render_clip,
)
from .layouts import (
    BROKEN_KINDS,
    LAYOUTS,
    MANIFEST,
    SyntheticParams,
    action_label,
    action_labels,
    make_synthetic_dataset,
)

__all__ = [
    "BROKEN_KINDS", "COLOURS", "DIRECTIONS", "FOREGROUNDS", "IMAGE_TEMPLATES", "LAYOUTS", "MANIFEST", "SHAPES",
    "VIDEO_TEMPLATES", "ClipSpec", "SyntheticParams", "action_label", "action_labels", "caption",
    "make_synthetic_dataset", "random_spec", "render_clip",
]

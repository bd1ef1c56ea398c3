"""Synthetic text-video data in the real MSR-VTT, WebVid, CC3M and Kinetics layouts (real mp4 files).

``clips`` draws what a clip shows, ``layouts`` writes datasets, ``cli`` is `lightning-frozen synthetic`.
Names load on first use, so the command's ``--help`` needs neither numpy nor PyAV.
"""

_CLIPS = ("COLOURS", "DIRECTIONS", "FOREGROUNDS", "IMAGE_TEMPLATES", "SHAPES", "VIDEO_TEMPLATES", "ClipSpec", "caption",
          "random_spec", "render_clip")
_LAYOUTS = ("BROKEN_KINDS", "LAYOUTS", "MANIFEST", "SyntheticParams", "action_label", "action_labels",
            "make_synthetic_dataset")
_LAZY = {**{name: ".clips" for name in _CLIPS}, **{name: ".layouts" for name in _LAYOUTS}}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

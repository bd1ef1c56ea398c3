"""Drawing synthetic clips: what a clip shows (``ClipSpec``), its pixels and its captions.

Each clip shows a coloured shape on a coloured background moving left, right, up or down
along a path centred in the frame, so no single frame tells the direction: a one-frame
model can match colour and shape, only a multi-frame model can also match the direction.
Captions name colour, shape and direction in varied wording.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "white": (245, 245, 245),
    "purple": (140, 40, 170),
    "orange": (250, 140, 20),
    "black": (15, 15, 15),
}
FOREGROUNDS = ("white", "yellow", "orange", "green", "red")
BACKGROUNDS = ("black", "blue", "purple")
SHAPES = {
    "circle": ("circle", "disc", "ball", "round shape", "dot"),
    "square": ("square", "box", "block", "square shape"),
    "triangle": ("triangle", "triangular shape", "wedge"),
    "diamond": ("diamond", "rhombus", "diamond shape"),
}
DIRECTIONS = {
    "left": ((0, -1), ("moving to the left", "sliding left", "travelling leftwards",
                       "drifting to the left", "heading left")),
    "right": ((0, 1), ("moving to the right", "sliding right", "travelling rightwards",
                       "drifting to the right", "heading right")),
    "up": ((-1, 0), ("moving up", "rising", "sliding upwards", "drifting up", "heading up")),
    "down": ((1, 0), ("moving down", "falling", "sliding downwards", "sinking",
                      "heading down")),
}
VIDEO_TEMPLATES = (
    "a {fg} {shape} {motion} on a {bg} background",
    "the {bg} background shows a {fg} {shape} {motion}",
    "{fg} {shape} {motion} over {bg}",
    "a video of a {fg} {shape} {motion} against a {bg} backdrop",
    "on a {bg} background a {fg} {shape} is {motion}",
    "there is a {fg} {shape} {motion} in front of {bg}",
    "a clip where a {fg} {shape} keeps {motion} across a {bg} screen",
)
IMAGE_TEMPLATES = (
    "a {fg} {shape} on a {bg} background",
    "photo of a {fg} {shape} against {bg}",
    "the {bg} background shows a {fg} {shape}",
    "a picture of a {fg} {shape} in front of a {bg} backdrop",
    "{fg} {shape} on {bg}",
)


@dataclass(frozen=True)
class ClipSpec:
    """What one synthetic clip shows (the ground truth its captions describe)."""

    foreground: str
    background: str
    shape: str
    direction: str


def random_spec(rng: np.random.Generator, num_colours: int = len(FOREGROUNDS),
                num_shapes: int = len(SHAPES)) -> ClipSpec:
    """A bright shape on a dark background, so motion shows the same way in every colour pair.

    Few colours and shapes make clips that differ only in direction common: then only a
    multi-frame model can tell them apart."""
    fg = rng.choice(FOREGROUNDS[:num_colours])
    bg = rng.choice(BACKGROUNDS[:num_colours])
    shape = rng.choice(list(SHAPES)[:num_shapes])
    return ClipSpec(str(fg), str(bg), str(shape), str(rng.choice(list(DIRECTIONS))))


def caption(spec: ClipSpec, rng: np.random.Generator, moving: bool = True) -> str:
    """One caption of ``spec`` in a randomly chosen wording."""
    templates = VIDEO_TEMPLATES if moving else IMAGE_TEMPLATES
    text = str(rng.choice(templates)).format(
        fg=spec.foreground,
        bg=spec.background,
        shape=rng.choice(SHAPES[spec.shape]),
        motion=rng.choice(DIRECTIONS[spec.direction][1]),
    )
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, radius: float) -> np.ndarray:
    if shape == "circle":
        return dy**2 + dx**2 <= radius**2
    if shape == "square":
        return (np.abs(dy) <= radius * 0.85) & (np.abs(dx) <= radius * 0.85)
    if shape == "triangle":
        return (dy <= radius * 0.8) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) * 0.6)
    return np.abs(dy) + np.abs(dx) <= radius


def render_clip(
    spec: ClipSpec, num_frames: int, size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """RGB uint8 frames (F, H, W, 3): the shape travels 40% of the frame in its direction.

    The path is centred in the frame up to a small random offset, so the shape sits at the
    same places (in the other order) whichever way it moves: one frame cannot tell the
    direction, the order of frames can.
    """
    height, width = size
    radius = min(height, width) / 5
    (step_y, step_x) = DIRECTIONS[spec.direction][0]
    travel_y, travel_x = 0.4 * height * step_y, 0.4 * width * step_x
    slack_y = max(0.0, height - 2 * radius - abs(travel_y))
    slack_x = max(0.0, width - 2 * radius - abs(travel_x))
    # centre of the path, uniform over the positions that keep the shape inside the frame
    mid_y = height / 2 + rng.uniform(-slack_y / 2, slack_y / 2)
    mid_x = width / 2 + rng.uniform(-slack_x / 2, slack_x / 2)
    t = (np.arange(num_frames, dtype=np.float64) / max(num_frames - 1, 1) - 0.5)[:, None, None]
    ys = np.arange(height, dtype=np.float64)[None, :, None]
    xs = np.arange(width, dtype=np.float64)[None, None, :]
    mask = _shape_mask(spec.shape, ys - (mid_y + travel_y * t), xs - (mid_x + travel_x * t), radius)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    frames[:] = COLOURS[spec.background]
    frames[mask] = COLOURS[spec.foreground]
    return frames

"""Sprite videos: 1-2 shapes of the shapes spec moving at constant velocity and bouncing off the edges.

Same shapes, colours, palette and black background as ``arstudio.data.shapes``; sizes use its size classes.
Each object moves by an integer velocity (vx, vy) in pixels per frame (scaled with the canvas: at most
``MAX_SPEED`` px at 32 px, twice that at 64) and is reflected when its box would leave the canvas, so its
path is exact integer pixels: the clip verifier can demand constant displacement except at bounces.

Clip ``i`` of a set with seed ``s`` is drawn from ``numpy.random.default_rng([s, i])`` (rebuildable alone).
Class clips have one object and the ``shapes-c2i`` class id; caption clips have 1 or 2 objects whose boxes
stay apart in every frame, and a caption such as "a red circle moving right".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from arstudio.data.shapes import (
    COLOURS,
    SHAPES,
    SIZES,
    ShapeObject,
    check_canvas,
    pick_class,
    region_of,
    render,
    side_range,
)

DEFAULT_FRAMES = 16
MAX_FRAMES = 256  # data side limit: clips are rendered frame by frame in memory
MAX_SPEED = 2  # |vx|, |vy| <= MAX_SPEED * canvas / 32 pixels per frame


@dataclass(frozen=True)
class Sprite:
    """One moving object: what it is, its box side, its first top-left corner and its velocity (px/frame)."""

    shape: str
    colour: str
    size: str
    side: int
    x0: int
    y0: int
    vx: int
    vy: int

    def position(self, frame: int, canvas: int) -> tuple[int, int]:
        """Top-left corner in ``frame``: the straight path folded back at the walls (a reflection)."""
        span = canvas - self.side
        return _reflect(self.x0 + self.vx * frame, span), _reflect(self.y0 + self.vy * frame, span)

    def at(self, frame: int, canvas: int) -> ShapeObject:
        x, y = self.position(frame, canvas)
        region = region_of(x + self.side / 2, y + self.side / 2, canvas)
        return ShapeObject(self.shape, self.colour, self.size, region, x, y, self.side)

    @property
    def label(self) -> int:
        return SHAPES.index(self.shape) * len(COLOURS) + COLOURS.index(self.colour)

    def describe(self) -> str:
        return f"a {self.colour} {self.shape} moving {direction_name(self.vx, self.vy)}"


def _reflect(p: int, span: int) -> int:
    """Fold an unbounded coordinate into [0, span] by reflection at both ends (span 0: always 0)."""
    if span <= 0:
        return 0
    m = p % (2 * span)
    return m if m <= span else 2 * span - m


def direction_name(vx: int, vy: int) -> str:
    """ "right", "up-left", ... from a velocity (image y grows downwards)."""
    vertical = "up" if vy < 0 else "down" if vy > 0 else ""
    horizontal = "left" if vx < 0 else "right" if vx > 0 else ""
    return "-".join(part for part in (vertical, horizontal) if part)


def check_num_frames(num_frames, maximum: int = MAX_FRAMES) -> int:
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)):
        raise ValueError(f"num_frames={num_frames!r} must be an integer in [1, {maximum}]")
    if not 1 <= int(num_frames) <= maximum:
        raise ValueError(f"num_frames={num_frames!r} is out of range: allowed 1..{maximum}")
    return int(num_frames)


def sample_sprite(rng: np.random.Generator, canvas: int, shape=None, colour=None) -> Sprite:
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    colour = colour or COLOURS[rng.integers(len(COLOURS))]
    size = SIZES[rng.integers(len(SIZES))]
    lo, hi = side_range(size, canvas)
    side = int(rng.integers(lo, hi + 1))
    x0, y0 = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
    top = MAX_SPEED * canvas // 32
    while True:  # a sprite that stands still is not a video
        vx, vy = (int(v) for v in rng.integers(-top, top + 1, size=2))
        if vx or vy:
            return Sprite(shape, colour, size, side, x0, y0, vx, vy)


def render_clip(sprites: list[Sprite], num_frames: int = DEFAULT_FRAMES, canvas: int = 32) -> np.ndarray:
    """uint8 frames (num_frames, canvas, canvas, 3)."""
    check_canvas(canvas)
    check_num_frames(num_frames)
    return np.stack([render([s.at(f, canvas) for s in sprites], canvas) for f in range(num_frames)])


def _apart_in_every_frame(a: Sprite, b: Sprite, num_frames: int, canvas: int) -> bool:
    for f in range(num_frames):
        (ax, ay), (bx, by) = a.position(f, canvas), b.position(f, canvas)
        if not (ax + a.side < bx or bx + b.side < ax or ay + a.side < by or by + b.side < ay):
            return False
    return True


def make_class_clip(
    seed: int, index: int, num_frames: int = DEFAULT_FRAMES, canvas: int = 32, label: int | None = None
):
    """Clip ``index`` of the class set: (frames uint8 (T, H, W, 3), label, sprite)."""
    check_canvas(canvas)
    rng = np.random.default_rng([seed, index])
    label, shape, colour = pick_class(rng, label)
    sprite = sample_sprite(rng, canvas, shape, colour)
    return render_clip([sprite], num_frames, canvas), label, sprite


def make_caption_clip(
    seed: int, index: int, num_frames: int = DEFAULT_FRAMES, canvas: int = 32, tries: int = 50
):
    """Clip ``index`` of the caption set: (frames, caption, sprites); two sprites never touch in any frame
    (rejection sampled; after ``tries`` misses the clip keeps one sprite)."""
    check_canvas(canvas)
    rng = np.random.default_rng([seed, index])
    sprites = [sample_sprite(rng, canvas)]
    if rng.random() < 0.5:
        for _ in range(tries):
            other = sample_sprite(rng, canvas)
            if _apart_in_every_frame(sprites[0], other, num_frames, canvas):
                sprites.append(other)
                break
    text = " and ".join(s.describe() for s in sprites)
    return render_clip(sprites, num_frames, canvas), text, sprites


def class_clips(seed: int, count: int, num_frames: int = DEFAULT_FRAMES, canvas: int = 32, start: int = 0):
    """Frames (count, T, H, W, 3) uint8, labels (count,) int64 and sprites of the class set."""
    items = [make_class_clip(seed, start + i, num_frames, canvas) for i in range(count)]
    frames = np.stack([item[0] for item in items])
    labels = np.array([item[1] for item in items], dtype=np.int64)
    return frames, labels, [item[2] for item in items]

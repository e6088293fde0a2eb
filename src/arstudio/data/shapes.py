"""The procedural shapes benchmark: coloured geometric objects on a black canvas.

The spec is fixed because other tools (the verifier, FD-shapes, captions) read it:
- RGB canvas (64x64 by default, 32x32 supported), black background, no anti-aliasing;
- shapes, in this order: circle, square, triangle (apex up), diamond (square turned 45 degrees);
- colours, in this order: red, green, blue, yellow, magenta, cyan;
- box side "small" = 25-34 % of the canvas side, "large" = 38-50 %;
- the object's centre lies in one of a 3x3 grid of regions; objects lie fully inside the canvas.

Everything is deterministic from a seed: item ``i`` of a set with seed ``s`` is drawn from
``numpy.random.default_rng([s, i])``, so any item can be rebuilt on its own.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
PALETTE = np.array(
    [(230, 50, 50), (50, 200, 70), (60, 100, 240), (240, 220, 50), (220, 60, 220), (60, 220, 230)],
    dtype=np.uint8,
)
SIZES = ("small", "large")
# Box side as a fraction of the canvas side, inclusive.
SIZE_RANGES = {"small": (0.25, 0.34), "large": (0.38, 0.50)}
REGIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
SUPPORTED_CANVAS = (32, 64)
NUM_CLASSES = len(SHAPES) * len(COLOURS)  # 24


def class_id(shape: str, colour: str) -> int:
    """Class id of the class-conditional set: shape_index * 6 + colour_index."""
    return SHAPES.index(shape) * len(COLOURS) + COLOURS.index(colour)


def class_parts(label: int) -> tuple[str, str]:
    """(shape, colour) of a class id, the inverse of ``class_id``: 7 -> ("square", "green")."""
    check_class_label(label)
    return SHAPES[int(label) // len(COLOURS)], COLOURS[int(label) % len(COLOURS)]


def class_name(label: int) -> str:
    """Human name of a class id, e.g. 7 -> "green square"."""
    shape, colour = class_parts(label)
    return f"{colour} {shape}"


def pick_class(rng: np.random.Generator, label: int | None) -> tuple[int, str, str]:
    """The label asked for (checked), or one drawn from ``rng`` when None, with its (shape, colour)."""
    if label is None:
        label = int(rng.integers(NUM_CLASSES))
    return (label, *class_parts(label))


def check_class_label(label: int) -> None:
    if not isinstance(label, (int, np.integer)) or not 0 <= int(label) < NUM_CLASSES:
        raise ValueError(f"class label {label!r} is out of range: allowed are integers 0..{NUM_CLASSES - 1}")


def check_canvas(canvas: int) -> None:
    if canvas not in SUPPORTED_CANVAS:
        raise ValueError(f"canvas size {canvas!r} is not supported: allowed are {SUPPORTED_CANVAS}")


@dataclass(frozen=True)
class ShapeObject:
    """One object: what it is and the box (left, top, side) it is drawn in, in pixels."""

    shape: str
    colour: str
    size: str
    region: str
    x0: int
    y0: int
    side: int

    @property
    def label(self) -> int:
        return class_id(self.shape, self.colour)

    def describe(self) -> str:
        where = "in the center" if self.region == "center" else f"at the {self.region}"
        return f"a {self.size} {self.colour} {self.shape} {where}"

    def to_dict(self) -> dict:
        return asdict(self)


def side_range(size: str, canvas: int) -> tuple[int, int]:
    """Integer box sides allowed for a size class on this canvas (inclusive)."""
    lo, hi = SIZE_RANGES[size]
    return math.ceil(lo * canvas - 1e-9), math.floor(hi * canvas + 1e-9)


def region_of(cx: float, cy: float, canvas: int) -> str:
    """Region name of a point: which third of the canvas it falls in, per axis."""
    col = min(int(cx * 3 / canvas), 2)
    row = min(int(cy * 3 / canvas), 2)
    return REGIONS[row * 3 + col]


def shape_mask(shape: str, x0: float, y0: float, w: float, h: float, canvas: int) -> np.ndarray:
    """Boolean (canvas, canvas) mask of a shape drawn in the box (x0, y0, w, h).

    A pixel belongs to the shape when its centre does: this is what "no anti-aliasing" means. The box may
    be non-square so the verifier can fit templates to the exact extent of what it found.
    """
    ys, xs = np.mgrid[0:canvas, 0:canvas].astype(np.float64) + 0.5
    # Normalised coordinates: u, v in [0, 1] across the box.
    u = (xs - x0) / w
    v = (ys - y0) / h
    inside_box = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if shape == "square":
        return inside_box
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "diamond":
        return np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5
    if shape == "triangle":
        # Apex at top centre, base along the bottom edge: half-width grows linearly with v.
        return inside_box & (np.abs(u - 0.5) <= 0.5 * v)
    raise ValueError(f"unknown shape {shape!r}: allowed are {SHAPES}")


def render(objects: list[ShapeObject], canvas: int = 64) -> np.ndarray:
    """Draw objects on a black canvas: uint8 array (canvas, canvas, 3)."""
    check_canvas(canvas)
    image = np.zeros((canvas, canvas, 3), dtype=np.uint8)
    for obj in objects:
        mask = shape_mask(obj.shape, obj.x0, obj.y0, obj.side, obj.side, canvas)
        image[mask] = PALETTE[COLOURS.index(obj.colour)]
    return image


def _sample_box(rng: np.random.Generator, size: str, region: str, canvas: int) -> tuple[int, int, int]:
    """Sample (x0, y0, side) with the box inside the canvas and its centre in ``region``."""
    lo, hi = side_range(size, canvas)
    side = int(rng.integers(lo, hi + 1))
    row, col = divmod(REGIONS.index(region), 3)

    def axis(index: int) -> int:
        # Top-left coordinates t with the box inside [0, canvas] and the centre t + side/2 in this third.
        third = canvas / 3
        options = [
            t for t in range(0, canvas - side + 1) if index * third <= t + side / 2 < (index + 1) * third
        ]
        return int(rng.choice(options))

    return axis(col), axis(row), side


def sample_object(rng: np.random.Generator, canvas: int, shape=None, colour=None) -> ShapeObject:
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    colour = colour or COLOURS[rng.integers(len(COLOURS))]
    size = SIZES[rng.integers(len(SIZES))]
    region = REGIONS[rng.integers(len(REGIONS))]
    x0, y0, side = _sample_box(rng, size, region, canvas)
    return ShapeObject(shape, colour, size, region, x0, y0, side)


def _boxes_apart(a: ShapeObject, b: ShapeObject) -> bool:
    """True when the boxes neither overlap nor touch (at least one background pixel between them)."""
    return a.x0 + a.side < b.x0 or b.x0 + b.side < a.x0 or a.y0 + a.side < b.y0 or b.y0 + b.side < a.y0


def caption(objects: list[ShapeObject]) -> str:
    return " and ".join(obj.describe() for obj in objects)


def make_class_item(seed: int, index: int, canvas: int = 64, label: int | None = None):
    """Item ``index`` of the class-conditional set: (image uint8 HxWx3, label, object)."""
    check_canvas(canvas)
    rng = np.random.default_rng([seed, index])
    label, shape, colour = pick_class(rng, label)
    obj = sample_object(rng, canvas, shape, colour)
    return render([obj], canvas), label, obj


def make_text_item(seed: int, index: int, canvas: int = 64):
    """Item ``index`` of the text-conditional set: (image, caption, objects), 1 or 2 objects apart."""
    check_canvas(canvas)
    rng = np.random.default_rng([seed, index])
    objects = [sample_object(rng, canvas)]
    if rng.random() < 0.5:
        objects = _place_second(rng, canvas, objects[0])
    return render(objects, canvas), caption(objects), objects


def _place_second(
    rng: np.random.Generator, canvas: int, first: ShapeObject, tries: int = 50
) -> list[ShapeObject]:
    """Two objects apart, by rejection sampling. A large centred first object can leave no room at all
    for a second one, so after ``tries`` misses the first object is redrawn too (deterministic: same rng)."""
    while True:
        for _ in range(tries):
            other = sample_object(rng, canvas)
            if _boxes_apart(first, other):
                return [first, other]
        first = sample_object(rng, canvas)


def class_batch(seed: int, count: int, canvas: int = 64, start: int = 0):
    """Images (count, canvas, canvas, 3) uint8 and labels (count,) int64 of the class-conditional set."""
    items = [make_class_item(seed, start + i, canvas) for i in range(count)]
    images = np.stack([item[0] for item in items])
    labels = np.array([item[1] for item in items], dtype=np.int64)
    return images, labels, [item[2] for item in items]

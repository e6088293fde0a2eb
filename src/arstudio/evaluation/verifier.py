"""Rule-based verifier for the procedural shapes benchmark: what objects does an image contain?

It reads the spec in ``arstudio.data.shapes`` (palette, size ranges, 3x3 regions, shape templates) and
needs no training, so its verdicts on generated images cannot be gamed by fitting a learned judge. On clean
renders it agrees with the generator's own labels (see tests/test_verifier.py).
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from arstudio.data.shapes import (
    COLOURS,
    PALETTE,
    SHAPES,
    SIZE_RANGES,
    SUPPORTED_CANVAS,
    ShapeObject,
    class_parts,
    region_of,
    shape_mask,
    side_range,
)

# Palette colours all have a channel >= 200 and the background is black; 100 sits well between, so dark
# generation noise stays background while a dimmed object is still found.
FOREGROUND_THRESHOLD = 100
# Box side (fraction of the canvas) between the largest "small" (0.34) and the smallest "large" (0.38).
SIZE_SPLIT = (SIZE_RANGES["small"][1] + SIZE_RANGES["large"][0]) / 2
# Components below this share of the smallest legal object are specks of noise, not objects.
MIN_AREA_FRACTION = 0.3


@dataclass(frozen=True)
class DetectedObject:
    """One object found in an image.

    (x0, y0, w, h) is the pixel extent of the component and ``area`` its pixel count; ``region`` comes from
    the centre of the box the winning template was fitted in (see ``candidate_boxes``).
    """

    colour: str
    shape: str
    size: str
    region: str
    x0: int
    y0: int
    w: int
    h: int
    area: int

    def key(self) -> tuple[str, str, str, str]:
        return (self.shape, self.colour, self.size, self.region)


def check_image(image: np.ndarray) -> int:
    """Validate an image for the verifier and return its canvas size."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an image of shape (H, W, 3), got shape {image.shape}")
    if image.shape[0] != image.shape[1] or image.shape[0] not in SUPPORTED_CANVAS:
        raise ValueError(
            f"image shape {image.shape} is not a supported canvas: allowed are square sides {SUPPORTED_CANVAS}"
        )
    return image.shape[0]


@functools.cache
def min_object_area(canvas: int) -> float:
    """Pixel area below which a component is dropped: a fraction of the smallest legal triangle."""
    side = side_range("small", canvas)[0]
    return MIN_AREA_FRACTION * float(shape_mask("triangle", 0, 0, side, side, canvas).sum())


def nearest_colour(pixels: np.ndarray) -> str:
    """Majority vote over pixels (N, 3) of their nearest palette colour, so a few off pixels don't flip it."""
    dists = ((pixels[:, None, :].astype(np.int32) - PALETTE[None].astype(np.int32)) ** 2).sum(-1)
    votes = np.bincount(dists.argmin(1), minlength=len(COLOURS))
    return COLOURS[int(votes.argmax())]


def candidate_boxes(x0: int, y0: int, w: int, h: int) -> list[tuple[float, float, float, float]]:
    """Boxes a component may have been drawn in: its own extent and the square box around it.

    Rendered boxes are square, but a triangle with an even side has no pixel centre in its apex row, so its
    extent is one row short at the top. The square box (bottom-anchored when too short, centred when too
    narrow) recovers the drawn box exactly; the raw extent is kept for distorted generated shapes.
    """
    boxes = [(float(x0), float(y0), float(w), float(h))]
    side = max(w, h)
    if w != h:
        boxes.append((x0 - (side - w) / 2, float(y0 + h - side), float(side), float(side)))
    return boxes


def fit_shape(component: np.ndarray, x0: int, y0: int, w: int, h: int) -> tuple[str, tuple]:
    """The template (and its box) with the highest IoU against the component mask."""
    canvas = component.shape[0]
    best = (-1.0, SHAPES[0], (x0, y0, w, h))
    for box in candidate_boxes(x0, y0, w, h):
        for shape in SHAPES:
            template = shape_mask(shape, *box, canvas)
            iou = (template & component).sum() / max((template | component).sum(), 1)
            if iou > best[0]:
                best = (iou, shape, box)
    return best[1], best[2]


def detect_objects(image: np.ndarray) -> list[DetectedObject]:
    """Find the objects in a shapes image: uint8 (H, W, 3) with H = W in (32, 64)."""
    canvas = check_image(image)
    foreground = image.max(axis=2) >= FOREGROUND_THRESHOLD
    labels, _ = ndimage.label(foreground, structure=np.ones((3, 3), dtype=bool))  # 8-connectivity
    objects = []
    for index, slices in enumerate(ndimage.find_objects(labels), start=1):
        component = labels == index
        area = int(component.sum())
        if area < min_object_area(canvas):
            continue
        y0, x0 = slices[0].start, slices[1].start
        h, w = slices[0].stop - y0, slices[1].stop - x0
        shape, (bx, by, bw, bh) = fit_shape(component, x0, y0, w, h)
        size = "small" if max(w, h) / canvas < SIZE_SPLIT else "large"
        region = region_of(bx + bw / 2, by + bh / 2, canvas)
        colour = nearest_colour(image[component])
        objects.append(DetectedObject(colour, shape, size, region, x0, y0, w, h, area))
    return objects


def verify_class(image: np.ndarray, label: int) -> bool:
    """True when the image holds exactly one object, of the class's shape and colour."""
    shape, colour = class_parts(label)
    objects = detect_objects(image)
    return len(objects) == 1 and objects[0].shape == shape and objects[0].colour == colour


def class_accuracy(images, labels) -> float:
    """Share of images (N, H, W, 3) that ``verify_class`` accepts for their labels (N,)."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise ValueError("class_accuracy needs at least one image")
    return float(
        np.mean([verify_class(image, int(label)) for image, label in zip(images, labels, strict=True)])
    )


def verify_objects(image: np.ndarray, expected: list[ShapeObject]) -> bool:
    """True when the image holds exactly the expected objects (shape, colour, size, region), in any order."""
    found = Counter(obj.key() for obj in detect_objects(image))
    wanted = Counter((obj.shape, obj.colour, obj.size, obj.region) for obj in expected)
    return found == wanted

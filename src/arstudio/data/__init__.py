"""Offline datasets: procedural shapes (+ captions), scikit-image photo crops, sklearn digits, image folders."""

from arstudio.data.shapes import (
    COLOURS,
    NUM_CLASSES,
    PALETTE,
    REGIONS,
    SHAPES,
    SIZES,
    ShapeObject,
    caption,
    class_batch,
    class_id,
    class_name,
    make_class_item,
    make_text_item,
    render,
)

__all__ = [
    "COLOURS",
    "NUM_CLASSES",
    "PALETTE",
    "REGIONS",
    "SHAPES",
    "SIZES",
    "ShapeObject",
    "caption",
    "class_batch",
    "class_id",
    "class_name",
    "make_class_item",
    "make_text_item",
    "render",
]

import numpy as np
import pytest

from arstudio.data import shapes
from arstudio.data.shapes import (
    COLOURS,
    PALETTE,
    REGIONS,
    SHAPES,
    class_id,
    make_class_item,
    make_text_item,
    region_of,
    render,
    side_range,
)


@pytest.mark.parametrize("canvas", [32, 64])
def test_class_items_follow_the_spec(canvas):
    for index in range(60):
        image, label, obj = make_class_item(seed=3, index=index, canvas=canvas)
        assert image.shape == (canvas, canvas, 3) and image.dtype == np.uint8
        assert label == SHAPES.index(obj.shape) * 6 + COLOURS.index(obj.colour)
        lo, hi = side_range(obj.size, canvas)
        assert lo <= obj.side <= hi
        assert 0 <= obj.x0 and obj.x0 + obj.side <= canvas and 0 <= obj.y0 and obj.y0 + obj.side <= canvas
        assert region_of(obj.x0 + obj.side / 2, obj.y0 + obj.side / 2, canvas) == obj.region
        # Only black and the object's exact colour: no anti-aliasing.
        colours = {tuple(c) for c in image.reshape(-1, 3)}
        assert colours == {(0, 0, 0), tuple(PALETTE[COLOURS.index(obj.colour)])}


def test_size_ranges_at_both_canvases():
    assert side_range("small", 64) == (16, 21) and side_range("large", 64) == (25, 32)
    assert side_range("small", 32) == (8, 10) and side_range("large", 32) == (13, 16)


def test_items_are_deterministic_and_seed_dependent():
    a, _, _ = make_class_item(1, 5)
    b, _, _ = make_class_item(1, 5)
    c, _, _ = make_class_item(2, 5)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_shape_geometry():
    obj = shapes.ShapeObject("triangle", "red", "large", "center", 8, 8, 16)
    mask = render([obj], 32).any(axis=-1)
    rows = mask.sum(axis=1)
    assert rows[8] < rows[22]  # apex up: narrow at the top, wide at the bottom
    diamond = render([shapes.ShapeObject("diamond", "red", "large", "center", 8, 8, 16)], 32).any(-1).sum(1)
    assert diamond[8] <= 2 and diamond[23] <= 2 and diamond[15] >= 14  # vertices at the side midpoints
    square = render([shapes.ShapeObject("square", "red", "large", "center", 8, 8, 16)], 32).any(-1)
    assert square.sum() == 256
    circle = render([shapes.ShapeObject("circle", "red", "large", "center", 8, 8, 16)], 32).any(-1)
    assert 0.74 < circle.sum() / 256 < 0.83 and not circle[8, 8]


def test_text_items_have_one_or_two_separate_objects_and_a_caption():
    counts = set()
    for index in range(80):
        image, text, objects = make_text_item(0, index, canvas=32)
        counts.add(len(objects))
        if len(objects) == 2:
            a, b = objects
            assert shapes._boxes_apart(a, b)
            assert " and " in text
        for obj in objects:
            assert f"{obj.size} {obj.colour} {obj.shape}" in text
    assert counts == {1, 2}


def test_caption_wording():
    obj = shapes.ShapeObject("circle", "red", "large", "top left", 0, 0, 16)
    other = shapes.ShapeObject("square", "blue", "small", "bottom right", 22, 22, 9)
    assert (
        shapes.caption([obj, other])
        == "a large red circle at the top left and a small blue square at the bottom right"
    )


def test_class_ids_and_bad_values():
    assert class_id("square", "green") == 7 and shapes.class_name(7) == "green square"
    assert len(REGIONS) == 9
    with pytest.raises(ValueError, match="24"):
        shapes.class_name(24)
    with pytest.raises(ValueError, match="canvas size 48"):
        make_class_item(0, 0, canvas=48)


def test_text_items_terminate_when_the_first_object_leaves_no_room():
    # A large centred first object can leave no place for a second one at 32 px; sampling used to loop
    # forever on such items (seed 0 has one before index 3072). Now the first object is redrawn.
    for index in range(3072):
        _, _, objects = make_text_item(0, index, canvas=32)
        if len(objects) == 2:
            assert shapes._boxes_apart(*objects)

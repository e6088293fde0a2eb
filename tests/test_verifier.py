"""The rule-based verifier must agree with the generator's own labels on clean renders."""

import re

import numpy as np
import pytest

from arstudio.data.shapes import ShapeObject, make_class_item, make_text_item, region_of, render
from arstudio.evaluation.verifier import class_accuracy, detect_objects, verify_class, verify_objects

N_ITEMS = 200


@pytest.mark.parametrize("canvas", [32, 64])
def test_agrees_with_class_items(canvas):
    items = [make_class_item(seed=11, index=i, canvas=canvas) for i in range(N_ITEMS)]
    images = np.stack([image for image, _, _ in items])
    assert class_accuracy(images, [label for _, label, _ in items]) == 1.0
    # Size and region too, not just shape and colour.
    assert all(verify_objects(image, [obj]) for image, _, obj in items)


@pytest.mark.parametrize("canvas", [32, 64])
def test_agrees_with_text_items(canvas):
    items = [make_text_item(seed=12, index=i, canvas=canvas) for i in range(N_ITEMS)]
    assert {len(objects) for _, _, objects in items} == {1, 2}  # both kinds are covered
    assert all(verify_objects(image, objects) for image, _, objects in items)


def test_triangle_with_missing_apex_row_keeps_its_region():
    # An even-sided triangle has no pixel in its apex row, so its pixel extent starts one row low; here the
    # drawn centre (y = 21.0) is in the top third of 64 px but the extent's centre (21.5) is not.
    obj = ShapeObject("triangle", "red", "small", "top", x0=24, y0=13, side=16)
    assert region_of(obj.x0 + obj.side / 2, obj.y0 + obj.side / 2, 64) == "top"
    image = render([obj], 64)
    (found,) = detect_objects(image)
    assert found.h == obj.side - 1
    assert verify_objects(image, [obj])


@pytest.mark.parametrize("canvas", [32, 64])
def test_blank_image_has_no_objects(canvas):
    image = np.zeros((canvas, canvas, 3), dtype=np.uint8)
    assert detect_objects(image) == []
    assert not verify_class(image, 0)


def test_specks_and_dark_noise_are_not_objects():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)  # dark noise stays background
    image[3:5, 3:5] = 255  # a 4-pixel speck is far below the smallest legal object
    assert detect_objects(image) == []


def test_two_objects():
    objects = [
        ShapeObject("circle", "blue", "large", "top left", x0=2, y0=3, side=28),
        ShapeObject("diamond", "yellow", "small", "bottom right", x0=44, y0=44, side=18),
    ]
    image = render(objects, 64)
    found = detect_objects(image)
    assert len(found) == 2
    assert {(f.shape, f.colour, f.size, f.region) for f in found} == {
        ("circle", "blue", "large", "top left"),
        ("diamond", "yellow", "small", "bottom right"),
    }
    assert verify_objects(image, objects[::-1])  # order-free
    assert not verify_objects(image, objects[:1])
    assert not verify_class(image, objects[0].label)  # two objects are not one class item


def test_wrong_class_is_rejected():
    image, label, _ = make_class_item(seed=3, index=0, canvas=32)
    assert verify_class(image, label)
    assert not verify_class(image, (label + 1) % 24)


@pytest.mark.parametrize(
    "image, fragment",
    [
        (np.zeros((48, 48, 3), np.uint8), "48"),
        (np.zeros((32, 64, 3), np.uint8), "(32, 64, 3)"),
        (np.zeros((32, 32, 4), np.uint8), "(32, 32, 4)"),
        (np.zeros((32, 32), np.uint8), "(32, 32)"),
        (np.zeros((32, 32, 3), np.float32), "float32"),
    ],
)
def test_bad_input_names_the_problem(image, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        detect_objects(image)

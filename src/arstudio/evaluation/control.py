"""Control fidelity: how closely a generated image follows its control map.

- ``edge_f1``: F1 between the control's edge pixels and the generated image's Canny edges, with a
  ``tolerance``-pixel match radius (BSDS-style: an edge one pixel off still counts; the VQ decoder and the
  4x4-pixel tokens make exact pixel matches too strict a test).
- ``mask_iou``: IoU of the generated foreground (the verifier's threshold) and the control mask.
- ``position_error``: distance in pixels between the centre of the largest object the verifier finds and
  the centre of the control's object.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from arstudio.data.control import edge_map
from arstudio.evaluation.verifier import FOREGROUND_THRESHOLD, check_image, detect_objects


def _binary(control: np.ndarray, name: str) -> np.ndarray:
    control = np.asarray(control)
    if control.ndim != 2:
        raise ValueError(f"{name} must be a (H, W) map, got shape {control.shape}")
    return control > 0.5


def edge_f1(control_edges: np.ndarray, image: np.ndarray, tolerance: int = 1) -> float:
    """F1 of the generated uint8 (H, W, 3) image's edges against a (H, W) 0/1 edge map."""
    check_image(image)
    target = _binary(control_edges, "control_edges")
    found = edge_map(image) > 0.5
    if target.shape != found.shape:
        raise ValueError(f"control is {target.shape}, image is {found.shape[:2]}")
    if not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"tolerance={tolerance!r} must be an integer >= 0")
    if not target.any() and not found.any():
        return 1.0
    if not target.any() or not found.any():
        return 0.0
    grow = np.ones((2 * tolerance + 1,) * 2, dtype=bool)
    precision = (found & ndimage.binary_dilation(target, grow)).sum() / found.sum()
    recall = (target & ndimage.binary_dilation(found, grow)).sum() / target.sum()
    return float(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))


def mask_iou(control_mask: np.ndarray, image: np.ndarray) -> float:
    """IoU of the image's foreground and a (H, W) 0/1 mask."""
    check_image(image)
    target = _binary(control_mask, "control_mask")
    found = image.max(axis=2) >= FOREGROUND_THRESHOLD
    union = (target | found).sum()
    return 1.0 if union == 0 else float((target & found).sum() / union)


def object_centre(image: np.ndarray) -> tuple[float, float] | None:
    """(x, y) centre of the extent of the largest object the verifier finds, or None."""
    objects = detect_objects(image)
    if not objects:
        return None
    largest = max(objects, key=lambda obj: obj.area)
    return largest.x0 + largest.w / 2, largest.y0 + largest.h / 2


def position_error(image: np.ndarray, centre: tuple[float, float]) -> float | None:
    """Pixels between the generated object's centre and ``centre``; None when no object was found."""
    found = object_centre(image)
    if found is None:
        return None
    return float(np.hypot(found[0] - centre[0], found[1] - centre[1]))

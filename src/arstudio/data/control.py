"""Control maps: one-channel spatial conditions computed offline from images (ControlAR's inputs).

- ``edges``: Canny edges (scikit-image) of the image's grey levels: 1 on an edge pixel, 0 elsewhere.
- ``mask``: object masks. For the shapes data they come from the spec (``shape_mask`` of each object, so
  they are exact); for any other image the foreground (a channel >= the verifier's threshold) stands in.

A control map is float32 (H, W) in [0, 1] at the tokenizer's resolution; ``check_control_map`` turns what
a user hands in (a numpy array, a PIL image, a torch tensor) into one, or says what is wrong with it.
"""

from __future__ import annotations

import numpy as np

from arstudio.data.shapes import ShapeObject, shape_mask

CONTROL_TYPES = ("edges", "mask")
# Canny on a 32 px render: sigma 1 keeps a one-pixel outline around each object; the hysteresis thresholds
# are in grey-level gradient units (images in [0, 1]) and sit well below the weakest palette edge (blue on
# black), so every object boundary is found and flat regions stay empty.
CANNY_SIGMA = 1.0
CANNY_THRESHOLDS = (0.05, 0.1)
FOREGROUND_THRESHOLD = 100  # as the verifier's: palette colours have a channel >= 200, background is black


def check_control_type(kind: str) -> str:
    if kind not in CONTROL_TYPES:
        raise ValueError(f"control type {kind!r} is unknown; allowed: {CONTROL_TYPES}")
    return kind


def edge_map(image: np.ndarray) -> np.ndarray:
    """Canny edges of a uint8 (H, W, 3) image -> float32 (H, W) of 0/1."""
    from skimage.feature import canny

    grey = np.asarray(image, dtype=np.float32).mean(axis=-1) / 255.0
    low, high = CANNY_THRESHOLDS
    return canny(grey, sigma=CANNY_SIGMA, low_threshold=low, high_threshold=high).astype(np.float32)


def object_mask(objects: list[ShapeObject], canvas: int) -> np.ndarray:
    """Union of the objects' exact masks (from the shapes spec) -> float32 (canvas, canvas) of 0/1."""
    mask = np.zeros((canvas, canvas), dtype=bool)
    for obj in objects:
        mask |= shape_mask(obj.shape, obj.x0, obj.y0, obj.side, obj.side, canvas)
    return mask.astype(np.float32)


def make_control(image: np.ndarray, kind: str, objects: list[ShapeObject] | None = None) -> np.ndarray:
    """The ``kind`` control map of a uint8 (H, W, 3) image; ``objects`` (shapes data) make masks exact."""
    check_control_type(kind)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"control maps are computed from uint8 (H, W, 3) images, got {image.dtype} {image.shape}"
        )
    if kind == "edges":
        return edge_map(image)
    if objects is not None:
        return object_mask(objects, image.shape[0])
    return (image.max(axis=-1) >= FOREGROUND_THRESHOLD).astype(np.float32)


def check_control_map(control, resolution: int) -> np.ndarray:
    """A user's control map -> float32 (resolution, resolution) in [0, 1].

    Accepted: a PIL image of mode "L" or "1"; a numpy array or torch tensor (H, W), (H, W, 1) or (1, H, W),
    uint8 (0..255), bool, or float in [0, 1]. Anything else (RGB, the wrong size, values out of range) is
    refused with what was expected: controls are never resized or converted silently.
    """
    from PIL import Image

    if isinstance(control, Image.Image):
        if control.mode not in ("L", "1"):
            raise ValueError(
                f"a control image must have one channel (PIL mode 'L' or '1'), got mode {control.mode!r}; "
                "make one from an RGB image with arstudio.data.control.make_control(image, 'edges')"
            )
        control = np.asarray(control)
    if hasattr(control, "detach"):  # a torch tensor
        control = control.detach().cpu().numpy()
    if not isinstance(control, np.ndarray):
        raise ValueError(f"a control map must be an array or PIL image, got {type(control).__name__}")
    array = control
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]) and array.shape[-1] != array.shape[0]:
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    if array.ndim != 2:
        raise ValueError(
            f"a control map has one channel: shape (H, W) or (H, W, 1); got shape {control.shape} "
            f"({control.shape[-1] if control.ndim == 3 else control.ndim} channels/dims). Make one from an "
            "RGB image with arstudio.data.control.make_control(image, kind)"
        )
    if array.shape != (resolution, resolution):
        raise ValueError(
            f"control map is {array.shape[0]}x{array.shape[1]}; this model takes {resolution}x{resolution} "
            "(the tokenizer's resolution), one control token per image token"
        )
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == bool:
        return array.astype(np.float32)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"control map dtype {array.dtype} is not allowed: use uint8, bool or float in [0, 1]"
        )
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise ValueError(f"float control maps must lie in [0, 1], got [{array.min():.3g}, {array.max():.3g}]")
    return array.astype(np.float32)

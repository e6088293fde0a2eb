"""Random crops of the colour photos bundled with scikit-image (offline), for tokenizer training and PSNR.

The photos are split by name so held-out numbers are measured on images the tokenizer never saw.
"""

from __future__ import annotations

import functools

import numpy as np

TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel")
HELDOUT_PHOTOS = ("hubble_deep_field", "retina", "cat")


@functools.cache
def _load_photo(name: str) -> np.ndarray:
    try:
        from skimage import data as skdata
    except ImportError as err:  # scikit-image is in the `eval` extra
        raise ImportError("photo crops need scikit-image: pip install 'arstudio[eval]'") from err
    image = getattr(skdata, name)()
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def photo_crops(count: int, size: int, seed: int, split: str = "train") -> np.ndarray:
    """``count`` random crops (count, size, size, 3) uint8, downscaled 1-4x first so crops hold content.

    Args:
        split: "train" or "heldout" (disjoint source photos).
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split {split!r} is not allowed: use 'train' or 'heldout'")
    names = TRAIN_PHOTOS if split == "train" else HELDOUT_PHOTOS
    rng = np.random.default_rng([seed, 7])
    crops = []
    for _ in range(count):
        photo = _load_photo(names[rng.integers(len(names))])
        factor = int(rng.integers(1, 5))
        # Box-filter downscale by an integer factor: cheap and without aliasing.
        h, w = (photo.shape[0] // factor) * factor, (photo.shape[1] // factor) * factor
        small = photo[:h, :w].reshape(h // factor, factor, w // factor, factor, 3).mean(axis=(1, 3))
        top = int(rng.integers(0, small.shape[0] - size + 1))
        left = int(rng.integers(0, small.shape[1] - size + 1))
        crops.append(small[top : top + size, left : left + size].round().astype(np.uint8))
    return np.stack(crops)

"""scikit-learn's bundled 8x8 handwritten digits (offline), upsampled to RGB images for small experiments.

The split into train and held-out is a fixed permutation, so held-out numbers always use the same images.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

SUPPORTED_RESOLUTIONS = (16, 32)
HELDOUT_FRACTION = 0.2
SPLIT_SEED = 0  # fixed: changing it would silently change every held-out number


@functools.cache
def _all_digits(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # scikit-learn is in the `eval` extra
        raise ImportError("digits need scikit-learn: pip install 'arstudio[eval]'") from err
    digits = load_digits()
    # Pixel values are 0..16 (ink counts); stretch to 0..255 before resizing so rounding loses little.
    small = np.round(digits.images * (255 / 16)).astype(np.uint8)
    big = np.stack(
        [np.asarray(Image.fromarray(d).resize((resolution, resolution), Image.BILINEAR)) for d in small]
    )
    images = np.repeat(big[..., None], 3, axis=-1)  # grey -> RGB, so digits go through RGB models unchanged
    return images, digits.target.astype(np.int64)


def split_indices(count: int, split: str) -> np.ndarray:
    """Sorted indices of ``split`` ("train" or "heldout") among ``count`` items; the two are disjoint."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split {split!r} is not allowed: use 'train' or 'heldout'")
    order = np.random.default_rng(SPLIT_SEED).permutation(count)
    n_heldout = int(round(count * HELDOUT_FRACTION))
    chosen = order[:n_heldout] if split == "heldout" else order[n_heldout:]
    return np.sort(chosen)


def digit_images(resolution: int = 32, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images (N, resolution, resolution, 3) uint8 and labels (N,) int64 (0..9) of one split."""
    if resolution not in SUPPORTED_RESOLUTIONS:
        raise ValueError(
            f"digit resolution {resolution!r} is not supported: allowed are {SUPPORTED_RESOLUTIONS}"
        )
    images, labels = _all_digits(resolution)
    index = split_indices(len(images), split)
    return images[index], labels[index]  # fancy indexing copies, so callers cannot alter the cache

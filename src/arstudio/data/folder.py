"""A folder of the user's own images as a training set: square centre crops resized to one resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")


def find_images(root: Path) -> list[Path]:
    """Image files under ``root`` (subfolders included), sorted so item order is the same on every run."""
    return sorted(
        path
        for path in root.rglob("*")
        # Names starting with "." are hidden files, such as macOS "._x.png" metadata that is no image.
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
    )


def centre_crop_resize(image: Image.Image, resolution: int) -> Image.Image:
    """The largest centred square, resized (antialiased when shrinking) to ``resolution``."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square.resize((resolution, resolution), Image.BICUBIC)


class ImageFolderDataset(Dataset):
    """Items are float tensors (3, resolution, resolution) in [-1, 1], like the other training sets."""

    def __init__(self, root: str | Path, resolution: int):
        root = Path(root)
        if not isinstance(resolution, int) or resolution <= 0:
            raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
        if not root.exists():
            raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
        if not root.is_dir():
            raise FileNotFoundError(f"{str(root)!r} is not a folder")
        self.root = root
        self.resolution = resolution
        self.paths = find_images(root)
        if not self.paths:
            raise ValueError(
                f"image folder {str(root)!r} holds no images: looked (subfolders included) for files ending "
                f"in {', '.join(IMAGE_EXTENSIONS)} (any letter case)"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            # convert("RGB") also flattens palettes, greyscale and alpha (onto black, as PIL does).
            image = centre_crop_resize(image.convert("RGB"), self.resolution)
        pixels = torch.from_numpy(np.asarray(image).copy())
        return pixels.permute(2, 0, 1).float().div(127.5).sub(1.0)

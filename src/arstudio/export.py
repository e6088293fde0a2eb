"""Writing results to disk: PNGs with their generation metadata in a text chunk, and contact-sheet grids.

Every file is written to a temporary name and renamed, so an interrupted run never leaves a half PNG.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from arstudio.io import atomic_write_bytes

METADATA_KEY = "arstudio"


def png_bytes(image, metadata: dict | None = None) -> bytes:
    from PIL import Image, PngImagePlugin

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    info = PngImagePlugin.PngInfo()
    if metadata is not None:
        info.add_text(METADATA_KEY, json.dumps(metadata, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png_metadata(path: str | Path) -> dict:
    """The metadata dict written by ``save_images`` (raises KeyError if the PNG has none)."""
    from PIL import Image

    with Image.open(path) as image:
        text = image.text.get(METADATA_KEY)
    if text is None:
        raise KeyError(f"{str(path)!r} carries no arstudio metadata")
    return json.loads(text)


def make_grid(images: list[np.ndarray], columns: int, pad: int = 2) -> np.ndarray:
    """Tile equally sized uint8 (H, W, 3) images into rows of ``columns``, with a grey gutter."""
    h, w, _ = images[0].shape
    rows = -(-len(images) // columns)
    sheet = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 64, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        sheet[
            pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w
        ] = image
    return sheet


def save_images(output, out_dir: str | Path, grid_columns: int | None = None) -> list[Path]:
    """Write each image as ``{index:04d}_{seed}.png`` with its metadata; optionally ``grid.png``."""
    out_dir = Path(out_dir)
    arrays = [np.asarray(image) for image in output.images]
    paths = []
    for index, (array, meta) in enumerate(zip(arrays, output.metadata, strict=True)):
        path = out_dir / f"{index:04d}_{meta['seed']}.png"
        atomic_write_bytes(path, png_bytes(array, meta))
        paths.append(path)
    if grid_columns and arrays:
        path = out_dir / "grid.png"
        atomic_write_bytes(path, png_bytes(make_grid(arrays, max(1, grid_columns))))
        paths.append(path)
    return paths

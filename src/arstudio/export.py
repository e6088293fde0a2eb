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


def grid_bytes(images: list[np.ndarray], columns: int) -> bytes:
    """The contact sheet of ``images`` as PNG bytes (rows of ``columns``)."""
    return png_bytes(make_grid([np.asarray(image) for image in images], max(1, columns)))


def save_images(
    output, out_dir: str | Path, grid_columns: int | None = None, first_index: int = 0, index_digits: int = 4
) -> list[Path]:
    """Write each image as ``{index:04d}_{seed}.png`` with its metadata; optionally ``grid.png``.

    ``first_index`` / ``index_digits``: a batch of a bigger run continues its numbering (zero-padded to
    the run's width, so names sort in order).
    """
    out_dir = Path(out_dir)
    arrays = [np.asarray(image) for image in output.images]
    paths = []
    for index, (array, meta) in enumerate(zip(arrays, output.metadata, strict=True), start=first_index):
        path = out_dir / f"{index:0{index_digits}d}_{meta['seed']}.png"
        atomic_write_bytes(path, png_bytes(array, meta))
        paths.append(path)
    if grid_columns and arrays:
        path = out_dir / "grid.png"
        atomic_write_bytes(path, grid_bytes(arrays, grid_columns))
        paths.append(path)
    return paths


def check_output_folder(path: str | Path, name: str = "out_dir") -> Path:
    """``path`` as a folder to write into: refused (one line, before any work) if it is an existing file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name}={str(path)!r} is an existing file; give a folder (created if missing)")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{name}={str(path)!r} lies under the file {str(parent)!r}; give a folder")
    return path


# ---- video: mp4 (H.264 through imageio's bundled ffmpeg) and gif (Pillow through imageio) ----------------
VIDEO_FORMATS = ("mp4", "gif")


def _frames_array(frames) -> np.ndarray:
    """A list of PIL images / uint8 arrays, or a (T, H, W, 3) array -> uint8 (T, H, W, 3)."""
    array = np.stack([np.asarray(f) for f in frames]) if isinstance(frames, (list, tuple)) else frames
    if (
        not isinstance(array, np.ndarray)
        or array.ndim != 4
        or array.shape[-1] != 3
        or array.dtype != np.uint8
    ):
        shape = getattr(array, "shape", type(array).__name__)
        raise ValueError(f"video frames must be uint8 (T, H, W, 3) with T >= 1; got {shape}")
    if len(array) == 0:
        raise ValueError("a video needs at least one frame")
    return array


def mp4_available() -> bool:
    """Whether mp4 export works here (imageio-ffmpeg's bundled ffmpeg is installed)."""
    import importlib.util

    return importlib.util.find_spec("imageio_ffmpeg") is not None


def video_bytes(frames, fmt: str = "mp4", fps: int = 8, scale: int = 1) -> bytes:
    """Encode frames as ``fmt`` ("mp4" or "gif"); ``scale`` enlarges pixels (nearest) for viewing."""
    import imageio.v3 as iio

    if fmt not in VIDEO_FORMATS:
        raise ValueError(f"video format {fmt!r} is not supported; use one of {VIDEO_FORMATS}")
    if not isinstance(fps, int) or not 1 <= fps <= 60 or not isinstance(scale, int) or not 1 <= scale <= 16:
        raise ValueError(f"fps={fps!r} must be an integer in [1, 60] and scale={scale!r} one in [1, 16]")
    array = _frames_array(frames).repeat(scale, axis=1).repeat(scale, axis=2)
    if fmt == "gif":
        return iio.imwrite("<bytes>", array, extension=".gif", duration=1000 / fps, loop=0)
    if not mp4_available():  # imageio's ffmpeg plugin needs the binary imageio-ffmpeg bundles
        raise RuntimeError(
            "mp4 export needs imageio-ffmpeg: pip install 'arstudio[video]' (gif works without)"
        )
    # yuv420p (what every player reads) needs even sides; macro_block_size 16 pads the rest, 32 px is exact.
    return iio.imwrite("<bytes>", array, extension=".mp4", fps=fps, codec="libx264", macro_block_size=16)


def read_video(path: str | Path, max_frames: int = 1024) -> np.ndarray:
    """uint8 frames (T, H, W, 3) of an mp4 or gif file; anything else, or a file that does not decode, is a
    ValueError naming the file."""
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in VIDEO_FORMATS:
        raise ValueError(f"{str(path)!r} is not a video file arstudio reads; allowed: {VIDEO_FORMATS}")
    if not path.is_file():
        raise FileNotFoundError(f"video file {str(path)!r} does not exist")
    try:
        frames = iio.imread(path, index=None, extension=f".{suffix}")
    except Exception as err:  # imageio/ffmpeg raise many types for a broken file
        raise ValueError(f"{str(path)!r} could not be decoded as {suffix}: {err}".splitlines()[0]) from err
    frames = np.asarray(frames)
    if frames.ndim == 3:  # a one-frame gif comes back as (H, W, C)
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4) or len(frames) == 0:
        raise ValueError(
            f"{str(path)!r} decoded to an unexpected shape {frames.shape}; expected (T, H, W, 3)"
        )
    if len(frames) > max_frames:
        raise ValueError(f"{str(path)!r} has {len(frames)} frames; at most {max_frames} are allowed")
    return np.ascontiguousarray(frames[..., :3].astype(np.uint8))


def save_videos(
    output, out_dir: str | Path, formats=VIDEO_FORMATS, fps: int = 8, scale: int = 1, first_index: int = 0
) -> list[Path]:
    """Write each video of a ``VideoOutput`` as ``{index:04d}_{seed}.{mp4,gif}`` plus a ``.json`` sidecar with
    its metadata (mp4/gif have no text chunk every reader keeps); ``first_index`` as for ``save_images``."""
    out_dir = Path(out_dir)
    paths = []
    for index, (frames, meta) in enumerate(
        zip(output.frames, output.metadata, strict=True), start=first_index
    ):
        stem = f"{index:04d}_{meta['seed']}"
        for fmt in formats:
            atomic_write_bytes(out_dir / f"{stem}.{fmt}", video_bytes(frames, fmt, fps, scale))
            paths.append(out_dir / f"{stem}.{fmt}")
        atomic_write_bytes(out_dir / f"{stem}.json", json.dumps(meta, sort_keys=True, indent=1).encode())
        paths.append(out_dir / f"{stem}.json")
    return paths

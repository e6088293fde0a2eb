"""The Tokenizer lab: an uploaded or built-in picture through each preset's tokenizer: reconstruction,
PSNR, the token grid as colours and the numbers that fit the tokenizer's kind (codebook usage for VQ,
levels used per dimension for a bridge, latent statistics for KL). Each preset runs on its own: one that
fails gets its message in its row and never hides the others' results."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pandas as pd

import arstudio
from arstudio.reconstruction import load_image
from arstudio.render import describe_error
from arstudio.ui.common import MODEL_QUEUE, PipelineCache, readable_errors

COLUMNS = ["preset", "tokenizer", "resolution", "token grid", "PSNR dB", "tokens (or why the preset failed)"]
KIND_NAMES = {
    "discrete": "VQ (codebook)",
    "continuous": "KL (continuous latents)",
    "bridge": "bridge (levels)",
}


def sample_pictures(side: int = 96) -> dict[str, np.ndarray]:
    """A few pictures drawn here, so the lab works before anyone uploads anything."""
    y, x = np.mgrid[0:side, 0:side] / side
    circle = np.zeros((side, side, 3), np.uint8)  # on black, like the shapes the shipped models know
    circle[(x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.09] = (220, 40, 40)
    squares = np.full((side, side, 3), 20, np.uint8)
    squares[side // 8 : side // 2, side // 8 : side // 2] = (40, 90, 230)
    squares[side // 2 :, side // 2 :] = (240, 220, 40)
    gradient = np.stack([x * 255, y * 255, (1 - x) * 255], axis=-1).astype(np.uint8)
    checker = (((x * 8).astype(int) + (y * 8).astype(int)) % 2 * 255).astype(np.uint8)
    return {
        "red circle": circle,
        "two squares": squares,
        "colour gradient": gradient,
        "checkerboard": np.repeat(checker[..., None], 3, axis=-1),
    }


def token_grid_image(ids: np.ndarray, codebook_size: int, side: int) -> np.ndarray:
    """Token ids as colours (a fixed hue per id), scaled up to ``side`` pixels: repeated codes are visible."""
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(codebook_size, 3), dtype=np.uint8)
    return _enlarge(palette[ids], side)


def latent_grid_image(tokens: np.ndarray, side: int) -> np.ndarray:
    """Vector tokens (h, w, d) (latents or level ids) as colours: their first three principal components as
    RGB, so tokens alike look alike."""
    flat = tokens.reshape(-1, tokens.shape[-1]).astype(np.float64)  # (h*w, d)
    flat = flat - flat.mean(axis=0)
    _, _, axes = np.linalg.svd(flat, full_matrices=False)
    rgb = flat @ axes[:3].T  # (h*w, <=3)
    rgb = np.pad(rgb, ((0, 0), (0, 3 - rgb.shape[1])))
    span = np.ptp(rgb, axis=0)
    rgb = (rgb - rgb.min(axis=0)) / np.where(span > 0, span, 1.0)
    return _enlarge((rgb * 255).astype(np.uint8).reshape(*tokens.shape[:2], 3), side)


def _enlarge(grid: np.ndarray, side: int) -> np.ndarray:
    scale = max(1, side // grid.shape[0])
    return grid.repeat(scale, axis=0).repeat(scale, axis=1)


def lab_row(cache: PipelineCache, name: str, source) -> tuple[list, list]:
    """(gallery items, table row) of one preset's tokenizer on the picture."""
    r = arstudio.reconstruct(cache.get(name).tokenizer, source)
    side, grid = r.original.shape[0], f"{r.ids.shape[0]}x{r.ids.shape[1]}"
    picture = (
        token_grid_image(r.ids, r.codebook_size, side)
        if r.kind == "discrete"
        else latent_grid_image(r.ids, side)
    )
    items = [
        (r.original, f"{name}: input {side}px"),
        (r.reconstruction, f"{name}: reconstruction"),
        (picture, f"{name}: tokens {grid}"),
    ]
    tokens = " · ".join(f"{key} {value}" for key, value in r.summary().items())
    return items, [name, KIND_NAMES.get(r.kind, r.kind), side, grid, round(r.psnr, 2), tokens]


def run_lab(cache: PipelineCache, presets: list[str], picture: str | None, upload: str | None):
    """Gallery items and a table for the picture (the upload wins over the built-in choice). A preset that
    fails (weights missing, a tokenizer it cannot run) gets a row with the reason; the others still show."""
    if not presets:
        raise ValueError("tick at least one preset whose tokenizer to try")
    source = upload if upload else sample_pictures().get(picture)
    if source is None:
        raise ValueError("pick a built-in picture or upload one")
    load_image(source)  # a bad upload is the user's one error, not one per preset
    items, rows = [], []
    for name in presets:
        try:
            found, row = lab_row(cache, name, source)
        except Exception as err:  # reported in the row: the other presets' results stay on screen
            found, row = [], [name, "", None, "", None, f"error: {describe_error(err).splitlines()[0]}"]
        items += found
        rows.append(row)
    return items, pd.DataFrame(rows, columns=COLUMNS)


def build_tokenizer_lab(cache: PipelineCache, presets: list[str], preset: str) -> None:
    with gr.Row():
        chosen = gr.CheckboxGroup(
            presets, value=[preset], label="Tokenizers of these presets", elem_id="tokenizer-presets"
        )
        picture = gr.Dropdown(list(sample_pictures()), value="red circle", label="Built-in picture")
        upload = gr.File(label="...or upload an image", file_types=["image"], type="filepath")
    run = gr.Button("Tokenize and reconstruct", variant="primary", elem_id="tokenize")
    gallery = gr.Gallery(
        label="Input · reconstruction · token grid",
        columns=3,
        height="auto",
        format="png",
        elem_id="tokenizer-gallery",
    )
    table = gr.Dataframe(
        headers=COLUMNS, label="Per tokenizer", interactive=False, wrap=True, elem_id="tokenizer-table"
    )

    @readable_errors
    def on_run(names, picture_name, upload_path):
        return run_lab(cache, names, picture_name, upload_path)

    run.click(
        on_run, [chosen, picture, upload], [gallery, table], api_name="tokenize", concurrency_id=MODEL_QUEUE
    )

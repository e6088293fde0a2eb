"""The Tokenizer lab: an uploaded or built-in picture through each preset's tokenizer: reconstruction,
PSNR, the token grid (ids as colours) and how much of the codebook the picture uses."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pandas as pd

import arstudio
from arstudio.ui.common import MODEL_QUEUE, PipelineCache, readable_errors

COLUMNS = ["preset", "resolution", "token grid", "codebook", "PSNR dB", "codes used", "codebook usage %"]


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
    return {"red circle": circle, "two squares": squares, "colour gradient": gradient,
            "checkerboard": np.repeat(checker[..., None], 3, axis=-1)}  # fmt: skip


def token_grid_image(ids: np.ndarray, codebook_size: int, side: int) -> np.ndarray:
    """Token ids as colours (a fixed hue per id), scaled up to ``side`` pixels: repeated codes are visible."""
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(codebook_size, 3), dtype=np.uint8)
    scale = max(1, side // ids.shape[0])
    return palette[ids].repeat(scale, axis=0).repeat(scale, axis=1)


def run_lab(cache: PipelineCache, presets: list[str], picture: str | None, upload: str | None):
    """Gallery items and a table for the picture (the upload wins over the built-in choice)."""
    if not presets:
        raise ValueError("tick at least one preset whose tokenizer to try")
    source = upload if upload else sample_pictures().get(picture)
    if source is None:
        raise ValueError("pick a built-in picture or upload one")
    items, rows = [], []
    for name in presets:
        tokenizer = cache.get(name).tokenizer
        r = arstudio.reconstruct(tokenizer, source)
        side = r.original.shape[0]
        items += [(r.original, f"{name}: input {side}px"), (r.reconstruction, f"{name}: reconstruction"),
                  (token_grid_image(r.ids, r.codebook_size, side), f"{name}: tokens {r.ids.shape[0]}x{r.ids.shape[1]}")]  # fmt: skip
        rows.append([name, side, f"{r.ids.shape[0]}x{r.ids.shape[1]}", r.codebook_size, round(r.psnr, 2),
                     len(np.unique(r.ids)), round(100 * r.codebook_usage, 2)])  # fmt: skip
    return items, pd.DataFrame(rows, columns=COLUMNS)


def build_tokenizer_lab(cache: PipelineCache, presets: list[str], preset: str) -> None:
    with gr.Row():
        chosen = gr.CheckboxGroup(presets, value=[preset], label="Tokenizers of these presets",
                                  elem_id="tokenizer-presets")  # fmt: skip
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
    table = gr.Dataframe(headers=COLUMNS, label="Per tokenizer", interactive=False)

    @readable_errors
    def on_run(names, picture_name, upload_path):
        return run_lab(cache, names, picture_name, upload_path)

    run.click(
        on_run, [chosen, picture, upload], [gallery, table], api_name="tokenize", concurrency_id=MODEL_QUEUE
    )

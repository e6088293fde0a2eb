"""The Control tab: upload or draw a control image, pick its type and strength, see control and result side by
side. Shown when a control preset (task "control-to-image") is offered.

A drawing (white on black) or an uploaded control map is reduced to the model's resolution here (area
average, then a threshold): the pipeline itself never resizes. An uploaded *photo* can instead be turned
into the chosen control type with ``make_control`` (Canny edges or the foreground mask).
"""

from __future__ import annotations

import gradio as gr
import numpy as np
import torch
from PIL import Image

import arstudio
from arstudio.data.control import CONTROL_TYPES, make_control
from arstudio.ui.common import MODEL_QUEUE, PipelineCache, readable_errors

MAX_CONTROL_IMAGES = 8
CANVAS = 256  # drawing canvas side in pixels; the map is reduced to the model's resolution


def control_presets(presets: list[str]) -> list[str]:
    return [name for name in presets if arstudio.get_preset(name).task == "control-to-image"]


def _rgb(editor_value) -> np.ndarray:
    """The picture in an ImageEditor value (or a plain array) as uint8 (H, W, 3), transparency as black."""
    picture = editor_value.get("composite") if isinstance(editor_value, dict) else editor_value
    if picture is None:
        raise ValueError("upload or draw a control image first")
    picture = np.asarray(picture)
    if picture.ndim == 2:
        picture = np.stack([picture] * 3, axis=-1)
    if picture.shape[-1] == 4:  # RGBA: unpainted canvas is transparent, i.e. background
        alpha = picture[..., 3:4].astype(np.float32) / 255.0
        picture = (picture[..., :3].astype(np.float32) * alpha).astype(np.uint8)
    return picture[..., :3].astype(np.uint8)


def control_map(editor_value, kind: str, resolution: int, from_photo: bool) -> np.ndarray:
    """float32 (resolution, resolution) 0/1 control map from what the user uploaded or drew."""
    if kind not in CONTROL_TYPES:
        raise ValueError(f"control type {kind!r} is unknown; allowed: {CONTROL_TYPES}")
    small = np.asarray(Image.fromarray(_rgb(editor_value)).resize((resolution, resolution), Image.BOX))
    if from_photo:
        return make_control(small, kind)
    # A drawn map: bright strokes on a dark canvas; a stroke covering a quarter of a cell marks it.
    return (small.mean(axis=-1) / 255.0 >= 0.25).astype(np.float32)


def build_control_tab(cache: PipelineCache, presets: list[str]) -> None:
    offered = control_presets(presets)
    start = arstudio.get_preset(
        offered[0]
    )  # not loaded here: a preset without weights fails on use, readably
    names = list(start.class_names)
    with gr.Row():
        preset = gr.Dropdown(offered, value=offered[0], label="Control preset")
        class_name = gr.Dropdown(names, value=names[0] if names else None, label="Class",
                                 allow_custom_value=True)  # fmt: skip
        kind = gr.Radio(list(CONTROL_TYPES), value=CONTROL_TYPES[0], label="Control type")
    with gr.Row():
        strength = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Control strength")
        guidance = gr.Slider(0.0, 10.0, value=start.defaults.get("guidance_scale", 1.0), step=0.1,
                             label="Guidance scale (class)")  # fmt: skip
        separate = gr.Checkbox(False, label="Separate control guidance")
        control_guidance = gr.Slider(0.0, 10.0, value=3.0, step=0.1, label="Control guidance scale")
    with gr.Row():
        seed = gr.Number(0, precision=0, minimum=0, label="Seed (image i uses seed + i)")
        count = gr.Slider(1, MAX_CONTROL_IMAGES, value=4, step=1, label="Images")
        from_photo = gr.Checkbox(False, label="The upload is a picture: extract the control from it")
    with gr.Row():
        editor = gr.ImageEditor(
            value={"background": np.zeros((CANVAS, CANVAS, 3), np.uint8), "layers": [], "composite": None},
            type="numpy", label="Control image: draw white on black, or upload", elem_id="control-editor",
            brush=gr.Brush(colors=["#ffffff"], default_size=12, color_mode="fixed"),
        )  # fmt: skip
        used = gr.Image(label="Control map the model sees", type="numpy", interactive=False)
        gallery = gr.Gallery(label="Results", columns=2, format="png", elem_id="control-gallery")
    generate = gr.Button("Generate with control", variant="primary", elem_id="control-generate")
    status = gr.Markdown()

    @readable_errors
    def on_generate(name, label, kind_value, strength_value, guidance_value, separate_value, control_scale,
                    seed_value, count_value, photo, editor_value):  # fmt: skip
        pipe = cache.get(name)
        resolution = pipe.generator.config.control.resolution
        control = control_map(editor_value, kind_value, resolution, bool(photo))
        first = int(seed_value or 0)
        out = pipe(
            prompt=[label],
            num_images_per_prompt=int(count_value),
            generator=[torch.Generator().manual_seed(first + i) for i in range(int(count_value))],
            guidance_scale=float(guidance_value),
            control_image=control,
            control_type=kind_value,
            control_strength=float(strength_value),
            control_guidance_scale=float(control_scale) if separate_value else None,
        )  # fmt: skip
        preview = np.repeat(np.repeat((control * 255).astype(np.uint8), 8, axis=0), 8, axis=1)
        seconds = out.timings["total_s"]
        return (
            preview,
            [(im, f"{label} · seed {first + i}") for i, im in enumerate(out.images)],
            (
                f"{len(out.images)} image(s) in {seconds:.2f} s · {kind_value} control at strength {strength_value}"
            ),
        )

    def on_preset(name):
        labels = list(arstudio.get_preset(name).class_names)
        return gr.update(choices=labels, value=labels[0] if labels else None)

    inputs = [preset, class_name, kind, strength, guidance, separate, control_guidance, seed, count, from_photo,
              editor]  # fmt: skip
    generate.click(on_generate, inputs, [used, gallery, status], api_name="control_generate",
                   concurrency_id=MODEL_QUEUE)  # fmt: skip
    preset.input(readable_errors(on_preset), preset, class_name, api_name=False)

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
from arstudio.ui.common import MODEL_QUEUE, PipelineCache, cannot_load, status_errors
from arstudio.ui.controls import check_integer, check_number, parse_seed, random_seed, seed_box
from arstudio.ui.image_tab import preview_sheet
from arstudio.ui.streaming import Done, StopSwitches, generate_with_previews

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
    # Not loaded here: a preset without weights fails on use, readably.
    start = arstudio.get_preset(offered[0])
    names = list(start.class_names)
    with gr.Row():
        preset = gr.Dropdown(offered, value=offered[0], label="Control preset")
        class_name = gr.Dropdown(
            names, value=names[0] if names else None, label="Class", allow_custom_value=True
        )
        kind = gr.Radio(list(CONTROL_TYPES), value=CONTROL_TYPES[0], label="Control type")
    with gr.Row():
        strength = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Control strength (0-2)")
        guidance = gr.Number(
            start.defaults.get("guidance_scale", 1.0), step=0.1, label="Guidance scale (class)"
        )
        separate = gr.Checkbox(False, label="Separate control guidance", elem_id="control-separate")
        # Used only with separate guidance: greyed out (not editable) until that is ticked.
        control_guidance = gr.Number(
            3.0, step=0.1, label="Control guidance", interactive=False, elem_id="control-guidance"
        )
    with gr.Row():
        seed = seed_box("Seed (image i uses seed + i)", elem_id="control-seed")
        randomize = gr.Checkbox(False, label="Randomise seed")
        num_images = gr.Number(4, precision=0, label=f"Images (1-{MAX_CONTROL_IMAGES})")
    from_photo = gr.Checkbox(False, label="The upload is a picture: extract the control from it")
    with gr.Row():
        editor = gr.ImageEditor(
            value={"background": np.zeros((CANVAS, CANVAS, 3), np.uint8), "layers": [], "composite": None},
            type="numpy",
            label="Control map: draw or upload",
            elem_id="control-editor",
            brush=gr.Brush(colors=["#ffffff"], default_size=12, color_mode="fixed"),
        )
        used = gr.Image(label="Control map the model sees", type="numpy", interactive=False)
        gallery = gr.Gallery(label="Results", columns=2, format="png", elem_id="control-gallery")
    with gr.Row():
        generate = gr.Button("Generate with control", variant="primary", elem_id="control-generate")
        stop = gr.Button("Stop", variant="stop", elem_id="control-stop")
    seed_used = gr.Textbox(
        label="Seed used (image i: seed + i)", interactive=False, max_lines=1, elem_id="control-seed-used"
    )
    status = gr.Markdown(elem_id="control-status")
    notice = gr.Markdown(visible=False, elem_id="control-preset-notice")
    loaded = gr.State(offered[0])

    stops = StopSwitches()

    @status_errors(status)
    def on_generate(
        name,
        label,
        kind_value,
        strength_value,
        guidance_value,
        separate_value,
        control_scale,
        seed_value,
        randomise,
        count_value,
        photo,
        editor_value,
        session: gr.Request,
    ):
        yield {status: "starting...", seed_used: ""}  # the last request's status must not outlive it
        stop = stops.start(session.session_hash)
        pipe = cache.get(name)
        resolution = pipe.generator.config.control.resolution
        control = control_map(editor_value, kind_value, resolution, bool(photo))
        count = check_integer(count_value, "images", 1, MAX_CONTROL_IMAGES)
        first = random_seed(count) if randomise else parse_seed(seed_value, count)
        kwargs = dict(
            prompt=[label],
            num_images_per_prompt=count,
            generator=[torch.Generator().manual_seed(first + i) for i in range(count)],
            guidance_scale=check_number(guidance_value, "guidance_scale", 0.0),
            control_image=control,
            control_type=kind_value,
            control_strength=check_number(strength_value, "control strength", 0.0, 2.0),
            control_guidance_scale=check_number(control_scale, "control guidance", 0.0)
            if separate_value
            else None,
        )
        shown = np.repeat(np.repeat((control * 255).astype(np.uint8), 8, axis=0), 8, axis=1)
        for event in generate_with_previews(pipe, kwargs, stop=stop):
            if isinstance(event, Done):
                break
            yield {
                used: shown,
                gallery: [preview_sheet(event.images)],
                seed_used: str(first),
                status: f"token {event.step} / {event.total}",
            }
        out = event.output
        if not out.images:  # stopped: the pipeline returned its tokens, no images
            yield {gallery: None, status: "**Stopped.** Nothing was saved; Generate starts again."}
            return
        yield {
            used: shown,
            seed_used: str(first),
            gallery: [(im, f"{label} · seed {first + i}") for i, im in enumerate(out.images)],
            status: f"{len(out.images)} image(s) in {out.timings['total_s']:.2f} s · {kind_value} control "
            f"at strength {strength_value}",
        }

    def on_stop(session: gr.Request):
        stops.stop(session.session_hash)
        return {gallery: None, status: "**Stopped.** Nothing was saved; Generate starts again."}

    def on_preset(name, current):
        try:
            cache.get(name)  # loaded now: a preset without weights says so here, not on Generate
        except Exception as err:  # the form stays on the preset it had; the reason stays on screen
            return {
                preset: gr.update(value=current),
                notice: gr.update(visible=True, value=cannot_load(name, current, err)),
            }
        labels = list(arstudio.get_preset(name).class_names)
        return {
            class_name: gr.update(choices=labels, value=labels[0] if labels else None),
            loaded: name,
            notice: gr.update(visible=False),
        }

    inputs = [
        preset,
        class_name,
        kind,
        strength,
        guidance,
        separate,
        control_guidance,
        seed,
        randomize,
        num_images,
        from_photo,
        editor,
    ]
    event = generate.click(
        on_generate,
        inputs,
        [used, gallery, seed_used, status],
        api_name="control_generate",
        show_progress_on=[gallery],
        concurrency_id=MODEL_QUEUE,
    )
    stop.click(on_stop, None, [gallery, status], cancels=[event], api_name=False, queue=False)
    separate.change(
        lambda on: gr.update(interactive=bool(on)),
        separate,
        control_guidance,
        api_name=False,
        show_progress="hidden",
    )
    preset.select(
        on_preset,
        [preset, loaded],
        [preset, class_name, loaded, notice],
        api_name=False,
        show_progress="hidden",
    )

"""The Image tab: controls, Generate with streaming previews and progress, gallery, PNG downloads that carry
their recipe, Stop, and "load recipe from image"."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np

from arstudio.export import make_grid, png_bytes, read_png_metadata
from arstudio.ui.common import (
    MODEL_QUEUE,
    PipelineCache,
    cannot_load,
    is_text_preset,
    output_dir,
    readable_errors,
    status_errors,
)
from arstudio.ui.controls import (
    Controls,
    batch_of,
    build_controls,
    build_request,
    preset_updates,
    recipe_updates,
)
from arstudio.ui.prompt_words import unknown_prompt_warning
from arstudio.ui.streaming import Done, StopSwitches, generate_with_previews

MAX_RECIPE_BYTES = 20 * 2**20


def save_outputs(output, knobs: dict) -> list[Path]:
    """Each image as a PNG whose text chunk holds its full recipe (the strategy's knobs and the seeds of
    its batch included: batch composition can change pixels, see ``controls.recipe_updates``)."""
    folder = output_dir()
    paths = []
    batch = {"batch_seeds": list(output.seeds)}
    for index, (image, meta) in enumerate(zip(output.images, output.metadata, strict=True)):
        path = folder / f"arstudio_{meta['preset']}_{meta['seed']}_{index}.png"
        path.write_bytes(png_bytes(image, {**knobs, **meta, **batch}))
        paths.append(path)
    return paths


def read_recipe(path) -> dict:
    """The recipe inside a PNG this studio (or ``arstudio generate/render``) wrote; clear errors otherwise."""
    if path is None:
        raise ValueError("drop a PNG made by arstudio to load its recipe")
    path = Path(path)
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise ValueError(
            f"{path.name} is {path.stat().st_size / 2**20:.0f} MB; recipes come from PNGs under 20 MB"
        )
    try:
        meta = read_png_metadata(path)
    except KeyError as err:
        raise ValueError(
            f"{path.name} has no arstudio recipe: only PNGs saved by arstudio carry one"
        ) from err
    except Exception as err:  # PIL's errors for non-images vary by format
        raise ValueError(f"{path.name} is not a PNG image arstudio can read") from err
    if not isinstance(meta, dict) or "preset" not in meta or "seed" not in meta:
        raise ValueError(f"{path.name} carries an arstudio text chunk without a preset and seed")
    return meta


def preview_sheet(images: list) -> np.ndarray:
    """All previews of a request as one picture: Gradio encodes one image per update instead of one each."""
    return make_grid([np.asarray(image) for image in images], columns=min(4, len(images)))


def caption(meta: dict) -> str:
    return (
        f"{meta.get('class_name') or meta.get('prompt') or meta.get('class_label', '')} · seed {meta['seed']}"
    )


def build_image_tab(cache: PipelineCache, presets: list[str], preset: str) -> Controls:
    controls = build_controls(presets, cache.get(preset))
    # Where a preset that cannot load says why (and how to fix it) until another preset is picked.
    notice = gr.Markdown(visible=False, elem_id="preset-notice")
    loaded = gr.State(preset)  # the preset the form is set up for, restored when a pick fails to load
    with gr.Row():
        generate = gr.Button("Generate", variant="primary", elem_id="generate")
        stop = gr.Button("Stop", variant="stop", elem_id="stop")
    gallery = gr.Gallery(label="Images", columns=4, height="auto", elem_id="gallery", format="png")
    with gr.Row():
        seed_used = gr.Textbox(
            label="Seed used (image i: seed + i)", interactive=False, max_lines=1, elem_id="seed-used"
        )
        status = gr.Markdown(elem_id="status")
    files = gr.File(label="PNGs with their recipe", file_count="multiple", interactive=False)
    recipe = gr.File(
        label="Load recipe from image: drop a PNG made by arstudio", file_types=[".png"], elem_id="recipe"
    )

    stops = StopSwitches()
    STOPPED = "**Stopped.** Nothing was saved; Generate starts again."

    @status_errors(status)
    def on_generate(values: dict, session: gr.Request, progress=gr.Progress()):  # noqa: B008 - Gradio's idiom
        yield {status: "starting...", files: None, seed_used: ""}  # the last request's must not outlive it
        stop = stops.start(session.session_hash)
        request = build_request(cache, controls, values)
        warning = None
        if is_text_preset(request.pipe):
            warning = unknown_prompt_warning(request.pipe, request.kwargs["prompt"])
        if warning:
            gr.Warning(warning)
        note = f" · warning: {warning}" if warning else ""
        for event in generate_with_previews(request.pipe, request.kwargs, stop=stop):
            if isinstance(event, Done):
                break
            progress((event.step, event.total), desc="tokens")
            yield {
                gallery: [preview_sheet(event.images)],
                seed_used: str(request.seed),
                status: f"token {event.step} / {event.total}{note}",
            }
        output = event.output
        if not output.images:  # stopped: the pipeline returned its tokens, no images
            yield {gallery: None, files: None, status: STOPPED}
            return
        paths = save_outputs(output, request.knobs)
        seconds, forwards = output.timings["total_s"], output.stats.get("forwards")
        yield {
            gallery: [(str(p), caption(m)) for p, m in zip(paths, output.metadata, strict=True)],
            seed_used: str(request.seed),
            files: [str(p) for p in paths],
            status: f"{len(paths)} image(s) in {seconds:.2f} s · {forwards} forwards · "
            f"{request.kwargs['decoding']}{note}",
        }

    def on_stop(session: gr.Request):
        stops.stop(session.session_hash)  # the pipeline stops after its current token
        # The request is cancelled with its half-drawn previews: clear them and say what happened.
        return {gallery: None, files: None, status: STOPPED}

    def on_preset(name: str, current: str):
        try:
            pipe = cache.get(name)
        except Exception as err:  # the form stays usable on the preset it had; the reason stays on screen
            return {
                controls.preset: gr.update(value=current),
                loaded: current,
                notice: gr.update(visible=True, value=cannot_load(name, current, err)),
            }
        return {**preset_updates(controls, pipe), loaded: name, notice: gr.update(visible=False, value="")}

    @readable_errors
    def on_recipe(path):
        meta = read_recipe(path)
        updates = recipe_updates(controls, cache.get(meta["preset"]), meta)
        first, count = batch_of(meta)
        note = f" (made in a batch of {count} from seed {first}: restored whole)" if count > 1 else ""
        return {
            **updates,
            loaded: meta["preset"],
            notice: gr.update(visible=False),
            status: f"loaded the recipe of seed {meta['seed']} ({meta['preset']}){note}",
        }

    event = generate.click(
        on_generate,
        controls.inputs(),
        [gallery, seed_used, status, files],
        api_name="generate",
        concurrency_id=MODEL_QUEUE,
        show_progress_on=[gallery],
    )
    stop.click(on_stop, None, [gallery, status, files], cancels=[event], api_name=False, queue=False)
    # .select, not .input: .input fired twice per pick (on the option and on blur), and the second answer
    # could reset a field the user had already changed.
    controls.preset.select(
        on_preset,
        [controls.preset, loaded],
        [*controls.updatable(), loaded, notice],
        api_name="preset",
        show_progress="hidden",
    )
    recipe.upload(on_recipe, recipe, [*controls.updatable(), loaded, notice, status], api_name="load_recipe")
    return controls

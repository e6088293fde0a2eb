"""The Video tab: class, frames, sampling knobs, optional context clip upload (video prediction), Generate
with per-frame previews and progress, Stop, and mp4 / gif downloads with a JSON recipe beside them."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import torch

from arstudio.export import make_grid, mp4_available, read_video, save_videos
from arstudio.ui.common import MODEL_QUEUE, PipelineCache, cannot_load, output_dir, status_errors
from arstudio.ui.controls import check_integer, check_number, parse_seed, random_seed, seed_box
from arstudio.ui.streaming import Done, StopSwitches, generate_with_previews

MAX_VIDEOS = 4  # per request: each frame costs a few backbone passes per Euler step
PREVIEW_SCALE = 4  # 32 px frames are shown 4x larger (nearest neighbour)


VIDEO_TASK = "class-to-video"


def is_video_preset(pipe) -> bool:
    return pipe.preset.task == VIDEO_TASK


def frame_sheet(frames: list) -> np.ndarray:
    """The newest frame of each video side by side, enlarged: one picture per preview update."""
    sheet = make_grid([np.asarray(f) for f in frames], columns=len(frames))
    return sheet.repeat(PREVIEW_SCALE, axis=0).repeat(PREVIEW_SCALE, axis=1)


def first_loadable(cache: PipelineCache, presets: list[str]):
    """The first video preset whose weights load (None if none does: then there is no Video tab)."""
    for name in presets:
        try:
            return cache.get(name)
        except (FileNotFoundError, ValueError):
            continue
    return None


def read_context(path, max_frames: int) -> np.ndarray:
    """The uploaded context clip's frames; a file that does not decode is one line naming the file as the
    user called it (not Gradio's temp path, not the decoder's internals)."""
    name = Path(path).name
    if Path(path).suffix.lower() not in (".mp4", ".gif"):
        raise ValueError(f"context clip {name!r} is not an mp4 or gif file")
    try:
        return read_video(path, max_frames)
    except ValueError as err:
        if "frames; at most" in str(err):
            raise ValueError(f"context clip {name!r} is too long: at most {max_frames} frames") from None
        raise ValueError(
            f"context clip {name!r} could not be decoded as a video: use an mp4 or gif"
        ) from None


def build_video_tab(cache: PipelineCache, presets: list[str], start) -> None:
    names, defaults = list(start.preset.class_names), start.preset.defaults
    with gr.Row():
        preset = gr.Dropdown(presets, value=start.preset.name, label="Video preset", scale=1)
        class_name = gr.Dropdown(names, value=names[0], label="Class", scale=2, allow_custom_value=True)
    with gr.Row():
        num_frames = gr.Number(min(16, start.max_frames), precision=0, label=f"Frames (1-{start.max_frames})")
        num_videos = gr.Number(1, precision=0, label=f"Videos (1-{MAX_VIDEOS})")
        seed = seed_box("Seed (video i uses seed + i)", elem_id="video-seed")
        randomize = gr.Checkbox(True, label="Randomise seed", elem_id="video-randomize")
    with gr.Accordion("Sampling and context", open=False):
        with gr.Row():
            guidance = gr.Number(
                defaults.get("guidance_scale", 1.0), step=0.1, label="Guidance scale (1 = off)"
            )
            temperature = gr.Number(defaults.get("temperature", 1.0), step=0.05, label="Temperature (> 0)")
            steps = gr.Number(
                defaults.get("num_inference_steps", 20), precision=0, label="Euler steps per frame"
            )
            decay = gr.Number(0.0, step=0.05, label="Temporal decay (0 = off)")
            first_frame = gr.Radio(
                [("video model", "video"), ("image model (keyframe preset)", "image")],
                value=defaults.get("first_frame", "video"),
                label="First frame drawn by",
            )
        context = gr.File(
            label="Context clip (mp4/gif, frames of the preset's size): predict what follows",
            file_types=[".mp4", ".gif"],
            elem_id="video-context",
        )
    with gr.Row():
        generate = gr.Button("Generate video", variant="primary", elem_id="generate-video")
        stop = gr.Button("Stop", variant="stop", elem_id="stop-video")
    notice = gr.Markdown(visible=False, elem_id="video-preset-notice")
    loaded = gr.State(start.preset.name)
    preview = gr.Image(label="Newest frame of each video", elem_id="video-preview", format="png")
    video = gr.Video(label="First video", elem_id="video-output", autoplay=True, loop=True)
    status = gr.Markdown(elem_id="video-status")
    files = gr.File(label="mp4 / gif / recipe (json)", file_count="multiple", interactive=False)

    stops = StopSwitches()

    @status_errors(status)
    def on_generate(
        name,
        label,
        frames,
        count,
        seed_value,
        randomise,
        guidance_scale,
        temp,
        n_steps,
        decay_value,
        context_path,
        first_source,
        session: gr.Request,
        progress=gr.Progress(),  # noqa: B008
    ):
        yield {status: "starting...", files: None}  # the last request's status must not outlive it
        stop = stops.start(session.session_hash)
        pipe = cache.get(name)
        if not is_video_preset(pipe):
            raise ValueError(f"{name} is not a video preset")
        count = check_integer(count, "videos", 1, MAX_VIDEOS)
        frames = check_integer(frames, "frames", 1, pipe.max_frames)
        first = random_seed(count) if randomise else parse_seed(seed_value, count)
        kwargs = {
            "prompt": label,
            "num_frames": frames,
            "num_videos_per_prompt": count,
            "guidance_scale": check_number(guidance_scale, "guidance_scale", 0.0),
            "temperature": check_number(temp, "temperature", 0.0, low_open=True),
            "num_inference_steps": check_integer(n_steps, "Euler steps", 1, 1000),
            "temporal_decay": check_number(decay_value, "temporal decay", 0.0),
            "first_frame": first_source,
            "context_frames": read_context(context_path, pipe.max_frames) if context_path else None,
            "generator": [torch.Generator().manual_seed(first + i) for i in range(count)],
        }
        for event in generate_with_previews(pipe, kwargs, previews=frames, stop=stop):
            if isinstance(event, Done):
                break
            progress((event.step, event.total), desc="frames")
            yield {preview: frame_sheet(event.images), status: f"frame {event.step} / {event.total}"}
        output = event.output
        formats = ("mp4", "gif") if mp4_available() else ("gif",)  # gif needs no ffmpeg
        paths = save_videos(output, output_dir(), formats=formats, scale=PREVIEW_SCALE)
        seconds = output.timings["total_s"]
        shown = str(paths[0]) if formats[0] == "mp4" else None
        yield {
            preview: frame_sheet([v[-1] for v in output.frames]),
            video: shown,
            files: [str(p) for p in paths],
            status: f"{count} video(s) x {output.latents.shape[1]} frames in {seconds:.2f} s "
            f"({output.timings['frames_per_s']:.1f} frames/s) · seed {first}",
        }

    def on_stop(session: gr.Request):
        stops.stop(session.session_hash)
        return {preview: None, status: "**Stopped.** Nothing was saved; Generate starts again."}

    def on_preset(name, current):
        try:
            pipe = cache.get(name)
        except Exception as err:  # the form stays on the preset it had; the reason stays on screen
            return {
                preset: gr.update(value=current),
                notice: gr.update(visible=True, value=cannot_load(name, current, err)),
            }
        names, defaults = list(pipe.preset.class_names), pipe.preset.defaults
        return {
            class_name: gr.update(choices=names, value=names[0]),
            loaded: name,
            notice: gr.update(visible=False),
            num_frames: gr.update(label=f"Frames (1-{pipe.max_frames})"),
            guidance: gr.update(value=defaults.get("guidance_scale", 1.0)),
            steps: gr.update(value=defaults.get("num_inference_steps", 20)),
            first_frame: gr.update(value=defaults.get("first_frame", "video")),
        }

    inputs = [
        preset,
        class_name,
        num_frames,
        num_videos,
        seed,
        randomize,
        guidance,
        temperature,
        steps,
        decay,
        context,
        first_frame,
    ]
    event = generate.click(
        on_generate,
        inputs,
        [preview, video, status, files],
        api_name="generate_video",
        show_progress_on=[preview],
        concurrency_id=MODEL_QUEUE,
    )
    stop.click(on_stop, None, [preview, status], cancels=[event], api_name=False, queue=False)
    preset.select(
        on_preset,
        [preset, loaded],
        [preset, class_name, num_frames, guidance, steps, first_frame, loaded, notice],
        api_name="video_preset",
        show_progress="hidden",
    )

"""The Video tab: class, frames, sampling knobs, optional context clip upload (video prediction), Generate
with per-frame previews and progress, Stop, and mp4 / gif downloads with a JSON recipe beside them."""

from __future__ import annotations

import secrets

import gradio as gr
import numpy as np
import torch

from arstudio.export import make_grid, mp4_available, read_video, save_videos
from arstudio.ui.common import MODEL_QUEUE, PipelineCache, output_dir, readable_errors
from arstudio.ui.streaming import Done, generate_with_previews

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


def build_video_tab(cache: PipelineCache, presets: list[str], start) -> None:
    names, defaults = list(start.preset.class_names), start.preset.defaults
    with gr.Row():
        preset = gr.Dropdown(presets, value=start.preset.name, label="Video preset", scale=1)
        class_name = gr.Dropdown(names, value=names[0], label="Class", scale=2, allow_custom_value=True)
    with gr.Row():
        num_frames = gr.Slider(1, start.max_frames, value=16, step=1, label="Frames")
        num_videos = gr.Slider(1, MAX_VIDEOS, value=1, step=1, label="Videos")
        seed = gr.Number(0, precision=0, minimum=0, label="Seed (video i uses seed + i)")
        randomize = gr.Checkbox(True, label="Randomise seed")
    with gr.Accordion("Sampling and context", open=False):
        with gr.Row():
            guidance = gr.Slider(0.0, 10.0, value=defaults.get("guidance_scale", 1.0), step=0.1,
                                 label="Guidance scale (1 = off)")  # fmt: skip
            temperature = gr.Slider(0.05, 2.0, value=defaults.get("temperature", 1.0), step=0.05,
                                    label="Temperature")  # fmt: skip
            steps = gr.Slider(1, 100, value=defaults.get("num_inference_steps", 20), step=1,
                              label="Euler steps per frame")  # fmt: skip
            decay = gr.Slider(0.0, 5.0, value=0.0, step=0.05, label="Temporal decay (0 = off)")
            first_frame = gr.Radio([("video model", "video"), ("image model (keyframe preset)", "image")],
                                   value=defaults.get("first_frame", "video"), label="First frame drawn by")  # fmt: skip
        context = gr.File(label="Context clip (mp4/gif, frames of the preset's size): predict what follows",
                          file_types=[".mp4", ".gif"], elem_id="video-context")  # fmt: skip
    with gr.Row():
        generate = gr.Button("Generate video", variant="primary", elem_id="generate-video")
        stop = gr.Button("Stop", variant="stop", elem_id="stop-video")
    preview = gr.Image(label="Newest frame of each video", elem_id="video-preview", format="png")
    video = gr.Video(label="First video", elem_id="video-output", autoplay=True, loop=True)
    status = gr.Markdown(elem_id="video-status")
    files = gr.File(label="mp4 / gif / recipe (json)", file_count="multiple", interactive=False)

    @readable_errors
    def on_generate(name, label, frames, count, seed_value, random_seed, guidance_scale, temp, n_steps,
                    decay_value, context_path, first_source, progress=gr.Progress()):  # noqa: B008  # fmt: skip
        pipe = cache.get(name)
        if not is_video_preset(pipe):
            raise ValueError(f"{name} is not a video preset")
        count, frames = int(count), int(frames)
        first = secrets.randbelow(2**31) if random_seed else int(seed_value)
        kwargs = {
            "prompt": label,
            "num_frames": frames,
            "num_videos_per_prompt": count,
            "guidance_scale": float(guidance_scale),
            "temperature": float(temp),
            "num_inference_steps": int(n_steps),
            "temporal_decay": float(decay_value),
            "first_frame": first_source,
            "context_frames": read_video(context_path, pipe.max_frames) if context_path else None,
            "generator": [torch.Generator().manual_seed(first + i) for i in range(count)],
        }
        for event in generate_with_previews(pipe, kwargs, previews=frames):
            if isinstance(event, Done):
                break
            progress((event.step, event.total), desc="frames")
            yield {preview: frame_sheet(event.images), status: f"frame {event.step} / {event.total}"}
        output = event.output
        formats = ("mp4", "gif") if mp4_available() else ("gif",)  # gif needs no ffmpeg
        paths = save_videos(output, output_dir(), formats=formats, scale=PREVIEW_SCALE)
        seconds = output.timings["total_s"]
        shown = str(paths[0]) if formats[0] == "mp4" else None
        yield {preview: frame_sheet([v[-1] for v in output.frames]), video: shown,
               files: [str(p) for p in paths],
               status: f"{count} video(s) x {output.latents.shape[1]} frames in {seconds:.2f} s "
               f"({output.timings['frames_per_s']:.1f} frames/s) · seed {first}"}  # fmt: skip

    @readable_errors
    def on_preset(name):
        pipe = cache.get(name)
        names, defaults = list(pipe.preset.class_names), pipe.preset.defaults
        return {class_name: gr.update(choices=names, value=names[0]),
                num_frames: gr.update(maximum=pipe.max_frames),
                guidance: gr.update(value=defaults.get("guidance_scale", 1.0)),
                steps: gr.update(value=defaults.get("num_inference_steps", 20)),
                first_frame: gr.update(value=defaults.get("first_frame", "video"))}  # fmt: skip

    inputs = [preset, class_name, num_frames, num_videos, seed, randomize, guidance, temperature, steps, decay,
              context, first_frame]  # fmt: skip
    event = generate.click(on_generate, inputs, [preview, video, status, files], api_name="generate_video",
                           concurrency_id=MODEL_QUEUE)  # fmt: skip
    stop.click(None, None, None, cancels=[event])
    preset.input(
        on_preset, preset, [class_name, num_frames, guidance, steps, first_frame], api_name="video_preset"
    )

"""The arstudio studio: a Gradio app over the public API. ``create_app()`` builds it; ``launch()`` serves it.

Offline by design: Gradio's analytics and version check are switched off before Gradio is imported, the
server listens on 127.0.0.1 unless told otherwise, and no share link is made unless asked.
"""

from __future__ import annotations

import os

for _key, _value in (
    ("GRADIO_ANALYTICS_ENABLED", "False"),
    ("HF_HUB_DISABLE_TELEMETRY", "1"),
    ("GRADIO_SSR_MODE", "False"),
):
    os.environ.setdefault(_key, _value)

import gradio as gr  # noqa: E402

import arstudio  # noqa: E402
from arstudio.ui.common import DEFAULT_PRESET, MAX_UPLOAD, PipelineCache  # noqa: E402
from arstudio.ui.control_tab import build_control_tab, control_presets  # noqa: E402
from arstudio.ui.decoding_lab import build_decoding_lab  # noqa: E402
from arstudio.ui.image_tab import build_image_tab  # noqa: E402
from arstudio.ui.tokenizer_lab import build_tokenizer_lab  # noqa: E402
from arstudio.ui.video_tab import VIDEO_TASK, build_video_tab, first_loadable  # noqa: E402

__all__ = ["MAX_UPLOAD", "create_app", "launch"]
QUEUE_SIZE = 32  # waiting requests beyond this are refused with a message instead of piling up
TEST_PRESETS_ENV = "ARSTUDIO_SHOW_TEST_PRESETS"


def offered_presets(show_test_presets: bool | None = None) -> list[str]:
    """Every preset but the random-init ``test-*`` ones (noise to a user), unless asked for: by the
    argument or, when it is None, by ``ARSTUDIO_SHOW_TEST_PRESETS=1``."""
    if show_test_presets is None:
        show_test_presets = os.environ.get(TEST_PRESETS_ENV, "") == "1"
    return [name for name in arstudio.list_presets() if show_test_presets or not name.startswith("test-")]


def create_app(
    preset: str | None = None,
    device=None,
    presets: list[str] | None = None,
    show_test_presets: bool | None = None,
    load_options: dict | None = None,
) -> gr.Blocks:
    """Build the studio. ``preset``: selected at start (loaded now, so the first request is quick);
    ``presets``: those offered (default: all but the ``test-*`` ones, see ``offered_presets``; a test
    preset asked for as ``preset`` is offered too); ``device`` and ``load_options`` (e.g. ``compile``,
    ``attention_backend``): passed to ``arstudio.load_pipeline``."""
    if presets is None:
        presets = offered_presets(show_test_presets)
        presets += [preset] if preset and preset not in presets and preset in arstudio.list_presets() else []
    presets = list(presets)
    preset = preset or (DEFAULT_PRESET if DEFAULT_PRESET in presets else presets[0])
    if preset not in presets:
        raise ValueError(f"preset {preset!r} is not among the offered presets {presets}")
    cache = PipelineCache(device, load_options)
    cache.get(preset)  # fail at start-up, with the loader's message, rather than on first click
    # Video presets get their own tab; the image tabs offer the rest. The requested preset starts its own
    # kind of tab; the other kind starts at its first preset.
    video_presets = [p for p in presets if p in set(arstudio.list_presets(task=VIDEO_TASK))]
    image_presets = [p for p in presets if p not in video_presets]
    if preset in video_presets:
        video_order = [preset] + [p for p in video_presets if p != preset]
        image_start = image_presets[0] if image_presets else None
    else:
        video_order, image_start = video_presets, preset
    # delete_cache: Gradio's own copies of served files, cleared hourly (files older than a day go).
    with gr.Blocks(title="arstudio", delete_cache=(3600, 86400)) as app:
        gr.Markdown("# arstudio\nAutoregressive image generation: pick a preset, generate, inspect, compare.")
        if image_start is not None:  # only video presets offered: no image tabs with empty dropdowns
            with gr.Tab("Image", id="image"):
                controls = build_image_tab(cache, image_presets, image_start)
            with gr.Tab("Decoding lab", id="decoding"):
                build_decoding_lab(cache, controls)
            with gr.Tab("Tokenizer lab", id="tokenizer"):
                build_tokenizer_lab(cache, image_presets, image_start)
        video_start = first_loadable(cache, video_order)
        if video_start is not None:
            with gr.Tab("Video", id="video"):
                build_video_tab(cache, video_presets, video_start)
        if control_presets(presets):
            with gr.Tab("Control", id="control"):
                build_control_tab(cache, presets)
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return app


def launch(
    host: str = "127.0.0.1",
    port: int | None = 7860,
    share: bool = False,
    preset: str | None = None,
    device=None,
    block: bool = True,
    load_options: dict | None = None,
    **kwargs,
):
    """Serve the studio; ``block=False`` returns at once (tests, benchmarks). Returns the app.
    ``load_options``: more ``arstudio.load_pipeline`` arguments (``compile``, ``attention_backend``)."""
    app = create_app(preset=preset, device=device, load_options=load_options)
    app.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=MAX_UPLOAD,
        show_error=True,
        prevent_thread_lock=not block,
        ssr_mode=False,
        **kwargs,
    )
    return app

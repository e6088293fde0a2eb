"""What every tab shares: one cache of loaded pipelines, readable errors, and where output files go.

The studio imports only the public API: ``arstudio``'s top-level names and the public modules listed in
``tests/test_ui.py`` (export, decoding's table of strategies, reconstruction, render); that test checks it.
"""

from __future__ import annotations

import functools
import inspect
import shutil
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr

import arstudio
from arstudio.render import describe_error

DEFAULT_PRESET = "shapes-c2i"
MAX_IMAGES = 16  # per request: a CPU Space should answer in seconds, not minutes
MAX_UPLOAD = "20mb"  # Gradio refuses larger uploads before our code sees them
# Every event that runs a model shares this id, so one model call runs at a time (the KV cache is static).
MODEL_QUEUE = "model"


class PipelineCache:
    """Pipelines loaded on first use and kept; loading is serialised so two tabs never load twice. A video
    pipeline gets its keyframe image pipeline from here too, so that preset is loaded once for all tabs."""

    def __init__(self, device=None, load_options: dict | None = None):
        self.device = device
        self.load_options = load_options or {}  # more load_pipeline arguments: compile, attention_backend
        self._pipes: dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, preset: str):
        with self._lock:
            if preset not in self._pipes:
                pipe = arstudio.load_pipeline(preset, device=self.device, **self.load_options)
                if hasattr(pipe, "keyframe_loader"):  # a video pipeline: its keyframe preset comes from here
                    pipe.keyframe_loader = self.get
                self._pipes[preset] = pipe
            return self._pipes[preset]


def user_error(err: BaseException) -> gr.Error:
    """A gr.Error for ``err``: the browser shows the message, never a traceback, and the app keeps serving."""
    if isinstance(err, gr.Error):
        return err
    return gr.Error(describe_error(err), print_exception=False)


OUTPUT_ROOT = Path(tempfile.gettempdir()) / "arstudio-studio"
OUTPUT_LIFETIME_S = 3600  # a long-running Space must not fill its disk with old downloads


def error_status(err: BaseException) -> str:
    """An error as a status line that stays on the page (a toast vanishes after a few seconds)."""
    return f"**Error:** {describe_error(err).splitlines()[0]}"


def status_errors(status):
    """Like ``readable_errors`` for a generator handler with a ``status`` output: an error is first written
    into ``status`` (so no earlier "4 image(s) in 1.2 s" stays beside it), then raised for the toast and
    API clients."""

    def wrap(handler):
        @functools.wraps(handler)
        def stream(*args, **kwargs):
            try:
                yield from handler(*args, **kwargs)
            except Exception as err:
                yield {status: error_status(err)}
                raise user_error(err) from None

        return stream

    return wrap


def cannot_load(name: str, current: str, err: BaseException) -> str:
    """The persistent notice for a preset that does not load: why, the fix (the loader's message names
    where to put the files, or how to download them), and that the form stayed on ``current``."""
    return f"**{name} cannot be loaded; the form stays on {current}.**\n\n{as_markdown(describe_error(err))}"


def as_markdown(message: str) -> str:
    """A loader's plain-text message as wrapped Markdown: "* " lines become list items and the indented
    lines under one stay in it (a code block would run off the side of the page)."""
    lines = []
    for line in message.splitlines():
        text = line.strip()
        if text.startswith("* "):
            lines.append(f"- {text[2:]}")
        elif line.startswith(" ") and lines:
            lines[-1] += "  "  # a hard line break inside the item
            lines.append(f"  {text}")
        else:
            lines.append(f"\n{text}")
    return "\n".join(lines)


def readable_errors(handler):
    """Wrap a Gradio handler (plain or generator) so any error reaches the user as ``user_error``."""
    if inspect.isgeneratorfunction(handler):

        @functools.wraps(handler)
        def stream(*args, **kwargs):
            try:
                yield from handler(*args, **kwargs)
            except Exception as err:
                raise user_error(err) from None

        return stream

    @functools.wraps(handler)
    def call(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except Exception as err:
            raise user_error(err) from None

    return call


def output_dir() -> Path:
    """A fresh folder per request for the PNGs a user downloads (inside the temp dir Gradio may serve);
    folders of requests older than an hour are removed on the way."""
    OUTPUT_ROOT.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in OUTPUT_ROOT.iterdir():
        if old.is_dir() and now - old.stat().st_mtime > OUTPUT_LIFETIME_S:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=OUTPUT_ROOT))


def is_text_preset(pipe) -> bool:
    return pipe.text_encoder is not None

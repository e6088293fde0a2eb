"""Run a pipeline call in a worker thread and hand back partial-token previews as they come.

Gradio streams a generator function's yields to the browser; the pipeline reports progress through its
``callback_on_step_end``. The thread joins the two: the callback queues previews, the generator yields them.
Closing the generator (the user pressed Stop, or left) sets ``stop``; the callback then returns False and
the pipeline stops after the current token instead of finishing an image nobody will see.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class Preview:
    step: int  # tokens generated so far
    total: int  # tokens per image
    images: list  # PIL previews, ungenerated area grey


@dataclass
class Done:
    output: object  # the pipeline's ImageOutput


def previews_every(total: int, count: int = 8) -> int:
    """Decode a preview about ``count`` times per image: often enough to watch, cheap next to sampling."""
    return max(1, total // count)


def generate_with_previews(
    pipe, kwargs: dict, previews: int = 8, min_interval_s: float = 0.5
) -> Iterator[Preview | Done]:
    """Yield ``Preview`` items while ``pipe(**kwargs)`` samples, then one ``Done``; re-raise its error.

    At most ``previews`` per image, at least ``min_interval_s`` apart, and never while the last one is
    still waiting: each preview costs a decode here and an image encode in Gradio, so a fast request gets
    few or none and a slow one (hundreds of tokens) gets a steady stream.
    """
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    last = [time.monotonic()]

    def on_step(step: int, total: int, tokens) -> bool:
        if stop.is_set():
            return False
        done, now = step + 1, time.monotonic()
        due = done % previews_every(total, previews) == 0 and now - last[0] >= min_interval_s
        if due and done < total and events.empty():
            events.put(Preview(done, total, pipe.preview(tokens)))
            last[0] = now
        return True

    def work() -> None:
        try:
            events.put(Done(pipe(**kwargs, callback_on_step_end=on_step)))
        except BaseException as err:  # handed to the generator, which raises it for the user to see
            events.put(err)

    thread = threading.Thread(target=work, name="arstudio-generate", daemon=True)
    thread.start()
    try:
        while True:
            item = events.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Done):
                return
    finally:
        stop.set()  # also reached when Gradio closes the generator on Stop
        thread.join()

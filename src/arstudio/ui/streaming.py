"""Run a pipeline call in a worker thread and hand back partial-token previews as they come.

Gradio streams a generator function's yields to the browser; the pipeline reports progress through its
``callback_on_step_end``. The thread joins the two: the callback queues previews, the generator yields them.
Closing the generator (the user left) sets ``stop``; the callback then returns False and the pipeline
stops after the current token instead of finishing an image nobody will see. Stop cannot rely on that:
Gradio cancels the request at once but can close the generator only between two of its items, and with
rationed previews the next item may be the finished image. So the Stop button also sets the request's
``stop`` event directly (``StopSwitches``), and the model is free again one token later.
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


class StopSwitches:
    """One stop event per browser session's running request, so a Stop click reaches its pipeline."""

    def __init__(self):
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str | None) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._events[session or ""] = event
        return event

    def stop(self, session: str | None) -> None:
        with self._lock:
            event = self._events.pop(session or "", None)
        if event is not None:
            event.set()


def generate_with_previews(
    pipe,
    kwargs: dict,
    previews: int = 8,
    min_interval_s: float = 0.5,
    max_share: float = 0.05,
    stop: threading.Event | None = None,
) -> Iterator[Preview | Done]:
    """Yield ``Preview`` items while ``pipe(**kwargs)`` samples, then one ``Done``; re-raise its error.

    Previews cost a decode in the sampling thread (and an image encode in Gradio), so they are rationed:
    at most ``previews`` per image, the first after ``min_interval_s``, each next one only once the time
    since the last is ``1 / max_share`` times what the last one cost (so previews take about ``max_share``
    of the run), and never while the last one is still waiting to be shown. A quick request gets one or
    none; a long one (hundreds of tokens, a big model) gets a steady stream. Setting ``stop`` stops the
    pipeline after its current token.
    """
    events: queue.Queue = queue.Queue()
    stop = stop or threading.Event()
    last = {"at": time.monotonic(), "cost": 0.0}

    def on_step(running, step: int, timestep: int, tensors: dict) -> dict:  # diffusers' callback contract
        if stop.is_set():
            running.interrupt = True
            return tensors
        tokens, total = next(iter(tensors.values())), running.num_timesteps
        done, now = timestep + 1, time.monotonic()
        wait = max(min_interval_s, last["cost"] / max_share)
        due = done % previews_every(total, previews) == 0 and now - last["at"] >= wait
        if due and done < total and events.empty():
            images = pipe.preview(tokens)
            events.put(Preview(done, total, images))
            last["at"] = time.monotonic()
            last["cost"] = last["at"] - now
        return tensors

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

"""Side-by-side speed measurement on a shared machine: settings interleaved within every repeat, so that
noise from other work hits each one alike, and the CPU pressure that tells how noisy the cores were."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path


def cpu_pressure() -> str:
    """The 'some' line of /proc/pressure/cpu: how much other work competed for the cores."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return "unavailable"


def median_seconds_per_image(
    pipe,
    call: dict,
    settings: dict[str, dict],
    batch: int,
    repeats: int,
    generator_for: Callable[[int], object],
    progress: Callable[[int, str], None] | None = None,
) -> dict[str, float]:
    """Median seconds per image of each setting: ``pipe(**call, **setting)`` on ``batch`` images, seeded by
    ``generator_for(repeat)``; repeat 0 warms caches and neighbour tables and is not timed."""
    seconds = {name: [] for name in settings}
    for repeat in range(repeats + 1):
        for name, setting in settings.items():
            start = time.perf_counter()
            pipe(**call, generator=generator_for(repeat), output_type="np", **setting)
            if repeat:
                seconds[name].append((time.perf_counter() - start) / batch)
            if progress is not None:
                progress(repeat, name)
    return {name: statistics.median(values) for name, values in seconds.items()}

"""CPU time of a pipeline's decoding settings under two or more modes of the same code, interleaved.

A *mode* is a function that sets the pipeline up (e.g. flags its steps compiled, or un-prepacks its linear
layers); every repeat runs every mode and every setting in turn, so machine noise hits all alike. CPU time
(``time.process_time``) per image, median over the repeats after a dropped warm-up pass; each setting's
speed-up is against the AR of its own mode.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

LANTERN_PP = {"decoding": "lantern", "lantern_k": 8, "lantern_delta": 1.0, "lantern_lambda": 5.0}


def side_by_side(
    pipe, label: str, settings: dict[str, dict], modes: dict[str, Callable], batch: int, repeats: int
) -> dict:
    """{"SETTING | MODE": {"cpu_ms_per_image", "speedup"}} for every setting ("ar" among them) and mode;
    prints a line each. The last mode is left set up."""
    labels = list(range(batch))
    seconds: dict[tuple[str, str], list[float]] = {}
    for repeat in range(repeats + 1):  # the first pass warms up and is dropped
        for mode, set_up in modes.items():
            set_up()
            for name, setting in settings.items():
                generators = [torch.Generator().manual_seed(i) for i in labels]
                start = time.process_time()
                pipe(class_labels=labels, generator=generators, output_type="np", **setting)
                if repeat:
                    seconds.setdefault((mode, name), []).append(time.process_time() - start)
    rows = {}
    for (mode, name), values in seconds.items():
        median, ar = statistics.median(values), statistics.median(seconds[(mode, "ar")])
        ms = median * 1e3 / batch
        rows[f"{name} | {mode}"] = {"cpu_ms_per_image": round(ms, 1), "speedup": ar / median}
        print(f"{label} b{batch} {mode:12s} {name:24s} {ms:8.1f} ms/image  x{ar / median:.2f}")
    return rows

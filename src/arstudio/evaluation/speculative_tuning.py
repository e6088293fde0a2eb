"""``arstudio tune-speculative``: measure draft shapes against plain AR and keep the fastest per strategy.

Every setting of the grid (plain AR; exact speculative and LANTERN at each draft depth x width; LANTERN at
each budget delta for the best shape) decodes the same requests, interleaved within each repeat so that
machine noise hits every setting alike; the median seconds per image gives each one's speed-up over AR.
CPU pressure (/proc/pressure/cpu) before and after is recorded with the curve.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import torch

from arstudio.decoding.knobs import LANTERN_DELTA
from arstudio.decoding.speculative_defaults import write_defaults
from arstudio.evaluation.timing import cpu_pressure, median_seconds_per_image


def _call(pipe, batch: int) -> dict:
    """The condition of ``batch`` images: classes 0, 1, ... or a fixed caption."""
    if pipe.text_encoder is None:
        return {"class_labels": [i % pipe.generator.config.num_classes for i in range(batch)]}
    return {"prompt": ["a red circle and a blue square"] * batch}


def grid(depths, widths, deltas, lantern: bool) -> dict[str, dict]:
    """The settings to measure, by name: AR, then each strategy at each (depth, width), LANTERN at each delta."""
    settings = {"ar": {"decoding": "ar"}}
    for d, w in itertools.product(depths, widths):
        settings[f"speculative d{d} w{w}"] = {"decoding": "speculative", "draft_tokens": d, "draft_width": w}
        if lantern:  # the default budget first: the shape is chosen there
            for delta in dict.fromkeys([LANTERN_DELTA.default, *deltas]):
                settings[f"lantern d{d} w{w} delta{delta:g}"] = {
                    "decoding": "lantern",
                    "draft_tokens": d,
                    "draft_width": w,
                    "lantern_delta": delta,
                }
    return settings


def measure(pipe, settings: dict[str, dict], batch: int, repeats: int, progress=None) -> dict[str, float]:
    """Median seconds per image of each setting (a warm-up round first, untimed)."""
    return median_seconds_per_image(
        pipe,
        _call(pipe, batch),
        settings,
        batch,
        repeats,
        generator_for=lambda repeat: [
            torch.Generator().manual_seed(repeat * batch + i) for i in range(batch)
        ],
        progress=progress,
    )


def tune_speculative(
    pipe,
    depths=(2, 3, 4, 6),
    widths=(1, 2, 3),
    deltas=(0.5,),
    batch: int = 1,
    repeats: int = 3,
    out=None,
    progress=None,
) -> dict:
    """Measure the grid on ``pipe`` and write the fastest (draft_tokens, draft_width) of each strategy into
    ``out`` (default: the preset's weights folder); LANTERN's shape is chosen at its default budget, the
    other ``deltas`` are measured for the curve. Returns what was written, with the curve."""
    if "speculative" not in pipe.decoding_strategies:
        raise ValueError(
            f"preset {pipe.preset.name!r} has no drafter for decoding='speculative': tune-speculative "
            "needs one (train it with `arstudio train drafter`)"
        )
    for name, values, low in (
        ("depths", depths, 1),
        ("widths", widths, 1),
        ("batch", [batch], 1),
        ("repeats", [repeats], 1),
    ):
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in values):
            raise ValueError(f"{name}={list(values)!r} is not allowed: integers >= {low}")
    lantern = "lantern" in pipe.decoding_strategies
    settings = grid(depths, widths, deltas, lantern)
    before = cpu_pressure()
    seconds = measure(pipe, settings, batch, repeats, progress)
    curve = [
        {
            "name": name,
            **setting,
            "ms_per_image": round(1000 * seconds[name], 2),
            "speedup": seconds["ar"] / seconds[name],
        }
        for name, setting in settings.items()
    ]
    best = {}
    for strategy in ("speculative", "lantern") if lantern else ("speculative",):
        rows = [
            row
            for row in curve
            if row["decoding"] == strategy
            and row.get("lantern_delta", LANTERN_DELTA.default) == LANTERN_DELTA.default
        ]
        top = max(rows, key=lambda row: row["speedup"])
        best[strategy] = {"draft_tokens": top["draft_tokens"], "draft_width": top["draft_width"]}
    measured = {
        "batch": batch,
        "repeats": repeats,
        "device": str(pipe.device),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpu_pressure_before": before,
        "cpu_pressure_after": cpu_pressure(),
        "curve": curve,
    }
    folder = Path(out) if out is not None else pipe.preset.weights_dir
    if folder is None:
        raise ValueError(f"preset {pipe.preset.name!r} has no weights folder: give --out")
    folder.mkdir(parents=True, exist_ok=True)
    path = write_defaults(folder, best, measured)
    return {"path": str(path), "best": best, "measured": measured}

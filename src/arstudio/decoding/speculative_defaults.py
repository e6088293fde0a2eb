"""A preset's measured speculative defaults: ``speculative_defaults.json`` beside its weights.

``arstudio tune-speculative --preset P`` measures the speed-up of draft shapes (depth x width) against plain
AR on this machine and writes the fastest shape per strategy here, with the curve it measured; the pipeline
then uses those knob values when a call does not give them. Only shape knobs are tuned (``TUNED``): the
LANTERN budget trades quality for speed, so it stays the caller's choice (the curve shows its effect).

    {"speculative": {"draft_tokens": 3, "draft_width": 2}, "lantern": {...}, "measured": {...}}
"""

from __future__ import annotations

import json
from pathlib import Path

from arstudio.decoding.knobs import DRAFT_TOKENS, DRAFT_WIDTH
from arstudio.io import atomic_write_bytes

FILE_NAME = "speculative_defaults.json"
TUNED = {knob.name: knob for knob in (DRAFT_TOKENS, DRAFT_WIDTH)}
STRATEGIES = ("speculative", "lantern")


def read_defaults(folder) -> dict[str, dict]:
    """{strategy: {knob: value}} from ``folder``'s file ({} when there is none); a bad entry is a one-line
    error naming the file, the entry and what is allowed."""
    path = Path(folder) / FILE_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); rerun `arstudio tune-speculative`") from None
    defaults = {}
    for strategy in STRATEGIES:
        knobs = data.get(strategy, {}) if isinstance(data, dict) else None
        if not isinstance(knobs, dict) or not set(knobs) <= set(TUNED):
            raise ValueError(f"{path}: {strategy}={knobs!r} is not allowed: a mapping of {sorted(TUNED)}")
        try:
            defaults[strategy] = {name: TUNED[name].check(value) for name, value in knobs.items()}
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    return defaults


def write_defaults(folder, best: dict[str, dict], measured: dict) -> Path:
    """Write the best knob values per strategy and the measurement behind them; returns the file's path."""
    path = Path(folder) / FILE_NAME
    unknown = set(best) - set(STRATEGIES)
    if unknown:
        raise ValueError(f"cannot tune strategies {sorted(unknown)}: allowed are {STRATEGIES}")
    data = {name: {k: v for k, v in knobs.items() if k in TUNED} for name, knobs in best.items()}
    atomic_write_bytes(path, (json.dumps({**data, "measured": measured}, indent=1) + "\n").encode())
    return path

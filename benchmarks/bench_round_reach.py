"""What attending over a round's reach saves: eager speculative rounds with the ``kv_len`` cut (the default)
against the same rounds over the whole static cache (what a compiled step does), beside plain AR.

The whole-cache rounds are made by flagging the eager steps as compiled (``static_shapes``), so both modes
run the same code and the same seeds; only the attention width differs. CPU time, interleaved
(``side_by_side``), one thread.

    python -m benchmarks.bench_round_reach [--presets shapes-c2i shapes-c2i-256] [--batch 1] [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch

from arstudio.pipelines.loading import load_pipeline
from benchmarks.common import finish, header
from benchmarks.side_by_side import LANTERN_PP, side_by_side

SETTINGS = {
    "ar": {"decoding": "ar"},
    "speculative": {"decoding": "speculative"},
    "speculative g3 w3": {"decoding": "speculative", "draft_tokens": 3, "draft_width": 3},
    "lantern++ k=8 l=5": LANTERN_PP,
    "lantern++ k=8 l=5 g3 w3": {**LANTERN_PP, "draft_tokens": 3, "draft_width": 3},
}


def whole_cache(models, on: bool) -> None:
    """Flag (or unflag) every model's step as compiled: the sampler then keeps the whole cache."""
    for model in models:
        model.__dict__.pop("step", None)
        if on:
            eager = model.step

            def step(*args, _eager=eager, **kwargs):
                return _eager(*args, **kwargs)

            step.static_shapes = True
            model.step = step


def measure(preset: str, batch: int, repeats: int) -> dict:
    pipe = load_pipeline(preset, device="cpu")
    models = [pipe.generator, pipe.drafter]
    modes = {"whole cache": lambda: whole_cache(models, True), "reach": lambda: whole_cache(models, False)}
    return side_by_side(pipe, preset, SETTINGS, modes, batch, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["shapes-c2i", "shapes-c2i-256"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = header("round_reach")
    results = {preset: measure(preset, args.batch, args.repeats) for preset in args.presets}
    finish(info, {"batch": args.batch, "repeats": args.repeats, "results": results})


if __name__ == "__main__":
    main()

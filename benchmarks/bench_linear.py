"""The CPU linear fast path (``nn/prepacked.py``), side by side with ``F.linear`` in one run.

1. Layers: microseconds per call of ``F.linear`` and of ``PrepackedLinear`` at the row counts decoding
   uses (1-2 rows: an AR step with guidance; 8-32: a speculative verify), for the shapes presets' widths.
2. Pipelines: CPU ms per image (``time.process_time``, median of interleaved repeats, one thread) of plain
   AR and speculative settings with every small linear prepacked and with none, and each setting's speed-up
   over the AR of the same mode.

    python -m benchmarks.bench_linear [--presets shapes-c2i shapes-c2i-256] [--batch 1] [--repeats 4]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from arstudio.nn.prepacked import prepack_linears
from arstudio.pipelines.loading import load_pipeline
from benchmarks.common import finish, header
from benchmarks.side_by_side import LANTERN_PP, side_by_side

LAYERS = ((128, 384), (128, 512), (192, 576), (192, 512))  # (in, out): attention, MLP, head widths
ROWS = (1, 2, 4, 8, 16, 32)
SETTINGS = {
    "ar": {"decoding": "ar"},
    "speculative": {"decoding": "speculative"},
    "speculative g3 w3": {"decoding": "speculative", "draft_tokens": 3, "draft_width": 3},
    "lantern++ k=8 l=5": LANTERN_PP,
    "lantern++ k=8 l=5 g1": {**LANTERN_PP, "draft_tokens": 1},
}


def microseconds(fn, calls: int = 2000) -> float:
    for _ in range(50):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


@torch.no_grad()
def layers() -> dict:
    rows = {}
    for fan_in, fan_out in LAYERS:
        plain = nn.Linear(fan_in, fan_out, bias=False)
        packed = nn.Linear(fan_in, fan_out, bias=False)
        packed.load_state_dict(plain.state_dict())
        prepack_linears(packed)
        for count in ROWS:
            x = torch.randn(1, count, fan_in)
            a, b = microseconds(lambda: plain(x)), microseconds(lambda: packed(x))  # noqa: B023
            rows[f"{fan_in}->{fan_out} x{count}"] = {"f_linear_us": a, "prepacked_us": b, "ratio": a / b}
            print(
                f"layer {fan_in}->{fan_out} rows {count:2d}: F.linear {a:6.1f} us  prepacked {b:6.1f} us  x{a / b:.2f}"
            )
    return rows


def pipelines(preset: str, batch: int, repeats: int) -> dict:
    pipe = load_pipeline(preset, device="cpu")
    models = [pipe.generator, pipe.drafter]

    def prepacked(enable: bool):
        return lambda: [prepack_linears(model, enable=enable) for model in models]

    modes = {"F.linear": prepacked(False), "prepacked": prepacked(True)}
    return side_by_side(pipe, preset, SETTINGS, modes, batch, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["shapes-c2i", "shapes-c2i-256"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = header("linear")
    results = {"layers": layers()}
    results.update({preset: pipelines(preset, args.batch, args.repeats) for preset in args.presets})
    finish(info, {"batch": args.batch, "repeats": args.repeats, "results": results})


if __name__ == "__main__":
    main()

"""Decoding speed: tokens/s of the KV-cached sampler vs the no-cache loop, side by side in one run, at
batch 1 and 16, for 256 tokens (16x16 grid, shapes-c2i's backbone widths, random weights: speed does not
depend on the values) and for the shipped 64-token shapes-c2i.

    python -m benchmarks.bench_decode_speed [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from arstudio.decoding.autoregressive import sample_autoregressive
from arstudio.decoding.logits import SamplingParams
from arstudio.generators.image import ImageGenerator
from arstudio.pipelines.loading import load_pipeline
from arstudio.presets import get_preset
from benchmarks.common import cpu_pressure, finish, header


def tokens_per_s(model, batch: int, use_cache: bool, repeats: int) -> float:
    labels = torch.arange(batch) % model.config.num_classes
    times = []
    for r in range(repeats):
        gens = [torch.Generator().manual_seed(r * 1000 + i) for i in range(batch)]
        start = time.perf_counter()
        # guidance 1: one stream per image, so tokens/s counts what is generated, not the CFG twin.
        sample_autoregressive(model, labels, gens, SamplingParams(guidance_scale=1.0), use_cache=use_cache)
        times.append(time.perf_counter() - start)
    return batch * model.seq_len / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    info = header("decode_speed")
    config = get_preset("shapes-c2i").generator
    big = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, grid_size=16))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        models = {
            "256 tokens (16x16)": ImageGenerator(big).eval(),
            "64 tokens (shapes-c2i)": load_pipeline("shapes-c2i", device="cpu").generator,
        }
    results = {}
    for name, model in models.items():
        for batch in (1, 16):
            cached = tokens_per_s(model, batch, True, args.repeats)
            uncached = tokens_per_s(model, batch, False, args.repeats)
            key = f"{name}, batch {batch}"
            results[key] = {
                "cached_tok_s": round(cached, 1),
                "no_cache_tok_s": round(uncached, 1),
                "speedup": round(cached / uncached, 2),
                "cpu_pressure": cpu_pressure(),
            }
            print(
                f"{key:32s} cached {cached:8.1f} tok/s   no cache {uncached:8.1f} tok/s   x{cached / uncached:.2f}"
            )
    finish(info, {"results": results, "repeats": args.repeats})


if __name__ == "__main__":
    main()

"""shapes-t2i: share of images holding exactly the described objects (shape, colour, size, region) for
held-out random captions, at the preset's default guidance, without guidance, and with negative prompts.

    python -m benchmarks.bench_shapes_t2i [--count 200] [--batch 50]

Negative prompts: each image gets another random caption (from a different seed) as its negative prompt,
so guidance pushes away from objects that were not asked for.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from arstudio.data.shapes import make_text_item
from arstudio.evaluation.verifier import verify_objects
from arstudio.pipelines.loading import load_pipeline
from benchmarks.common import finish, header

HELDOUT_SEED = 4242  # training used seed 0


def accuracy(pipe, items, batch: int, seed: int, negatives=None, **kwargs) -> tuple[list[bool], float]:
    """Exact match per item and images/s over ``items`` (image, caption, objects), ``batch`` prompts a call."""
    generator = torch.Generator().manual_seed(seed)
    correct, start = [], time.perf_counter()
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        if negatives is not None:
            kwargs["negative_prompt"] = negatives[i : i + batch]
        out = pipe(
            prompt=[caption for _, caption, _ in chunk], generator=generator, output_type="np", **kwargs
        )
        correct += [
            verify_objects(image, objects) for image, (_, _, objects) in zip(out.images, chunk, strict=True)
        ]
    return correct, len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shapes-t2i")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    info = header("shapes_t2i")
    pipe = load_pipeline(args.preset, device="cpu")
    size = pipe.tokenizer.config.resolution
    items = [make_text_item(HELDOUT_SEED, i, size) for i in range(args.count)]
    negatives = [make_text_item(HELDOUT_SEED + 1, i, size)[1] for i in range(args.count)]
    two = sum(len(objects) == 2 for _, _, objects in items)
    default_scale = pipe.preset.defaults["guidance_scale"]
    settings = {
        f"guidance {default_scale} (default)": {},
        "no guidance (scale 1)": {"guidance_scale": 1.0},
        f"guidance {default_scale} + negative prompts": {"negatives": negatives},
    }
    results = {"preset": args.preset, "captions": args.count, "two_object_captions": two}
    for name, kwargs in settings.items():
        correct, speed = accuracy(pipe, items, args.batch, args.seed, **kwargs)
        by_count = {
            n: [ok for ok, (_, _, objs) in zip(correct, items, strict=True) if len(objs) == n] for n in (1, 2)
        }
        acc, one, both = (float(np.mean(c)) for c in (correct, by_count[1], by_count[2]))
        results[name] = {
            "exact_match": acc,
            "one_object": one,
            "two_objects": both,
            "images_per_s": round(speed, 1),
        }
        print(
            f"{name:40s} exact match {acc:.3f} (one object {one:.3f}, two {both:.3f})   {speed:.1f} images/s"
        )
    finish(info, results)


if __name__ == "__main__":
    main()

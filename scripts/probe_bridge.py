"""Quick verifier probe of shapes-c2i-bridge generators (shipped, or training runs and their checkpoints, with
the shipped bridge tokenizer or another one):
``count`` images, labels i % 24, one generator per image seeded 9000 + i (not the benchmark's seed 0), at each
guidance / temperature setting.

    python scripts/probe_bridge.py [--weights runs/gen-shapes-c2i-bridge] [--count 96] [--settings 1.5/0.3 2/0.2]
"""

from __future__ import annotations

import argparse
import time

import torch

from arstudio.data.shapes import NUM_CLASSES
from arstudio.evaluation.verifier import class_accuracy
from arstudio.generators.continuous import ContinuousImageGenerator
from arstudio.pipelines.loading import load_pipeline
from arstudio.tokenizers.bridge import BridgeTokenizer

SEED = 9000


def accuracy(pipe, count: int, guidance: float, temperature: float, batch: int = 48) -> float:
    labels = [i % NUM_CLASSES for i in range(count)]
    images = []
    for start in range(0, count, batch):
        stop = min(count, start + batch)
        generators = [torch.Generator().manual_seed(SEED + i) for i in range(start, stop)]
        out = pipe(
            class_labels=labels[start:stop],
            generator=generators,
            guidance_scale=guidance,
            temperature=temperature,
            output_type="np",
        )
        images.extend(out.images)
    return class_accuracy(images, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights", help="a generator folder (config.json + model.safetensors); default: shipped"
    )
    parser.add_argument(
        "--tokenizer", help="a bridge tokenizer folder (other bins or levels); default: shipped"
    )
    parser.add_argument("--count", type=int, default=96)
    parser.add_argument("--settings", nargs="+", default=["1.5/0.3"], help="guidance/temperature pairs")
    args = parser.parse_args()
    pipe = load_pipeline("shapes-c2i-bridge", device="cpu")
    if args.weights:  # the generator may have another head (and, with --tokenizer, other levels)
        pipe.generator = ContinuousImageGenerator.from_pretrained(args.weights)
    if args.tokenizer:
        pipe.tokenizer = BridgeTokenizer.from_pretrained(args.tokenizer)
    for setting in args.settings:
        guidance, temperature = map(float, setting.split("/"))
        start = time.perf_counter()
        score = accuracy(pipe, args.count, guidance, temperature)
        print(
            f"{args.weights or 'shipped'} guidance {guidance} temperature {temperature}: verifier {score:.3f} "
            f"({time.perf_counter() - start:.0f} s)"
        )


if __name__ == "__main__":
    main()

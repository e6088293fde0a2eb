"""Discrete vs continuous vs TokenBridge on the same shapes data, one run: verifier accuracy over 10 images
per class at each preset's default sampling, FD-shapes beside the real-vs-real baseline at the same N,
tokenizer PSNR on held-out shapes, images/s at batch 1 and 16, head steps; and TokenBridge's
reconstruction error against bits per dimension.

    python -m benchmarks.bench_continuous [--presets shapes-c2i shapes-c2i-continuous shapes-c2i-bridge]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from arstudio.data.shapes import NUM_CLASSES, class_batch
from arstudio.evaluation.fd_shapes import fd_shapes, load_shipped_classifier
from arstudio.evaluation.verifier import class_accuracy
from arstudio.images import psnr
from arstudio.pipelines.loading import load_pipeline
from benchmarks.bench_tokenizer import HELDOUT_SEED, reconstruct
from benchmarks.common import finish, header

PRESETS = ("shapes-c2i", "shapes-c2i-continuous", "shapes-c2i-bridge")


def images_per_second(pipe, batch: int, repeats: int) -> float:
    generator = torch.Generator().manual_seed(99)
    start = time.perf_counter()
    for i in range(repeats):
        pipe(
            class_labels=[(i * batch + j) % NUM_CLASSES for j in range(batch)],
            generator=generator,
            output_type="np",
        )
    return batch * repeats / (time.perf_counter() - start)


def evaluate(name: str, per_class: int, batch: int, seed: int, classifier, real: np.ndarray) -> dict:
    pipe = load_pipeline(name, device="cpu")
    labels = [c for c in range(NUM_CLASSES) for _ in range(per_class)]
    generator = torch.Generator().manual_seed(seed)
    images, metadata = [], None
    for i in range(0, len(labels), batch):
        out = pipe(class_labels=labels[i : i + batch], generator=generator, output_type="np")
        images.extend(out.images)
        metadata = out.metadata[0]
    images = np.stack(images)
    held_out, _, _ = class_batch(HELDOUT_SEED, 256, images.shape[1])
    _, recon = reconstruct(pipe.tokenizer, held_out)
    return {
        "tokenizer": metadata["tokenizer"],
        "head": metadata["head"],
        "head_steps": metadata["num_inference_steps"]
        or (pipe.generator.config.token_dim if metadata["head"] == "bridge" else None),
        "defaults": pipe.preset.defaults,
        "verifier_accuracy": class_accuracy(images, labels),
        "fd_shapes_samples_vs_real": fd_shapes(images, real, classifier),
        "tokenizer_psnr_db": psnr(held_out, recon),
        "images_per_s_batch1": images_per_second(pipe, 1, 4),
        "images_per_s_batch16": images_per_second(pipe, 16, 1),
    }


def bits_table() -> list[dict]:
    from arstudio.images import images_to_tensor
    from arstudio.pipelines.loading import load_tokenizer
    from arstudio.tokenizers.bridge import quantisation_sweep

    kl = load_tokenizer("shapes-c2i-continuous", device="cpu")
    fit = kl.encode(images_to_tensor(class_batch(0, 2048, kl.config.resolution)[0]))
    held_out = images_to_tensor(class_batch(HELDOUT_SEED, 512, kl.config.resolution)[0])
    return quantisation_sweep(kl, held_out, fit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="continuous", help="results file benchmarks/results/<name>.json")
    parser.add_argument("--no-bits-table", action="store_true", help="skip the TokenBridge bits/dim table")
    args = parser.parse_args()
    info = header(args.name)
    classifier = load_shipped_classifier()
    n = args.per_class * NUM_CLASSES
    real_a, _, _ = class_batch(1001, n, 32)
    real_b, _, _ = class_batch(2002, n, 32)
    results = {
        "images_per_preset": n,
        "fd_shapes_real_vs_real": fd_shapes(real_b, real_a, classifier),
        "presets": {},
    }
    for name in args.presets:
        row = evaluate(name, args.per_class, args.batch, args.seed, classifier, real_a)
        results["presets"][name] = row
        print(name, {k: v for k, v in row.items() if k != "defaults"})
    results["bridge_bits_per_dimension"] = [] if args.no_bits_table else bits_table()
    for row in results["bridge_bits_per_dimension"]:
        print(
            f"bits/dim {row['bits']!s:>4} {row['method']!s:9} relative latent MSE "
            f"{row['relative_latent_mse']:.4f}  PSNR {row['psnr']:.2f} dB"
        )
    finish(info, results)


if __name__ == "__main__":
    main()

"""shapes-c2i sample quality and end-to-end speed: verifier accuracy over 10 images per class at the
preset's default sampling, FD-shapes against real images beside the real-vs-real baseline at the same N,
images/s and peak memory.

    python -m benchmarks.bench_shapes_c2i [--preset shapes-c2i] [--per-class 10] [--batch 48]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
import torch

from arstudio.data.shapes import NUM_CLASSES, class_batch, class_name
from arstudio.evaluation.fd_shapes import fd_shapes, load_shipped_classifier
from arstudio.evaluation.verifier import detect_objects, verify_class
from arstudio.pipelines.loading import load_pipeline
from benchmarks.common import finish, header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shapes-c2i")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # shapes-c2i keeps its historical file name; other presets get their own
    info = header("shapes_c2i" if args.preset == "shapes-c2i" else f"shapes_c2i_{args.preset}")
    pipe = load_pipeline(args.preset, device="cpu")
    labels = [c for c in range(NUM_CLASSES) for _ in range(args.per_class)]
    generator = torch.Generator().manual_seed(args.seed)
    images, start = [], time.perf_counter()
    for i in range(0, len(labels), args.batch):
        out = pipe(class_labels=labels[i : i + args.batch], generator=generator, output_type="np")
        images.extend(out.images)
    elapsed = time.perf_counter() - start
    images = np.stack(images)

    correct = [verify_class(image, label) for image, label in zip(images, labels, strict=True)]
    per_class = {
        class_name(c): float(np.mean(correct[c * args.per_class : (c + 1) * args.per_class]))
        for c in range(NUM_CLASSES)
    }
    failures = Counter(len(detect_objects(im)) for im, ok in zip(images, correct, strict=True) if not ok)

    classifier = load_shipped_classifier()
    n = len(images)
    size = images.shape[1]
    real_a, _, _ = class_batch(1001, n, size)
    real_b, _, _ = class_batch(2002, n, size)
    results = {
        "preset": args.preset,
        "defaults": pipe.preset.defaults,
        "images": n,
        "verifier_accuracy": float(np.mean(correct)),
        "worst_classes": dict(sorted(per_class.items(), key=lambda kv: kv[1])[:5]),
        "failures_by_object_count": {str(k): v for k, v in failures.items()},
        "fd_shapes_samples_vs_real": fd_shapes(images, real_a, classifier),
        "fd_shapes_real_vs_real": fd_shapes(real_b, real_a, classifier),
        "images_per_s": n / elapsed,
        "seconds": elapsed,
        "batch": args.batch,
    }
    for key, value in results.items():
        print(f"{key:28s} {value}")
    finish(info, results)


if __name__ == "__main__":
    main()

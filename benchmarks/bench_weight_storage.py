"""Shipped-weight storage: the quality metrics of the presets whose generators are stored in int8
(scripts/ship_weights.py), against the same generators in their previous float16 storage, at the same seeds.

Measured per side and seed, with the presets' own benchmark code and settings (no timing):
- shapes-control / shapes-control-prefill: bench_shapes_control's edge F1, mask IoU, position error and verifier
  accuracy for each variant (96 held-out items, batch 24);
- shapes-c2i-continuous / shapes-c2i-bridge: bench_continuous's verifier accuracy and FD-shapes (240 images,
  10 per class, batch 48).
Both sides use the shipped tokenizers, so only the generator's storage differs.

    git archive 496a9a8 src/arstudio/weights | tar -x -C /tmp/ref     # the float16 generators
    python -m benchmarks.bench_weight_storage --reference /tmp/ref/src/arstudio/weights [--seeds 0 1]
        [--sides reference shipped]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from arstudio.data.control import CONTROL_TYPES
from arstudio.data.shapes import NUM_CLASSES, class_batch
from arstudio.evaluation.fd_shapes import fd_shapes, load_shipped_classifier
from arstudio.evaluation.verifier import class_accuracy
from arstudio.pipelines.loading import load_pipeline
from arstudio.presets import WEIGHTS_ROOT, get_preset
from benchmarks.bench_shapes_control import generate, held_out, score
from benchmarks.common import finish, header

CONTROL = {"fusion": "shapes-control", "prefill": "shapes-control-prefill"}
CONTINUOUS = ("shapes-c2i-continuous", "shapes-c2i-bridge")
SIDES = ("reference", "shipped")


def reference_folder(name: str, reference: Path, scratch: Path) -> Path:
    """A weights= folder: the shipped tokenizer beside the reference (previous storage) generator."""
    preset = get_preset(name)
    folder = scratch / name
    tokenizer = WEIGHTS_ROOT / (preset.shared_tokenizer or preset.weights) / "tokenizer"
    shutil.copytree(tokenizer, folder / "tokenizer", dirs_exist_ok=True)
    shutil.copytree(reference / preset.weights / "generator", folder / "generator", dirs_exist_ok=True)
    return folder


def control_rows(pipes: dict, seed: int) -> dict:
    items = held_out(seed, 4, pipes["fusion"].tokenizer.config.resolution)
    rows = {}
    variants = [("none", "fusion", None)] + [(f"{m}-{k}", m, k) for m in CONTROL for k in CONTROL_TYPES]
    for name, mode, kind in variants:
        images, _ = generate(pipes[mode], items, kind, 24, seed, {"control_strength": 1.0} if kind else {})
        rows[name] = score(images, items)
    return rows


def continuous_row(pipe, seed: int, classifier, real: np.ndarray) -> dict:
    labels = [c for c in range(NUM_CLASSES) for _ in range(10)]
    generator, images = torch.Generator().manual_seed(seed), []
    for start in range(0, len(labels), 48):
        images.extend(
            pipe(class_labels=labels[start : start + 48], generator=generator, output_type="np").images
        )
    images = np.stack(images)
    return {
        "verifier_accuracy": class_accuracy(images, labels),
        "fd_shapes": fd_shapes(images, real, classifier),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="weights root of the previous storage")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    args = parser.parse_args()
    for name in (*CONTROL.values(), *CONTINUOUS):
        if not (args.reference / get_preset(name).weights / "generator").is_dir():
            raise FileNotFoundError(
                f"--reference {args.reference} has no {get_preset(name).weights}/generator"
            )
    info = header("weight_storage_" + "_".join(args.sides))
    classifier = load_shipped_classifier()
    real, _, _ = class_batch(1001, 10 * NUM_CLASSES, 32)
    results = {"seeds": args.seeds, "sides": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for side in args.sides:

            def load(name, side=side):
                weights = None if side == "shipped" else reference_folder(name, args.reference, Path(scratch))
                return load_pipeline(name, device="cpu", weights=weights)

            control_pipes = {mode: load(name) for mode, name in CONTROL.items()}
            continuous_pipes = {name: load(name) for name in CONTINUOUS}
            rows = results["sides"][side] = {}
            for seed in args.seeds:
                rows[seed] = {f"control/{k}": v for k, v in control_rows(control_pipes, seed).items()}
                for name, pipe in continuous_pipes.items():
                    rows[seed][name] = continuous_row(pipe, seed, classifier, real)
                for key, row in rows[seed].items():
                    print(
                        side,
                        seed,
                        f"{key:24s}",
                        {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()},
                    )
    finish(info, results)


if __name__ == "__main__":
    main()

"""Control-to-image fidelity and speed: fusion (shapes-control) vs prefill (shapes-control-prefill) vs no
control, on control maps of held-out shapes images.

For every held-out item (``--per-class`` per class, seed ``--seed``) the requested class is the item's own
class and the control is its edge map or object mask. Measured per variant: edge F1 (1-pixel tolerance)
between the item's edges and the generated image's edges, mask IoU, the object's position error (pixels
between centres), the verifier's accuracy for the requested class, and the time per image at batch 1
(``--speed-images`` images) and at batch ``--batch``. "No control" is shapes-control sampled without a
control image (its null control: the class-conditional model it was fine-tuned from, plus fine-tuning).

    python -m benchmarks.bench_shapes_control [--per-class 4] [--batch 24] [--seed 7777]
        [--strength 1.0] [--control-guidance S] [--tag _strong]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from arstudio.data.control import CONTROL_TYPES, make_control
from arstudio.data.shapes import NUM_CLASSES, make_class_item
from arstudio.evaluation.control import edge_f1, mask_iou, position_error
from arstudio.evaluation.verifier import class_accuracy
from arstudio.pipelines.loading import load_pipeline
from benchmarks.common import finish, header


def held_out(seed: int, per_class: int, canvas: int) -> list[dict]:
    """Items of every class with their controls and the object's centre."""
    items = []
    for label in range(NUM_CLASSES):
        for i in range(per_class):
            image, _, obj = make_class_item(seed, label * per_class + i, canvas, label=label)
            controls = {kind: make_control(image, kind, [obj]) for kind in CONTROL_TYPES}
            items.append(
                {
                    "label": label,
                    "controls": controls,
                    "centre": (obj.x0 + obj.side / 2, obj.y0 + obj.side / 2),
                }
            )

    return items


def generate(pipe, items, kind: str | None, batch: int, seed: int, extra: dict) -> tuple[list, float]:
    images, generator = [], torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        control = (
            {}
            if kind is None
            else {"control_image": [it["controls"][kind] for it in chunk], "control_type": kind}
        )
        out = pipe(
            class_labels=[it["label"] for it in chunk],
            generator=generator,
            output_type="np",
            **control,
            **extra,
        )
        images.extend(out.images)
    return images, time.perf_counter() - start


def score(images, items) -> dict:
    errors = [position_error(im, it["centre"]) for im, it in zip(images, items, strict=True)]
    found = [e for e in errors if e is not None]
    return {
        "edge_f1": float(
            np.mean([edge_f1(it["controls"]["edges"], im) for im, it in zip(images, items, strict=True)])
        ),
        "mask_iou": float(
            np.mean([mask_iou(it["controls"]["mask"], im) for im, it in zip(images, items, strict=True)])
        ),
        "position_error_px": float(np.mean(found)) if found else None,
        "no_object_found": len(errors) - len(found),
        "verifier_accuracy": class_accuracy(images, [it["label"] for it in items]),
    }


def seconds_per_image(pipe, items, kind: str | None, count: int, extra: dict) -> float:
    """Batch-1 generation time per image (the first call warms up and is not counted)."""
    generate(pipe, items[:1], kind, 1, 0, extra)
    return generate(pipe, items[:count], kind, 1, 1, extra)[1] / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fusion", default="shapes-control")
    parser.add_argument("--prefill", default="shapes-control-prefill")
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--seed", type=int, default=7777)
    parser.add_argument("--speed-images", type=int, default=8)
    parser.add_argument(
        "--control-guidance", type=float, default=None, help="separate control guidance scale"
    )
    parser.add_argument("--strength", type=float, default=1.0, help="control_strength")
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    args = parser.parse_args()
    info = header(f"shapes_control{args.tag}")
    pipes = {
        "fusion": load_pipeline(args.fusion, device="cpu"),
        "prefill": load_pipeline(args.prefill, device="cpu"),
    }
    canvas = pipes["fusion"].tokenizer.config.resolution
    items = held_out(args.seed, args.per_class, canvas)
    extra = {"control_strength": args.strength}
    if args.control_guidance is not None:
        extra["control_guidance_scale"] = args.control_guidance
    variants = [("none", "fusion", None)] + [
        (f"{mode}-{kind}", mode, kind) for mode in ("fusion", "prefill") for kind in CONTROL_TYPES
    ]
    results = {
        "images_per_variant": len(items),
        "defaults": pipes["fusion"].preset.defaults,
        "control": extra,
        "variants": {},
    }
    for name, mode, kind in variants:
        images, seconds = generate(pipes[mode], items, kind, args.batch, args.seed, extra if kind else {})
        row = score(images, items)
        row[f"seconds_per_image_b{args.batch}"] = seconds / len(items)
        row["seconds_per_image_b1"] = seconds_per_image(
            pipes[mode], items, kind, args.speed_images, extra if kind else {}
        )
        results["variants"][name] = row
        print(
            f"{name:15s} "
            + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
        )
    finish(info, results)


if __name__ == "__main__":
    main()

"""Speculative decoding on shapes-c2i and shapes-t2i: plain AR vs exact speculative vs LANTERN over a
(k, delta) sweep, side by side in one run.

For each setting: wall-clock speed-up over plain AR at batch 1 and batch 8 (median of interleaved
repeats, so machine noise hits every setting alike), target forwards per image, acceptance, verifier
accuracy (class presets: the requested object; text presets: exactly the described objects) and
FD-shapes beside the real-vs-real baseline at the same N. Writes results JSON and a PNG chart.

    python -m benchmarks.bench_speculative [--presets shapes-c2i shapes-t2i] [--count 240] [--repeats 5]
        [--only "lantern k=8 d=0.25 w2" ...] [--compile]

Also profiles one call per setting at batch 1 and 8: milliseconds in target forwards, drafter forwards and
the rest (sampling, acceptance, bookkeeping).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from arstudio.data.shapes import NUM_CLASSES, class_batch, make_text_item
from arstudio.evaluation.fd_shapes import fd_shapes, load_shipped_classifier
from arstudio.evaluation.timing import median_seconds_per_image
from arstudio.evaluation.verifier import verify_class, verify_objects
from arstudio.pipelines.loading import load_pipeline
from benchmarks.common import RESULTS, finish, header

HELDOUT_SEED = 4242  # generators trained on seed 0

SETTINGS = {
    "ar": {"decoding": "ar"},
    "speculative": {"decoding": "speculative"},
    "speculative g2": {"decoding": "speculative", "draft_tokens": 2},
    "speculative g1": {"decoding": "speculative", "draft_tokens": 1},
    "lantern k=8 d=0.1": {"decoding": "lantern", "lantern_k": 8, "lantern_delta": 0.1},
    "lantern k=8 d=0.25": {"decoding": "lantern", "lantern_k": 8, "lantern_delta": 0.25},
    "lantern k=32 d=0.25": {"decoding": "lantern", "lantern_k": 32, "lantern_delta": 0.25},
    "lantern k=32 d=0.5": {"decoding": "lantern", "lantern_k": 32, "lantern_delta": 0.5},
    # wider budgets: delta 0.75 still bounds each token's total-variation move; at delta 1 only the k
    # latent neighbours limit which tokens may stand in for a draft (quality is measured, not bounded)
    "lantern k=32 d=0.75": {"decoding": "lantern", "lantern_k": 32, "lantern_delta": 0.75},
    "lantern k=64 d=0.75": {"decoding": "lantern", "lantern_k": 64, "lantern_delta": 0.75},
    "lantern k=32 d=1": {"decoding": "lantern", "lantern_k": 32, "lantern_delta": 1.0},
    "lantern k=32 d=1 g3": {"decoding": "lantern", "lantern_k": 32, "lantern_delta": 1.0, "draft_tokens": 3},
    "lantern k=32 d=1 g4": {"decoding": "lantern", "lantern_k": 32, "lantern_delta": 1.0, "draft_tokens": 4},
    "lantern k=8 d=1 g4": {"decoding": "lantern", "lantern_k": 8, "lantern_delta": 1.0, "draft_tokens": 4},
    "lantern++ k=32 l=20 g4": {
        "decoding": "lantern",
        "lantern_k": 32,
        "lantern_delta": 1.0,
        "lantern_lambda": 20.0,
        "draft_tokens": 4,
    },
    "lantern++ k=8 l=5": {"decoding": "lantern", "lantern_k": 8, "lantern_delta": 1.0, "lantern_lambda": 5.0},
    "lantern++ k=8 l=5 g2": {
        "decoding": "lantern",
        "lantern_k": 8,
        "lantern_delta": 1.0,
        "lantern_lambda": 5.0,
        "draft_tokens": 2,
    },
    "lantern++ k=8 l=5 g1": {
        "decoding": "lantern",
        "lantern_k": 8,
        "lantern_delta": 1.0,
        "lantern_lambda": 5.0,
        "draft_tokens": 1,
    },
    # static trees: draft_width candidates at each depth of the top-1 path (decoding/tree.py)
    "speculative w2": {"decoding": "speculative", "draft_width": 2},
    "speculative g3 w3": {"decoding": "speculative", "draft_tokens": 3, "draft_width": 3},
    "lantern k=8 d=0.25 w2": {"decoding": "lantern", "lantern_k": 8, "lantern_delta": 0.25, "draft_width": 2},
    "lantern k=8 d=0.25 g3 w3": {
        "decoding": "lantern",
        "lantern_k": 8,
        "lantern_delta": 0.25,
        "draft_tokens": 3,
        "draft_width": 3,
    },
    "lantern++ k=8 l=5 w2": {
        "decoding": "lantern",
        "lantern_k": 8,
        "lantern_delta": 1.0,
        "lantern_lambda": 5.0,
        "draft_width": 2,
    },
    "lantern++ k=8 l=5 g3 w3": {
        "decoding": "lantern",
        "lantern_k": 8,
        "lantern_delta": 1.0,
        "lantern_lambda": 5.0,
        "draft_tokens": 3,
        "draft_width": 3,
    },
}
# Diffusion-head presets with a draft model (continuous speculative decoding, CSpD)
CONTINUOUS_SETTINGS = {
    "ar": {"decoding": "ar"},
    "cspd": {"decoding": "continuous_speculative"},
    "cspd g2": {"decoding": "continuous_speculative", "draft_tokens": 2},
    "cspd relaxed tau=5": {"decoding": "continuous_speculative", "cspd_inner_temperature": 5.0},
    "cspd relaxed tau=50": {"decoding": "continuous_speculative", "cspd_inner_temperature": 50.0},
}


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def requests(pipe, count: int) -> tuple[list[dict], list, np.ndarray, np.ndarray]:
    """``count`` single-image requests, a checker per image, and two sets of real images of the same
    distribution (the reference, and a second one for the real-vs-real FD baseline)."""
    size = pipe.tokenizer.config.resolution
    if pipe.text_encoder is None:
        labels = [i % NUM_CLASSES for i in range(count)]
        checks = [lambda image, label=label: verify_class(image, label) for label in labels]
        real = class_batch(1001, count, size)[0], class_batch(2002, count, size)[0]
        return [{"class_labels": [label]} for label in labels], checks, *real
    items = [make_text_item(HELDOUT_SEED, i, size) for i in range(count)]
    checks = [lambda image, objects=objects: verify_objects(image, objects) for _, _, objects in items]
    real = [np.stack([make_text_item(seed, i, size)[0] for i in range(count)]) for seed in (1001, 2002)]
    return [{"prompt": [caption]} for _, caption, _ in items], checks, *real


def merge(batch: list[dict]) -> dict:
    key = next(iter(batch[0]))
    return {key: [value for request in batch for value in request[key]]}


def quality(pipe, reqs, checks, real, setting, batch: int, classifier) -> dict:
    generator = torch.Generator().manual_seed(0)
    images, stats = [], []
    for i in range(0, len(reqs), batch):
        out = pipe(**merge(reqs[i : i + batch]), generator=generator, output_type="np", **setting)
        images += out.images
        stats.append(out.stats)
    images = np.stack(images)
    mean = lambda key: float(np.mean([s[key] for s in stats if key in s])) if key in stats[0] else None  # noqa: E731
    return {
        "verifier_accuracy": float(
            np.mean([check(image) for check, image in zip(checks, images, strict=True)])
        ),
        "fd_shapes": fd_shapes(images, real, classifier),
        "forwards_per_image": mean("forwards_per_image"),
        "acceptance_rate": mean("acceptance_rate"),
        "mean_accepted_length": mean("mean_accepted_length"),
    }


def timing(pipe, reqs, settings: dict, batch: int, repeats: int) -> dict[str, float]:
    """Median seconds per image of each setting; settings interleaved within every repeat."""

    def generator_for(repeat: int) -> torch.Generator:
        return torch.Generator().manual_seed(repeat)

    return median_seconds_per_image(pipe, merge(reqs[:batch]), settings, batch, repeats, generator_for)


def profile(pipe, reqs, settings: dict, batch: int) -> dict[str, dict]:
    """Where one call's time goes, per setting: seconds in target forwards (prefill, steps, verifies), in
    drafter forwards, and the rest (sampling, acceptance, bookkeeping). Eager CPU calls are synchronous, so
    wall-clock timers around the models' step methods measure them."""
    spent = {"target": 0.0, "drafter": 0.0}

    def timed(owner, method, key):
        inner, own = getattr(owner, method), owner.__dict__.get(method)  # own: a compiled stand-in, or None

        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start

        call.static_shapes = getattr(
            inner, "static_shapes", False
        )  # a compiled step stays one to the sampler
        setattr(owner, method, call)
        return own

    models = [(pipe.generator, "step", "target"), (pipe.generator, "prefill", "target")]
    if pipe.drafter is not None:
        models.append((pipe.drafter, "step", "drafter"))
    originals = [(owner, method, timed(owner, method, key)) for owner, method, key in models]
    rows = {}
    try:
        call = merge(reqs[:batch])
        for name, setting in settings.items():
            pipe(**call, generator=torch.Generator().manual_seed(0), output_type="np", **setting)  # warm
            spent.update(target=0.0, drafter=0.0)
            start = time.perf_counter()
            pipe(**call, generator=torch.Generator().manual_seed(0), output_type="np", **setting)
            total = time.perf_counter() - start
            rows[name] = {
                "total_ms": 1000 * total,
                "target_ms": 1000 * spent["target"],
                "drafter_ms": 1000 * spent["drafter"],
                "other_ms": 1000 * (total - spent["target"] - spent["drafter"]),
            }
    finally:
        for owner, method, own in originals:
            if own is None:
                delattr(owner, method)  # the class's method shows through again
            else:
                setattr(owner, method, own)
    return rows


def chart(results: dict, path) -> None:
    """Horizontal bars per preset and setting: speed-up over plain AR at batch 1 (dark) and batch 8 (light),
    a dashed line at 1x, and each setting's target forwards per image and verifier accuracy."""
    from PIL import Image, ImageDraw

    rows = [(preset, name, row) for preset, settings in results.items() for name, row in settings.items()]
    top, line, left, scale = 40, 30, 190, 220  # pixels: header, per row, label column, per 1x
    xmax = max(1.5, max(max(r["speedup_batch1"], r["speedup_batch8"]) for _, _, r in rows))
    image = Image.new("RGB", (left + int(scale * xmax) + 230, top + line * len(rows) + 20), "white")
    draw = ImageDraw.Draw(image)
    draw.text(
        (10, 10),
        "speed-up over plain AR (dark: batch 1, light: batch 8); target forwards per image; "
        "verifier accuracy",
        fill="black",
    )
    for i, (preset, name, row) in enumerate(rows):
        y = top + i * line
        draw.text((10, y + 6), f"{preset} {name}", fill="black")
        for j, (key, colour) in enumerate((("speedup_batch1", "#1f4e9c"), ("speedup_batch8", "#8fb3e8"))):
            draw.rectangle([left, y + 2 + 12 * j, left + scale * row[key], y + 12 + 12 * j], fill=colour)
        draw.text(
            (left + int(scale * xmax) + 10, y + 6),
            f"x{row['speedup_batch1']:.2f} / x{row['speedup_batch8']:.2f}  fwd {fmt(row['forwards_per_image'], '.0f')}  "
            f"acc {row['verifier_accuracy']:.2f}",
            fill="black",
        )
    for y in range(top, top + line * len(rows), 6):  # 1x reference
        draw.line([left + scale, y, left + scale, y + 3], fill="red")
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["shapes-c2i", "shapes-t2i"])
    parser.add_argument("--count", type=int, default=240, help="images per setting for quality")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per setting and batch size")
    parser.add_argument("--only", nargs="+", default=None, help="setting names to run (plain AR always runs)")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the generator and drafter steps"
    )
    parser.add_argument("--tag", default="", help="suffix of the results' file names (keeps another run's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.compile:  # one graph per step shape: depths x batch sizes x (propose, catch-up, tree) exceed 8
        torch._dynamo.config.recompile_limit = 64
    info = header("speculative_" + "+".join(args.presets) + ("_compiled" if args.compile else "") + args.tag)
    classifier = load_shipped_classifier()
    results, profiles = {}, {}
    for preset in args.presets:
        pipe = load_pipeline(preset, device="cpu", compile=args.compile)
        reqs, checks, real, real_again = requests(pipe, args.count)
        baseline = fd_shapes(real_again, real, classifier)
        settings = CONTINUOUS_SETTINGS if "continuous_speculative" in pipe.decoding_strategies else SETTINGS
        if args.only:
            settings = {n: s for n, s in settings.items() if n == "ar" or n in args.only}
        profiles[preset] = {b: profile(pipe, reqs, settings, b) for b in (1, 8)}
        for b, rows in profiles[preset].items():
            for name, row in rows.items():
                print(
                    f"{preset:11s} profile b{b} {name:26s} total {row['total_ms']:7.0f} ms  target "
                    f"{row['target_ms']:7.0f}  drafter {row['drafter_ms']:7.0f}  other {row['other_ms']:7.0f}"
                )
        per_image = {b: timing(pipe, reqs, settings, b, args.repeats) for b in (1, 8)}
        rows = {}
        for name, setting in settings.items():
            row = quality(pipe, reqs, checks, real, setting, 8, classifier)
            for b in (1, 8):
                row[f"ms_per_image_batch{b}"] = round(1000 * per_image[b][name], 2)
                row[f"speedup_batch{b}"] = per_image[b]["ar"] / per_image[b][name]
            rows[name] = row
            print(
                f"{preset:11s} {name:22s} x{row['speedup_batch1']:.2f} (b1) x{row['speedup_batch8']:.2f} (b8)  "
                f"fwd/img {fmt(row['forwards_per_image'], '.1f')}  acc {row['verifier_accuracy']:.3f}  "
                f"FD {row['fd_shapes']:.1f}  accept {row['acceptance_rate']}"
            )
        results[preset] = rows
        results[f"{preset} fd_shapes_real_vs_real"] = baseline
        print(f"{preset:11s} FD-shapes real vs real (same N): {baseline:.1f}")
    RESULTS.mkdir(exist_ok=True)
    chart({k: v for k, v in results.items() if isinstance(v, dict)}, RESULTS / f"{info['benchmark']}.png")
    finish(
        info,
        {
            "settings": {"discrete": SETTINGS, "continuous": CONTINUOUS_SETTINGS},
            "count": args.count,
            "compile": args.compile,
            "results": results,
            "profile_ms_per_call": profiles,
        },
    )


if __name__ == "__main__":
    main()

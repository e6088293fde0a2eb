"""Distilled decoding on shapes-c2i: teacher AR vs DD1 1-step, DD1 2-step, DD1 hybrid and DD2 1-step, side by
side in one run.

For each setting: forwards per image; wall-clock per image at batch 1 and 16 (steady-state medians of
interleaved rounds, see ``timing``; the first call after a switch is reported too) for the token stage, the
tokenizer decode and end to end, and speed-ups over the teacher's AR; the token-stage speed-up at batch
1, 2, 4, 8 and 16 (the curve in the chart);
verifier accuracy and FD-shapes (real-vs-real baseline at the same N) at batch 16; how much of DD1 1-step's
gap to the teacher each setting closes. ``--extra NAME=FOLDER`` also scores other DD models (e.g. DD2
training snapshots: the curve). Writes results JSON and a PNG chart.

    python -m benchmarks.bench_distilled [--count 240] [--repeats 5] [--extra dd2@100=runs/dd2/snapshots/step-100]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from arstudio.evaluation.fd_shapes import fd_shapes, load_shipped_classifier
from arstudio.generators.distilled import DDGenerator
from arstudio.pipelines.loading import load_pipeline
from benchmarks.bench_speculative import merge, requests
from benchmarks.common import RESULTS, finish, header

SETTINGS = {
    "teacher ar": {"decoding": "ar"},
    "dd1 1-step": {"decoding": "dd1", "num_inference_steps": 1},
    "dd1 2-step": {"decoding": "dd1", "num_inference_steps": 2},
    "dd1 hybrid": {"decoding": "dd1_hybrid", "dd_hybrid_start": 4},
    "dd2 1-step": {"decoding": "dd2", "num_inference_steps": 1},
}
BATCHES = (1, 2, 4, 8, 16)  # the table shows 1 and 16; all of them make the speed-up curve
GOALS = {
    "token_speedup_b1": 25.0,
    "token_speedup_b16": 3.0,
    "e2e_speedup_b1": 10.0,
    "accuracy_ratio": 0.85,
    "fd_ratio": 2.0,
}


def quality(pipe, reqs, checks, real, setting, classifier, batch: int = 16) -> dict:
    generator = torch.Generator().manual_seed(0)
    images, forwards = [], []
    for i in range(0, len(reqs), batch):
        out = pipe(**merge(reqs[i : i + batch]), generator=generator, output_type="np", **setting)
        images += out.images
        forwards.append(out.stats["forwards_per_image"])
    images = np.stack(images)
    accuracy = float(np.mean([check(image) for check, image in zip(checks, images, strict=True)]))
    return {
        "verifier_accuracy": accuracy,
        "fd_shapes": fd_shapes(images, real, classifier),
        "forwards_per_image": float(np.mean(forwards)),
    }


def timing(
    pipe, reqs, settings: dict, batch: int, repeats: int, calls: int = 8
) -> dict[str, dict[str, float]]:
    """Seconds per image of each setting's token stage, decode and total at ``batch``.

    Rounds interleave the settings, so machine noise falls on all of them alike; round 0 warms up and is not
    counted. Within a round a setting makes ``calls`` calls back to back. The first call after a switch runs
    cold: at batch 1, right after the teacher's AR, a DD2 call measured 5.3 ms, settling to ~4.7 ms over about
    six calls (caches and the like: not the OpenMP wait policy, which was tried). The later calls are closer
    to the steady state that rendering many images with one setting sees: medians of those are
    ``tokens``/``decode``/``total``; medians of the first calls are ``*_first``.
    """
    keys = (("tokens", "sampling_s"), ("decode", "decode_s"), ("total", "total_s"))
    seconds = {name: {f"{k}{part}": [] for k, _ in keys for part in ("", "_first")} for name in settings}
    call = merge(reqs[:batch])
    for repeat in range(repeats + 1):
        for name, setting in settings.items():
            for index in range(calls):
                seed = torch.Generator().manual_seed(repeat * calls + index)
                out = pipe(**call, generator=seed, output_type="np", **setting)
                if repeat:
                    for key, timing_key in keys:
                        part = "_first" if index == 0 and calls > 1 else ""
                        seconds[name][key + part].append(out.timings[timing_key] / batch)
    return {name: {k: statistics.median(v) for k, v in parts.items() if v} for name, parts in seconds.items()}


def gap_closed(row: dict, start: dict, teacher: dict, key: str) -> float | None:
    """Fraction of DD1 1-step's gap to the teacher that ``row`` closes on ``key`` (1 = teacher's value)."""
    gap = start[key] - teacher[key]
    return None if abs(gap) < 1e-9 else (start[key] - row[key]) / gap


def chart(rows: dict, path) -> None:
    """Top left: token-stage and end-to-end speed-up over the teacher at batch 1 (log scale bars). Top right:
    FD-shapes against forwards per image (the steps/quality curve), with verifier accuracy in the labels.
    Bottom: token-stage speed-up against batch size (log-log), with the goals at batch 1 and 16."""
    import math

    from PIL import Image, ImageDraw

    width, height, left = 1100, 60 + 34 * len(rows), 150
    top_height = max(height, 420)
    image = Image.new("RGB", (width, top_height + 360), "white")
    draw = ImageDraw.Draw(image)
    draw.text(
        (10, 10),
        "speed-up over teacher AR at batch 1 (dark: token stage, light: end to end), log scale",
        fill="black",
    )
    scale = 90  # pixels per factor 10
    for i, (name, row) in enumerate(rows.items()):
        y = 40 + 34 * i
        draw.text((10, y + 8), name, fill="black")
        for j, (key, colour) in enumerate((("token_speedup_b1", "#1f4e9c"), ("e2e_speedup_b1", "#8fb3e8"))):
            length = scale * math.log10(max(row[key], 1.0))
            draw.rectangle([left, y + 2 + 13 * j, left + length, y + 13 + 13 * j], fill=colour)
            draw.text((left + length + 4, y + 13 * j), f"x{row[key]:.1f}", fill="black")
    # right panel: FD-shapes vs forwards per image
    x0, y0, w, h = 620, 60, 440, 300
    draw.text((x0, 20), "FD-shapes (lower is better) vs forwards per image (log)", fill="black")
    draw.rectangle([x0, y0, x0 + w, y0 + h], outline="black")
    fds = [r["fd_shapes"] for r in rows.values()]
    top = max(fds) * 1.1
    most = max(r["forwards_per_image"] for r in rows.values())
    placed = []  # label boxes drawn so far
    for name, row in rows.items():
        px = x0 + 10 + (w - 20) * math.log(row["forwards_per_image"]) / math.log(max(most, 2))
        py = y0 + h - h * row["fd_shapes"] / top
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill="#c0392b")
        label = f"{name} (acc {row['verifier_accuracy']:.2f})"
        # Labels of points in the right part of the panel go to their left, so none runs off the image;
        # a label that would overlap an earlier one moves down a line (points with similar FD are common).
        tx = px + 6 if px < x0 + w * 0.6 else px - 6 - draw.textlength(label)
        box = [tx, py - 6, tx + draw.textlength(label), py + 6]
        while any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
            box = [box[0], box[1] + 13, box[2], box[3] + 13]
        placed.append(box)
        draw.text((box[0], box[1]), label, fill="black")
    speedup_curve(draw, rows, (150, top_height + 30, 800, 280))
    image.save(path)


def speedup_curve(draw, rows: dict, box: tuple[int, int, int, int]) -> None:
    """Token-stage speed-up over the teacher against batch size, one line per DD setting, log-log axes."""
    import math

    x0, y0, w, h = box
    draw.text(
        (x0, y0 - 22), "token-stage speed-up over teacher AR vs batch size (log-log); x: goals", fill="black"
    )
    draw.rectangle([x0, y0, x0 + w, y0 + h], outline="black")
    low, high = 1.0, 100.0

    def point(batch: int, speedup: float) -> tuple[float, float]:
        fx = math.log2(batch) / math.log2(BATCHES[-1])
        fy = (math.log10(max(speedup, low)) - math.log10(low)) / (math.log10(high) - math.log10(low))
        return x0 + 20 + (w - 40) * fx, y0 + h - h * min(fy, 1.0)

    for batch in BATCHES:
        x, _ = point(batch, low)
        draw.text((x - 4, y0 + h + 4), str(batch), fill="black")
    for value in (1, 3, 10, 25, 100):
        _, y = point(1, value)
        draw.line([x0, y, x0 + w, y], fill="#dddddd")
        draw.text((x0 - 30, y - 6), f"x{value}", fill="black")
    for batch, goal in ((1, GOALS["token_speedup_b1"]), (16, GOALS["token_speedup_b16"])):
        x, y = point(batch, goal)
        draw.line([x - 6, y - 6, x + 6, y + 6], fill="black", width=2)
        draw.line([x - 6, y + 6, x + 6, y - 6], fill="black", width=2)
    colours = ("#1f4e9c", "#c0392b", "#27ae60", "#8e44ad")
    names = [name for name in rows if name != "teacher ar"]
    for i, (name, colour) in enumerate(zip(names, colours, strict=False)):
        points = [point(b, rows[name][f"token_speedup_b{b}"]) for b in BATCHES]
        draw.line(points, fill=colour, width=2)
        draw.text((x0 + w + 10, y0 + 10 + 16 * i), name, fill=colour)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shapes-c2i")
    parser.add_argument("--count", type=int, default=240, help="images per setting for quality")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per setting and batch size")
    parser.add_argument("--extra", nargs="*", default=[], help="NAME=FOLDER: more DD models to score as dd2")
    args = parser.parse_args()
    info = header("distilled_" + args.preset)
    classifier = load_shipped_classifier()
    pipe = load_pipeline(args.preset, device="cpu")
    reqs, checks, real, real_again = requests(pipe, args.count)
    baseline = fd_shapes(real_again, real, classifier)
    per_image = {b: timing(pipe, reqs, SETTINGS, b, args.repeats) for b in BATCHES}
    rows = {}
    for name, setting in SETTINGS.items():
        row = quality(pipe, reqs, checks, real, setting, classifier)
        for b in BATCHES:
            mine, teacher = per_image[b][name], per_image[b]["teacher ar"]
            row.update(
                {
                    f"ms_tokens_b{b}": 1000 * mine["tokens"],
                    f"ms_decode_b{b}": 1000 * mine["decode"],
                    f"ms_total_b{b}": 1000 * mine["total"],
                    f"token_speedup_b{b}": teacher["tokens"] / mine["tokens"],
                    f"e2e_speedup_b{b}": teacher["total"] / mine["total"],
                    f"ms_tokens_b{b}_first": 1000 * mine["tokens_first"],
                    f"token_speedup_b{b}_first": teacher["tokens_first"] / mine["tokens_first"],
                }
            )
        rows[name] = row
    curve = {}
    shipped_dd2 = pipe.distilled.get("dd2")
    for spec in args.extra:  # other DD models in the dd2 slot: quality only (same architecture, same speed)
        label, folder = spec.split("=", 1)
        model = DDGenerator.from_pretrained(folder)
        model.check_pairing(pipe.generator, pipe.tokenizer)
        pipe.distilled["dd2"] = model.eval()
        curve[label] = quality(pipe, reqs, checks, real, SETTINGS["dd2 1-step"], classifier)
    if shipped_dd2 is not None:
        pipe.distilled["dd2"] = shipped_dd2
    teacher, start = rows["teacher ar"], rows["dd1 1-step"]
    for row in [*rows.values(), *curve.values()]:
        row["fd_gap_closed"] = gap_closed(row, start, teacher, "fd_shapes")
        row["accuracy_gap_closed"] = gap_closed(row, start, teacher, "verifier_accuracy")
    dd2 = rows["dd2 1-step"]
    goals = {
        "dd2 token stage >= 25x at batch 1": dd2["token_speedup_b1"] >= GOALS["token_speedup_b1"],
        "dd2 token stage >= 3x at batch 16": dd2["token_speedup_b16"] >= GOALS["token_speedup_b16"],
        "dd2 end to end >= 10x at batch 1": dd2["e2e_speedup_b1"] >= GOALS["e2e_speedup_b1"],
        "dd2 accuracy >= 85% of teacher": dd2["verifier_accuracy"]
        >= GOALS["accuracy_ratio"] * teacher["verifier_accuracy"],
        "dd2 FD-shapes <= 2x teacher": dd2["fd_shapes"] <= GOALS["fd_ratio"] * teacher["fd_shapes"],
        "dd2 closes more of the FD gap than dd1 2-step": (dd2["fd_gap_closed"] or 0)
        > (rows["dd1 2-step"]["fd_gap_closed"] or 0),
    }
    print(
        f"{'setting':12s} {'fwd':>5s} {'tok b1 ms':>9s} {'dec b1':>7s} {'tok b16':>8s} {'dec b16':>8s} "
        f"{'x tok b1':>8s} {'(first)':>7s} {'x e2e b1':>8s} {'x tok b16':>9s} {'x e2e b16':>9s} {'acc':>5s} "
        f"{'FD':>6s}"
    )
    for name, r in rows.items():
        print(
            f"{name:12s} {r['forwards_per_image']:5.0f} {r['ms_tokens_b1']:9.2f} {r['ms_decode_b1']:7.2f} "
            f"{r['ms_tokens_b16']:8.2f} {r['ms_decode_b16']:8.2f} {r['token_speedup_b1']:8.1f} "
            f"{r['token_speedup_b1_first']:7.1f} "
            f"{r['e2e_speedup_b1']:8.1f} {r['token_speedup_b16']:9.1f} {r['e2e_speedup_b16']:9.1f} "
            f"{r['verifier_accuracy']:5.3f} {r['fd_shapes']:6.1f}"
        )
    print("token-stage speed-up by batch size: " + "  ".join(f"b{b}" for b in BATCHES))
    for name, r in rows.items():
        print(f"  {name:12s} " + "  ".join(f"{r[f'token_speedup_b{b}']:.1f}" for b in BATCHES))
    for label, r in curve.items():
        print(f"curve {label:20s} acc {r['verifier_accuracy']:.3f}  FD {r['fd_shapes']:.1f}")
    print(f"FD-shapes real vs real (same N): {baseline:.1f}")
    for goal, met in goals.items():
        print(f"{'MET   ' if met else 'MISSED'} {goal}")
    RESULTS.mkdir(exist_ok=True)
    chart(rows, RESULTS / f"{info['benchmark']}.png")
    finish(
        info,
        {
            "settings": SETTINGS,
            "count": args.count,
            "results": rows,
            "curve": curve,
            "fd_shapes_real_vs_real": baseline,
            "goals": goals,
        },
    )


if __name__ == "__main__":
    main()

"""sprites-video: clip-verifier acceptance, video prediction vs copy-last-frame, extrapolation with temporal
decay off/on, frames/s at batch 1 and 8, the frame KV cache vs recomputing the context, cache memory growth
with and without long-term compression.

    python -m benchmarks.bench_video [--preset sprites-video] [--videos 192] [--extrapolate 24]

Held-out clips come from seed 4242 (training used seed 0). Every number is from the rule-based clip
verifier (``arstudio.evaluation.clip_verifier``) on decoded 32 px frames.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from arstudio.data.shapes import NUM_CLASSES
from arstudio.data.sprites import class_clips
from arstudio.decoding.video import sample_video
from arstudio.evaluation.clip_verifier import verify_clip
from arstudio.evaluation.verifier import FOREGROUND_THRESHOLD
from arstudio.pipelines.loading import load_pipeline
from arstudio.pipelines.video import FIRST_FRAME_SOURCES
from benchmarks.common import RESULTS, finish, header

HELDOUT_SEED = 4242
SECTIONS = ("acceptance", "prediction", "speed", "memory", "extrapolation")
SECTION_KEYS = {
    "acceptance_16_frames": "acceptance",
    "prediction": "prediction",
    "speed_batch1": "speed",
    "speed_batch8": "speed",
    "cache_memory": "memory",
    "extrapolation": "extrapolation",
}


def generate(pipe, labels, num_frames: int, batch: int, seed: int, **kwargs) -> np.ndarray:
    """uint8 clips (len(labels), T, H, W, 3)."""
    generator = torch.Generator().manual_seed(seed)
    clips = []
    for i in range(0, len(labels), batch):
        out = pipe(
            class_labels=labels[i : i + batch],
            num_frames=num_frames,
            generator=generator,
            output_type="np",
            **kwargs,
        )
        clips.extend(out.frames)
    return np.stack(clips)


def acceptance(pipe, count: int, batch: int, first_frame: str) -> dict:
    labels = [i % NUM_CLASSES for i in range(count)]
    clips = generate(pipe, labels, 16, batch, seed=0, first_frame=first_frame)
    verdicts = [verify_clip(c, y) for c, y in zip(clips, labels, strict=True)]
    return {
        "videos": count,
        "frames": 16,
        "clip_acceptance": float(np.mean([v.accepted for v in verdicts])),
        "frame_accuracy": float(np.mean([v.frame_accuracy for v in verdicts])),
        "identity_kept": float(np.mean([v.identity_kept for v in verdicts])),
        "motion_ok": float(np.mean([v.motion_ok for v in verdicts])),
        "first_frame_accuracy": float(np.mean([v.frames_ok[0] for v in verdicts])),
    }


def foreground_centroid(frame: np.ndarray) -> np.ndarray:
    """(x, y) mean of the pixels the verifier calls foreground (any colour or shape); NaN if none."""
    ys, xs = np.nonzero(frame.max(axis=2) >= FOREGROUND_THRESHOLD)
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5]) if len(xs) else np.full(2, np.nan)


def prediction(pipe, count: int, batch: int, given: int = 4, total: int = 16) -> dict:
    """Predict frames given+1..total from ``given`` real frames; centroid error against the real clip, next
    to repeating the last given frame. Two measures: the verifier's object box centre (a predicted frame
    whose object is not found exactly once counts as missed: left out of the mean, reported as the missed
    share), and the foreground-pixel centroid (needs only some foreground; empty frames reported)."""
    real, labels, _ = class_clips(HELDOUT_SEED, count, total, pipe.tokenizer.config.resolution)
    predicted = []
    generator = torch.Generator().manual_seed(1)
    for i in range(0, count, batch):
        out = pipe(
            class_labels=labels[i : i + batch].tolist(),
            num_frames=total,
            context_frames=real[i : i + batch, :given],
            generator=generator,
            output_type="np",
        )
        predicted.extend(out.frames)
    fg_errors, fg_copy, empty = [], [], 0
    for clip, pred in zip(real, predicted, strict=True):
        last = foreground_centroid(clip[given - 1])
        for t in range(given, total):
            truth, guess = foreground_centroid(clip[t]), foreground_centroid(pred[t])
            fg_copy.append(float(np.linalg.norm(last - truth)))
            if np.isnan(guess).any():
                empty += 1
            else:
                fg_errors.append(float(np.linalg.norm(guess - truth)))
    errors, copy_errors, missed = [], [], 0
    per_horizon = [[] for _ in range(total - given)]
    copy_horizon = [[] for _ in range(total - given)]
    for clip, pred, label in zip(real, predicted, labels, strict=True):
        truth = verify_clip(clip, int(label)).centroids
        key = next(iter(truth))
        track, last = verify_clip(pred, int(label)).centroids[key], truth[key][given - 1]
        for h, t in enumerate(range(given, total)):
            copy = float(np.linalg.norm(last - truth[key][t]))
            copy_errors.append(copy)
            copy_horizon[h].append(copy)
            if np.isnan(track[t]).any():
                missed += 1
                continue
            err = float(np.linalg.norm(track[t] - truth[key][t]))
            errors.append(err)
            per_horizon[h].append(err)
    return {
        "clips": count,
        "given_frames": given,
        "predicted_frames": total - given,
        "centroid_error_px": float(np.mean(errors)) if errors else None,
        "copy_last_frame_error_px": float(np.mean(copy_errors)),
        "missed_frame_share": missed / len(copy_errors),
        "error_by_horizon_px": [float(np.mean(h)) if h else None for h in per_horizon],
        "copy_error_by_horizon_px": [float(np.mean(h)) for h in copy_horizon],
        "foreground_centroid_error_px": float(np.mean(fg_errors)) if fg_errors else None,
        "foreground_copy_last_frame_error_px": float(np.mean(fg_copy)),
        "empty_frame_share": empty / len(fg_copy),
    }


def extrapolation(pipe, count: int, batch: int, num_frames: int, settings: dict) -> dict:
    """Per-frame object accuracy (exactly the class's object) at ``num_frames`` for each setting."""
    labels = [i % NUM_CLASSES for i in range(count)]
    curves = {}
    for name, kwargs in settings.items():
        start = time.perf_counter()
        clips = generate(pipe, labels, num_frames, batch, seed=2, **kwargs)
        verdicts = [verify_clip(c, y) for c, y in zip(clips, labels, strict=True)]
        curve = np.mean([v.frames_ok for v in verdicts], axis=0)
        curves[name] = {
            "settings": kwargs,
            "frame_accuracy_curve": [float(a) for a in curve],
            "last_quarter_accuracy": float(curve[-num_frames // 4 :].mean()),
            "clip_acceptance": float(np.mean([v.accepted for v in verdicts])),
            "seconds": time.perf_counter() - start,
        }
        print(f"  {name}: last-quarter frame accuracy {curves[name]['last_quarter_accuracy']:.3f}")
    return curves


def speed(pipe, batch: int, frames: int = 16, repeats: int = 1, recompute: bool = True) -> dict:
    labels = [i % NUM_CLASSES for i in range(batch)]
    model, steps = pipe.generator, pipe.preset.defaults["num_inference_steps"]
    guidance = pipe.preset.defaults["guidance_scale"]
    cond = torch.tensor(labels)
    out = {}
    paths = {"cached": {}}
    if recompute:
        # The model's long/short-term context bounds what recomputing costs (a few full frames plus
        # compressed ones), so the cache's saving is also measured with every frame at full resolution.
        paths |= {
            "recompute": {"use_cache": False},
            "cached_full_context": {"short_frames": 0},
            "recompute_full_context": {"use_cache": False, "short_frames": 0},
        }
    for name, kwargs in paths.items():
        times = []
        for r in range(repeats):
            gens = [torch.Generator().manual_seed(r * 100 + i) for i in range(batch)]
            start = time.perf_counter()
            sample_video(
                model, cond, gens, frames, guidance_scale=guidance, num_inference_steps=steps, **kwargs
            )
            times.append(time.perf_counter() - start)
        out[f"{name}_seconds"] = min(times)
    pipe_start = time.perf_counter()
    pipe(class_labels=labels, num_frames=frames, generator=torch.Generator().manual_seed(5), output_type="np")
    out["pipeline_frames_per_s"] = batch * frames / (time.perf_counter() - pipe_start)
    out["sampler_frames_per_s_cached"] = batch * frames / out["cached_seconds"]
    if recompute:
        out["cache_speedup"] = out["recompute_seconds"] / out["cached_seconds"]
        out["cache_speedup_full_context"] = (
            out["recompute_full_context_seconds"] / out["cached_full_context_seconds"]
        )
    return out


def memory(pipe, lengths=(8, 16, 32, 64)) -> dict:
    """KV-cache bytes at batch 1 with CFG (2 rows) by clip length, full vs compressed long-term context (one
    Euler step per frame: the cache size does not depend on the steps)."""
    model, rows = pipe.generator, {}
    for frames in lengths:
        row = {}
        for name, short in {"full": 0, "compressed": model.config.short_frames}.items():
            stats = sample_video(
                model,
                torch.tensor([0]),
                [torch.Generator().manual_seed(0)],
                frames,
                guidance_scale=1.5,
                num_inference_steps=1,
                short_frames=short,
            ).stats
            row[f"{name}_cache_mb"] = stats["cache_bytes"] / 2**20
            row[f"{name}_cache_tokens"] = stats["cache_slots"]
        rows[str(frames)] = row
    return rows


def chart(curves: dict, path) -> None:
    """Per-frame object accuracy against frame index, one line per setting, the training length marked."""
    from PIL import Image, ImageDraw

    colours = ["#c0392b", "#1f4e9c", "#27ae60", "#8e44ad", "#d35400"]
    width, height, left, top, bottom = 640, 360, 50, 30, 40
    image = Image.new("RGB", (width, height + 20 * len(curves)), "white")
    draw = ImageDraw.Draw(image)
    draw.text(
        (10, 8), "sprites-video: per-frame object accuracy vs frame (dashed: training length)", fill="black"
    )
    plot_w, plot_h = width - left - 20, height - top - bottom
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    for tick in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - tick)
        draw.text((10, y - 6), f"{tick:.1f}", fill="black")
    num = max(len(c["frame_accuracy_curve"]) for c in curves.values())
    train = curves[next(iter(curves))].get("train_frames", 8)
    x_train = left + plot_w * (train - 1) / max(1, num - 1)
    for y in range(top, top + plot_h, 6):
        draw.line([x_train, y, x_train, y + 3], fill="grey")
    draw.text((left, top + plot_h + 6), "frame 1", fill="black")
    draw.text((left + plot_w - 50, top + plot_h + 6), f"frame {num}", fill="black")
    for i, (name, curve) in enumerate(curves.items()):
        values = curve["frame_accuracy_curve"]
        points = [(left + plot_w * j / max(1, num - 1), top + plot_h * (1 - v)) for j, v in enumerate(values)]
        draw.line(points, fill=colours[i % len(colours)], width=2)
        draw.text(
            (left, height + 20 * i),
            f"{name}: last quarter {curve['last_quarter_accuracy']:.2f}",
            fill=colours[i % len(colours)],
        )
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sprites-video")
    parser.add_argument(
        "--videos", type=int, default=192, help="videos per first-frame source for acceptance"
    )
    parser.add_argument("--prediction-clips", type=int, default=24, help="held-out clips to continue")
    parser.add_argument("--extrapolate", type=int, default=24, help="videos per extrapolation setting")
    parser.add_argument("--decays", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--sections",
        nargs="+",
        default=list(SECTIONS),
        choices=SECTIONS,
        help="run only these; the others are kept from the last results file",
    )
    parser.add_argument(
        "--weights", help="a folder with tokenizer/ and generator/ instead of the shipped ones"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = header(f"video_{args.preset}")
    pipe = load_pipeline(args.preset, device="cpu", weights=args.weights)
    config = pipe.generator.config
    results = {"preset": args.preset, "defaults": pipe.preset.defaults, "train_frames": config.train_frames}
    previous = RESULTS / f"video_{args.preset}.json"
    if set(args.sections) != set(SECTIONS) and previous.is_file():
        kept = json.loads(previous.read_text())
        results.update(
            {k: v for k, v in kept.items() if k in SECTION_KEYS and SECTION_KEYS[k] not in args.sections}
        )
        results["sections_rerun"] = {"sections": args.sections, "command": info["command"]}
    if "acceptance" in args.sections:
        # both first-frame sources side by side when the preset has a keyframe image preset
        sources = FIRST_FRAME_SOURCES if pipe.preset.keyframe_preset else ("video",)
        results["acceptance_16_frames"] = {s: acceptance(pipe, args.videos, args.batch, s) for s in sources}
        print(f"acceptance: {results['acceptance_16_frames']}")
    if "prediction" in args.sections:
        results["prediction"] = prediction(pipe, args.prediction_clips, args.batch)
        print(f"prediction: {results['prediction']}")
    if "speed" in args.sections:
        results["speed_batch1"] = speed(pipe, 1, repeats=2)
        results["speed_batch8"] = speed(pipe, 8, recompute=False)
        print(f"speed: b1 {results['speed_batch1']}\n       b8 {results['speed_batch8']}")
    if "memory" in args.sections:
        results["cache_memory"] = memory(pipe)
        print(f"memory: {results['cache_memory']}")
    if "extrapolation" not in args.sections:
        finish(info, results)
        return
    long = 4 * config.train_frames
    settings = {}
    for decay in args.decays:
        settings[f"decay {decay}, full context"] = {"temporal_decay": decay, "short_frames": 0}
    for decay in args.decays:
        settings[f"decay {decay}, long/short-term"] = {"temporal_decay": decay}
    curves = extrapolation(pipe, args.extrapolate, args.batch, long, settings)
    for curve in curves.values():
        curve["train_frames"] = config.train_frames
    results["extrapolation"] = {"num_frames": long, "curves": curves}
    RESULTS.mkdir(exist_ok=True)
    chart(curves, RESULTS / f"video_{args.preset}_extrapolation.png")
    finish(info, results)


if __name__ == "__main__":
    main()

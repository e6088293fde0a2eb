"""Quick clip-verifier probe of sprites-video generators (shipped, or a training run's weights):
``count`` 16-frame class clips, labels i % 24, seeded 9000 (not the benchmark's seed 0), at each
guidance / temperature / Euler-steps setting; optionally a longer extrapolation run with temporal decay.

    python scripts/probe_video.py [--weights runs/sprites-video] [--count 24] [--settings 1.5/1.0/20]
        [--frames 32 --decay 1.0] [--first-frame image]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from arstudio.data.shapes import NUM_CLASSES
from arstudio.evaluation.clip_verifier import verify_clip
from arstudio.generators.video import VideoGenerator
from arstudio.pipelines.loading import load_pipeline
from arstudio.pipelines.video import FIRST_FRAME_SOURCES

SEED = 9000


def probe(pipe, count: int, num_frames: int, batch: int = 8, **kwargs) -> dict:
    labels = [i % NUM_CLASSES for i in range(count)]
    generator = torch.Generator().manual_seed(SEED)
    clips = []
    for start in range(0, count, batch):
        out = pipe(
            class_labels=labels[start : start + batch],
            num_frames=num_frames,
            generator=generator,
            output_type="np",
            **kwargs,
        )
        clips.extend(out.frames)
    verdicts = [verify_clip(np.asarray(c), y) for c, y in zip(clips, labels, strict=True)]
    per_frame = np.mean([v.frames_ok for v in verdicts], axis=0)  # (num_frames,)
    return {
        "accepted": float(np.mean([v.accepted for v in verdicts])),
        "frame_accuracy": float(per_frame.mean()),
        "last_quarter": float(per_frame[-max(1, num_frames // 4) :].mean()),
        "first_frame": float(per_frame[0]),
        "motion_ok": float(np.mean([v.motion_ok for v in verdicts])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="a generator folder (config.json + model.safetensors)")
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--settings", nargs="+", default=["1.5/1.0/20"], help="guidance/temperature/steps")
    parser.add_argument("--decay", type=float, default=0.0, help="temporal decay (FlexRoPE-style)")
    parser.add_argument(
        "--first-frame", default="video", choices=FIRST_FRAME_SOURCES, help="who draws frame 0"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline("sprites-video", device="cpu")
    if args.weights:
        pipe.generator = VideoGenerator.from_pretrained(args.weights).eval()
    for setting in args.settings:
        guidance, temperature, steps = setting.split("/")
        start = time.perf_counter()
        result = probe(
            pipe,
            args.count,
            args.frames,
            guidance_scale=float(guidance),
            temperature=float(temperature),
            num_inference_steps=int(steps),
            temporal_decay=args.decay,
            first_frame=args.first_frame,
        )
        scores = " ".join(f"{k} {v:.3f}" for k, v in result.items())
        print(
            f"{args.weights or 'shipped'} {setting} frames {args.frames} decay {args.decay} first {args.first_frame}: {scores} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()

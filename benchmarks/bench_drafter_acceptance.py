"""Drafter acceptance per draft position, teacher-forced on held-out images, under the preset's CFG and
temperature (and on the conditional stream alone): the shipped drafter beside trained runs.

Acceptance at position n = mean of sum_x min(p(x), q(x)) over positions and images, p the target's and q the
drafter's guided distribution, the drafter fed its own predicted features for positions 2..n: the chance that
exact speculative sampling accepts the n-th draft when the ones before it were accepted.

    python -m benchmarks.bench_drafter_acceptance --preset shapes-c2i [--runs new=runs/drafter-x] [--depth 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from arstudio.generators.drafter import Drafter
from arstudio.pipelines.loading import load_pipeline
from arstudio.training.drafter import EVAL_SEED, draft_acceptance, expected_accepted
from arstudio.training.generator import tokenize_shapes
from benchmarks.common import finish, header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shapes-c2i")
    parser.add_argument("--runs", nargs="*", default=[], help="NAME=FOLDER of drafters to compare")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--count", type=int, default=256, help="held-out images (seed 12345)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = header(f"drafter_acceptance_{args.preset}")
    pipe = load_pipeline(args.preset, device="cpu")
    target = pipe.generator
    drafters = {}
    if getattr(pipe, "drafter", None) is not None:
        drafters["shipped"] = pipe.drafter
    for spec in args.runs:
        name, _, folder = spec.partition("=")
        if not folder:
            raise SystemExit(f"--runs {spec!r}: use NAME=FOLDER")
        drafters[name] = Drafter.from_pretrained(Path(folder)).eval()
    tokens, conds = tokenize_shapes(
        pipe.tokenizer, args.count, EVAL_SEED, target.config.condition, pipe.text_encoder
    )
    defaults = pipe.preset.defaults
    guidance, temperature = defaults.get("guidance_scale", 1.0), defaults.get("temperature", 1.0)
    results = {
        "preset": args.preset,
        "count": args.count,
        "guidance_scale": guidance,
        "temperature": temperature,
    }
    for name, drafter in drafters.items():
        row = {}
        for mode, scale in (("guided", guidance), ("conditional", None)):
            rates = draft_acceptance(drafter, target, tokens, conds, args.depth, scale, temperature)
            row[mode] = {"per_position": rates, "expected_accepted": round(expected_accepted(rates), 3)}
            print(
                f"{name:>12} {mode:>11}: "
                + " ".join(f"{r:.3f}" for r in rates)
                + f"  expected accepted of {args.depth}: {row[mode]['expected_accepted']:.2f}"
            )
        results[name] = row
    finish(info, results)


if __name__ == "__main__":
    main()

"""Continuous speculative decoding on shapes-c2i-continuous, one run: seconds per image at batch 1 for plain
AR, the target alone in CSpD's head loop (the loop's own share of the speed-up), CSpD exact and relaxed
(inner temperatures), ratios against AR from interleaved runs; exact acceptance by token position (the case
for pre-filling); FD-shapes and verifier accuracy of AR (two seeds: its run-to-run spread) and CSpD.

    python -m benchmarks.bench_cspd [--draft DIR] [--images 8] [--per-class 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from arstudio.data.shapes import NUM_CLASSES, class_batch
from arstudio.evaluation.fd_shapes import fd_shapes, load_shipped_classifier
from arstudio.evaluation.verifier import class_accuracy
from arstudio.generators.draft_head import DraftHead
from arstudio.pipelines.loading import load_pipeline
from benchmarks.common import cpu_pressure, finish, header

PRESET = "shapes-c2i-continuous"
CSPD = "continuous_speculative"
# name -> (decoding, knobs)
SETTINGS = {
    "ar": ("ar", {}),
    "target_in_cspd_loop": (CSPD, {"cspd_prefill": 1.0}),  # no drafts: the loop alone
    "cspd_exact": (CSPD, {}),
    "cspd_exact_no_prefill": (CSPD, {"cspd_prefill": 0.0}),
    "cspd_relaxed_tau2": (CSPD, {"cspd_inner_temperature": 2.0}),
    "cspd_relaxed_tau4": (CSPD, {"cspd_inner_temperature": 4.0}),
    "cspd_relaxed_tau42": (CSPD, {"cspd_inner_temperature": 42.0}),
}
QUALITY = ("cspd_exact", "cspd_relaxed_tau4")


def speed(pipe, images: int) -> dict:
    """Seconds per image at batch 1, the settings interleaved image by image (CPU load hits them alike)."""
    seconds = {name: [] for name in SETTINGS}
    stats = {name: [] for name in SETTINGS}
    pipe(class_labels=[0], decoding=CSPD, output_type="np")  # warm-up
    for i in range(images):
        for name, (decoding, knobs) in SETTINGS.items():
            start = time.perf_counter()
            out = pipe(
                class_labels=[i % NUM_CLASSES],
                decoding=decoding,
                generator=torch.Generator().manual_seed(i),
                output_type="np",
                **knobs,
            )
            seconds[name].append(time.perf_counter() - start)
            stats[name].append(out.stats)
    ar = float(np.mean(seconds["ar"]))
    rows = {}
    for name in SETTINGS:
        row = {
            "seconds_per_image": float(np.mean(seconds[name])),
            "speedup_vs_ar": ar / float(np.mean(seconds[name])),
        }
        if "acceptance_rate" in stats[name][0]:
            row["acceptance_rate"] = float(np.mean([s["acceptance_rate"] for s in stats[name]]))
        rows[name] = row
        print(name, {k: round(v, 3) for k, v in row.items()})
    curves = [s["acceptance_by_token"] for s in stats["cspd_exact_no_prefill"]]
    # The other draft kind's ceiling: a draft *model* (own trunk and head) that is the target itself accepts
    # everything, yet pays a full trunk step and head trajectory per draft.
    import copy

    from arstudio.decoding.continuous_speculative import (
        ContinuousSpeculativeParams,
        sample_continuous_speculative,
    )
    from arstudio.decoding.logits import SamplingParams

    params = SamplingParams.from_defaults(pipe.preset.defaults)
    twin, ceiling = copy.deepcopy(pipe.generator), []
    for i in range(min(images, 3)):
        start = time.perf_counter()
        out = sample_continuous_speculative(
            pipe.generator,
            twin,
            torch.tensor([i]),
            [torch.Generator().manual_seed(i)],
            params,
            ContinuousSpeculativeParams(draft_tokens=3),
        )
        ceiling.append(time.perf_counter() - start)
    rows["draft_model_ceiling_twin_gamma3"] = {
        "seconds_per_image_sampler_only": float(np.mean(ceiling)),
        "acceptance_rate": out.stats["acceptance_rate"],
    }
    print("draft model ceiling", rows["draft_model_ceiling_twin_gamma3"])
    by_token = np.mean(np.array(curves), axis=0)
    return {"settings": rows, "exact_acceptance_by_token_no_prefill": [round(float(x), 3) for x in by_token]}


def tail_curve(pipe, tails=(1, 2, 3, 4, 6)) -> dict:
    """Exact acceptance E_q[min(1, p/q)] against the number of last reverse steps the target makes itself, on
    512 teacher-forced guided trunk features of held-out shapes (the preset's sampling)."""
    from arstudio.decoding.trajectories import Trajectories
    from arstudio.training.cspd_draft import acceptance, guided_features
    from arstudio.training.generator import tokenize_shapes

    d, target = pipe.preset.defaults, pipe.generator
    tokens, cond = tokenize_shapes(pipe.tokenizer, 8, 4242)
    with torch.no_grad():
        z = guided_features(target, tokens, cond, torch.full((8,), float(d["guidance_scale"])))
    steps, clip = d["num_inference_steps"], target.config.x0_clip
    p = Trajectories(target.head, steps, d["temperature"], clip)
    q = Trajectories(pipe.drafter.head, steps, d["temperature"], clip)
    curve = {tail: round(acceptance(p, q, z, steps - tail), 3) for tail in tails}
    print("exact acceptance by tail_steps", curve)
    return curve


def quality(
    pipe, name: str, decoding: str, knobs: dict, per_class: int, batch: int, seed: int, classifier, real
):
    labels = [c for c in range(NUM_CLASSES) for _ in range(per_class)]
    generator = torch.Generator().manual_seed(seed)
    images, accepted = [], []
    start = time.perf_counter()
    for i in range(0, len(labels), batch):
        out = pipe(
            class_labels=labels[i : i + batch],
            decoding=decoding,
            generator=generator,
            output_type="np",
            **knobs,
        )
        images.extend(out.images)
        accepted.append(out.stats.get("acceptance_rate", float("nan")))
    images = np.stack(images)
    row = {
        "seed": seed,
        "fd_shapes_vs_real": fd_shapes(images, real, classifier),
        "verifier_accuracy": class_accuracy(images, labels),
        "acceptance_rate": float(np.mean(accepted)),
        "seconds": time.perf_counter() - start,
    }
    print(name, seed, row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--draft", default=None, help="a DraftHead folder (default: the preset's shipped drafter)"
    )
    parser.add_argument("--images", type=int, default=8, help="images per setting for the batch-1 timing")
    parser.add_argument("--per-class", type=int, default=10, help="images per class for FD-shapes")
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--name", default="cspd_shapes-c2i-continuous")
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = header(args.name)
    pipe = load_pipeline(PRESET, device="cpu")
    if args.draft:
        pipe.drafter = DraftHead.from_pretrained(args.draft)
    if pipe.drafter is None:
        raise SystemExit(f"{PRESET} ships no drafter: pass --draft DIR")
    results = {
        "draft": pipe.drafter.config.__dict__,
        "defaults": pipe.preset.defaults,
        **speed(pipe, args.images),
    }
    results["cpu_pressure_after_timing"] = cpu_pressure()
    results["exact_acceptance_by_tail_steps"] = tail_curve(pipe)
    classifier = load_shipped_classifier()
    n = args.per_class * NUM_CLASSES
    real, _, _ = class_batch(1001, n, 32)
    results["fd_shapes_real_vs_real"] = fd_shapes(class_batch(2002, n, 32)[0], real, classifier)
    results["quality"] = {
        "ar": [
            quality(pipe, "ar", "ar", {}, args.per_class, args.batch, seed, classifier, real)
            for seed in (0, 1)
        ],
        **{
            name: quality(pipe, name, *SETTINGS[name], args.per_class, args.batch, 0, classifier, real)
            for name in QUALITY
        },
    }
    finish(info, results)


if __name__ == "__main__":
    main()

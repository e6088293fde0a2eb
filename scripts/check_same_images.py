"""Hash the images and tokens every local preset makes with every strategy it offers, for fixed seeds.

Run it on two source trees and compare the two JSON files: a refactor of the pipeline must not change a
single pixel. Cases that a version refuses are recorded as the refusal's message.

    git archive 794eeef src | tar -x -C /tmp/base
    PYTHONPATH=/tmp/base/src python scripts/check_same_images.py /tmp/before.json
    PYTHONPATH=src python scripts/check_same_images.py /tmp/after.json
    python scripts/check_same_images.py --compare /tmp/before.json /tmp/after.json
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import torch

import arstudio

SKIP = ("llamagen-",)  # hub presets: no local weights on the machines that run this


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def image_cases(pipe) -> dict:
    """name -> call kwargs: every strategy at the preset's defaults, plus the settings each may change."""
    text = pipe.text_encoder is not None
    base = {"prompt": ["a red circle", "a blue square"]} if text else {"class_labels": [0, 1]}
    control = getattr(pipe.generator, "control_encoder", None) is not None
    if control:
        res = pipe.tokenizer.config.resolution
        edge = np.zeros((res, res), dtype=np.uint8)
        edge[res // 4 : 3 * res // 4, res // 2] = 255
        base["control_image"] = edge
    cases = {}
    for strategy in pipe.decoding_strategies:
        cases[strategy] = {**base, "decoding": strategy}
        if strategy in ("dd1", "dd2"):
            continue
        cases[f"{strategy}/cfg_interval"] = {**base, "decoding": strategy, "cfg_interval": (0.25, 0.75)}
        cases[f"{strategy}/guidance"] = {
            **base,
            "decoding": strategy,
            "guidance_scale": 2.0,
            "temperature": 0.9,
        }
        cases[f"{strategy}/sampling"] = {
            **base,
            "decoding": strategy,
            "guidance_scale": 2.0,
            "temperature": 0.9,
            "top_k": 5,
            "top_p": 0.9,
        }
    if "dd2" in pipe.decoding_strategies:
        cases["dd2/steps2"] = {**base, "decoding": "dd2", "num_inference_steps": 2}
    if text:
        cases["ar/negative"] = {**base, "negative_prompt": "a green triangle", "guidance_scale": 3.0}
    return cases


def run_image(pipe, kwargs) -> str:
    out = pipe(**kwargs, generator=torch.Generator().manual_seed(1234), output_type="np")
    return digest(out.tokens.cpu().numpy(), *out.images)


def run_video(pipe) -> dict:
    out = pipe(
        class_labels=[0, 1], num_frames=3, generator=torch.Generator().manual_seed(1234), output_type="np"
    )
    return {"far": digest(out.latents.cpu().numpy(), *out.frames)}


def measure() -> dict:
    results = {}
    for name in arstudio.list_presets():
        if name.startswith(SKIP):
            continue
        pipe = arstudio.load_pipeline(name, device="cpu")
        if isinstance(pipe, arstudio.VideoPipeline):
            results.update({f"{name}/{k}": v for k, v in run_video(pipe).items()})
            continue
        for case, kwargs in image_cases(pipe).items():
            try:
                results[f"{name}/{case}"] = run_image(pipe, kwargs)
            except ValueError as err:
                results[f"{name}/{case}"] = f"refused: {err}"
            print(f"{name}/{case}: {results[f'{name}/{case}']}", flush=True)
    return results


def compare(before: dict, after: dict) -> int:
    changed = 0
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a != b:
            changed += 1
            print(f"DIFFERENT {key}:\n  before: {a}\n  after:  {b}")
    print(f"{len(before)} cases before, {len(after)} after, {changed} differ")
    return changed


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "--compare":
        before, after = (json.loads(open(p).read()) for p in sys.argv[2:4])
        sys.exit(1 if compare(before, after) else 0)
    with open(sys.argv[1], "w") as f:
        json.dump(measure(), f, indent=1)

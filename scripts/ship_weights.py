"""Copy trained weights from runs/ into the package: only config.json + model.safetensors (no optimizer).

Generators and drafters are stored in float16 (half the bytes; they load back into float32): the shipped-file budget is
a few MB, and the benchmark numbers in the closing notes were measured on the float16 copies.

    python scripts/ship_weights.py            # everything that has been trained
    python scripts/ship_weights.py shapes-t2i/generator
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from arstudio.generators.continuous import ContinuousImageGenerator
from arstudio.generators.distilled import DDGenerator
from arstudio.generators.drafter import Drafter
from arstudio.generators.image import ImageGenerator
from arstudio.generators.video import VideoGenerator
from arstudio.io import CONFIG_NAME, WEIGHTS_NAME
from arstudio.presets import WEIGHTS_ROOT

# package folder under arstudio/weights -> (training output folder, store as float16)
SHIPPED = {
    "shapes-c2i/tokenizer": ("runs/vq-shapes32", False),
    "shapes-c2i/generator": ("runs/gen-shapes-c2i", True),
    "shapes-c2i/drafter": ("runs/drafter-shapes-c2i", True),
    "shapes-c2i/dd1": ("runs/dd1-shapes-c2i-long", True),  # 16k pairs, 2400 steps (docs/training.md)
    "shapes-c2i/dd2": ("runs/dd2-soup3", True),  # soup of 3 seeds: batch 32, 1000 steps, DD1 weight 0.05
    "shapes-t2i/tokenizer": ("runs/vq-shapes32-t2i", False),
    "shapes-t2i/generator": ("runs/gen-shapes-t2i-scratch", True),  # v3: phrase slots from scratch
    "shapes-t2i/drafter": ("runs/drafter-shapes-t2i-scratch", True),
    "fd-shapes-classifier": ("runs/fd-shapes-classifier", False),
    "shapes-c2i-continuous/tokenizer": ("runs/kl-shapes32", False),
    "shapes-c2i-continuous/generator": ("runs/gen-shapes-c2i-continuous", True),
    "shapes-c2i-bridge/tokenizer": ("runs/bridge-shapes32", False),
    "shapes-c2i-bridge/generator": ("runs/gen-bridge-joint", True),
    # control presets keep shapes-c2i's tokenizer (Preset.shared_tokenizer)
    "shapes-control/generator": ("runs/gen-shapes-control", True),
    "shapes-control-prefill/generator": ("runs/gen-shapes-control-prefill", True),
    "sprites-video/tokenizer": ("runs/kl-shapes32", False),
    "sprites-video/generator": ("runs/sprites-video-bf16/ema", True),  # bf16, 4200 steps, weight average
    "causal-video-tokenizer": ("runs/causal-video-tokenizer", False),
}
MODELS = {
    cls.__name__: cls
    for cls in (ImageGenerator, ContinuousImageGenerator, Drafter, DDGenerator, VideoGenerator)
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", choices=[[], *SHIPPED], help="default: all")
    args = parser.parse_args()
    for target in args.targets or SHIPPED:
        source, half = SHIPPED[target]
        source = Path(source)
        if not (source / WEIGHTS_NAME).is_file():
            print(f"skip {target}: no {WEIGHTS_NAME} in {source}")
            continue
        destination = WEIGHTS_ROOT / target
        destination.mkdir(parents=True, exist_ok=True)
        if half:
            cls = MODELS[json.loads((source / CONFIG_NAME).read_text())["class"]]
            cls.from_pretrained(source).save_pretrained(destination, dtype=torch.float16)
        else:
            for file in (CONFIG_NAME, WEIGHTS_NAME):
                shutil.copyfile(source / file, destination / file)
        size = (destination / WEIGHTS_NAME).stat().st_size / 2**20
        print(f"{target}: {source} -> {destination} ({size:.1f} MB)")


if __name__ == "__main__":
    main()

"""Copy trained weights from runs/ into the package: only config.json + model.safetensors (no optimizer).

The generator is stored in float16 (half the bytes; it is loaded back into float32): the shipped-file
budget is a few MB, and the benchmark numbers in the closing note were measured on the float16 copy.

python -m benchmarks.ship_weights [--tokenizer runs/vq-shapes32] [--generator runs/gen-shapes-c2i]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from arstudio.generators.image import ImageGenerator
from arstudio.io import CONFIG_NAME, WEIGHTS_NAME
from arstudio.presets import WEIGHTS_ROOT

COPIES = {"tokenizer": "shapes-c2i/tokenizer", "generator": "shapes-c2i/generator",
          "classifier": "fd-shapes-classifier"}  # fmt: skip
HALF = {"generator"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default="runs/vq-shapes32")
    parser.add_argument("--generator", default="runs/gen-shapes-c2i")
    parser.add_argument("--classifier", default="runs/fd-shapes-classifier")
    args = parser.parse_args()
    for name, target in COPIES.items():
        source = Path(getattr(args, name))
        if not (source / WEIGHTS_NAME).is_file():
            print(f"skip {name}: no {WEIGHTS_NAME} in {source}")
            continue
        destination = WEIGHTS_ROOT / target
        destination.mkdir(parents=True, exist_ok=True)
        if name in HALF:
            ImageGenerator.from_pretrained(source).save_pretrained(destination, dtype=torch.float16)
        else:
            for file in (CONFIG_NAME, WEIGHTS_NAME):
                shutil.copyfile(source / file, destination / file)
        size = (destination / WEIGHTS_NAME).stat().st_size / 2**20
        print(f"{name}: {source} -> {destination} ({size:.1f} MB)")


if __name__ == "__main__":
    main()

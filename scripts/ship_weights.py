"""Copy trained weights from runs/ into the package: only config.json + model.safetensors (no optimizer).

Each model is stored in the dtype its row of SHIPPED names (everything loads back as float32): the whole tracked
tree must fit the 64 MiB a remote GPU run receives (tests/test_tree_size.py keeps it under 56 MiB).
- float16: generators, drafters, DD models, tokenizers (tokenizer PSNR and verifier agreement unchanged,
  benchmarks/results/tokenizer_*.json);
- int8 (per-output-channel scales, float16 for vectors and small matrices, see arstudio.io.storage_state): the
  largest generators, where the preset's benchmark stayed within its run-to-run spread;
- float32: the FD-shapes classifier (a metric's features: not worth moving the numbers for 0.2 MB).

    python scripts/ship_weights.py            # everything that has been trained
    python scripts/ship_weights.py shapes-t2i/generator
    python scripts/ship_weights.py --restore  # re-store the shipped folders themselves in their SHIPPED dtype
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from arstudio.evaluation.fd_shapes import ShapesClassifier
from arstudio.generators.continuous import ContinuousImageGenerator
from arstudio.generators.distilled import DDGenerator
from arstudio.generators.draft_head import DraftHead
from arstudio.generators.drafter import Drafter
from arstudio.generators.image import ImageGenerator
from arstudio.generators.video import VideoGenerator
from arstudio.io import CONFIG_NAME, WEIGHTS_NAME
from arstudio.presets import WEIGHTS_ROOT
from arstudio.tokenizers.bridge import BridgeTokenizer
from arstudio.tokenizers.causal_video import CausalVideoTokenizer
from arstudio.tokenizers.kl import KLTokenizer
from arstudio.tokenizers.vq import VQTokenizer

F16, I8, F32 = torch.float16, torch.int8, torch.float32
# package folder under arstudio/weights -> (training output folder, storage dtype)
SHIPPED = {
    "shapes-c2i/tokenizer": ("runs/vq-shapes32", F16),
    "shapes-c2i/generator": ("runs/gen-shapes-c2i", F16),
    "shapes-c2i/drafter": ("runs/drafter-shapes-c2i-guided", F16),  # issue 23: guided + own rollouts
    # DD models int8 since issue 23 (room for shapes-c2i-256's): verifier and FD-shapes as float16's (docs/training.md)
    "shapes-c2i/dd1": ("runs/dd1-shapes-c2i-long", I8),  # 16k pairs, 2400 steps (docs/training.md)
    "shapes-c2i/dd2": ("runs/dd2-soup3", I8),  # soup of 3 seeds: batch 32, 1000 steps, DD1 weight 0.05
    "shapes-t2i/tokenizer": ("runs/vq-shapes32-t2i", F16),
    "shapes-t2i/generator": ("runs/gen-shapes-t2i-scratch", F16),  # v3: phrase slots from scratch
    "shapes-t2i/drafter": ("runs/drafter-shapes-t2i-guided", F16),  # issue 23: guided + own rollouts
    "fd-shapes-classifier": ("runs/fd-shapes-classifier", F32),
    "shapes-c2i-continuous/tokenizer": ("runs/kl-shapes32", F16),
    "shapes-c2i-continuous/generator": ("runs/gen-shapes-c2i-continuous", I8),
    "shapes-c2i-continuous/drafter": (
        "runs/cspd-draft-d1/drafter",
        F16,
    ),  # CSpD draft head (training/cspd_draft.py)
    "shapes-c2i-bridge/tokenizer": ("runs/bridge-shapes32", F16),
    "shapes-c2i-bridge/generator": ("runs/gen-bridge-joint", I8),
    # control presets keep shapes-c2i's tokenizer, sprites-video shapes-c2i-continuous's (Preset.shared_tokenizer)
    "shapes-control/generator": ("runs/gen-shapes-control", I8),
    "shapes-control-prefill/generator": ("runs/gen-shapes-control-prefill", I8),
    "sprites-video/generator": ("runs/sprites-video-bf16/ema", F16),  # bf16, 4200 steps, weight average
    "causal-video-tokenizer": ("runs/causal-video-tokenizer", F16),
    # shapes-c2i-256 keeps shapes-c2i's tokenizer (loaded at 64 px)
    "shapes-c2i-256/generator": ("runs/gen-shapes-c2i-256", I8),
    "shapes-c2i-256/drafter": ("runs/drafter-shapes-c2i-256-guided", F16),
    "shapes-c2i-256/dd1": ("runs/dd1-shapes-c2i-256", I8),  # 4096 pairs, 1200 steps at batch 32
    "shapes-c2i-256/dd2": ("runs/dd2-shapes-c2i-256", I8),  # from dd1: 8192 pairs, 200 steps at batch 16
}
MODELS = {
    cls.__name__: cls
    for cls in (
        ImageGenerator,
        ContinuousImageGenerator,
        Drafter,
        DraftHead,
        DDGenerator,
        VideoGenerator,
        VQTokenizer,
        KLTokenizer,
        BridgeTokenizer,
        CausalVideoTokenizer,
        ShapesClassifier,
    )
}


def store(source: Path, destination: Path, dtype: torch.dtype) -> None:
    """Load the model in ``source`` (float32 after loading) and save it to ``destination`` in ``dtype``."""
    cls = MODELS[json.loads((source / CONFIG_NAME).read_text())["class"]]
    cls.from_pretrained(source).save_pretrained(destination, dtype=dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", choices=[[], *SHIPPED], help="default: all")
    parser.add_argument(
        "--restore",
        action="store_true",
        help="read the shipped folders instead of runs/ (changes only how they are stored)",
    )
    args = parser.parse_args()
    for target in args.targets or SHIPPED:
        run, dtype = SHIPPED[target]
        destination = WEIGHTS_ROOT / target
        source = destination if args.restore else Path(run)
        if not (source / WEIGHTS_NAME).is_file():
            print(f"skip {target}: no {WEIGHTS_NAME} in {source}")
            continue
        destination.mkdir(parents=True, exist_ok=True)
        store(source, destination, dtype)
        size = (destination / WEIGHTS_NAME).stat().st_size / 2**20
        print(f"{target}: {source} -> {destination} ({str(dtype).removeprefix('torch.')}, {size:.1f} MB)")


if __name__ == "__main__":
    main()

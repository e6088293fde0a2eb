"""Cheap probe of control fine-tunes (run folders or shipped weights): teacher-forced cross-entropy (nats per
token) on ``count`` training images with the right control, the null control, and another image's control.
A model that uses the control has right < null < other; minutes of training tell whether a design learns.

    python scripts/probe_control.py runs/gen-shapes-control,src/arstudio/weights/shapes-control/generator \
        [--data runs/gen-shapes-control] [--count 128]

``--data`` is a run folder holding train_tokens.safetensors and train_controls.safetensors (default: the
first folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from arstudio.generators.image import ImageGenerator
from arstudio.io import load_safetensors
from arstudio.training.control import CONTROLS_FILE


@torch.no_grad()
def probe(model: ImageGenerator, tokens, labels, maps: dict) -> dict[str, float]:
    """{"right" | "null" | "other": mean cross-entropy}, averaged over the control types in ``maps``."""
    losses = {"right": 0.0, "null": 0.0, "other": 0.0}
    for kind, table in maps.items():
        table = table.float()[:, None]  # (B, 1, R, R)
        kinds = [kind] * table.shape[0]
        controls = {
            "right": model.encode_control(table, kinds),
            "null": None,
            "other": model.encode_control(table.roll(1, dims=0), kinds),  # the next image's map
        }
        for name, control in controls.items():
            logits = model(tokens, labels, control)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1))
            losses[name] += loss.item() / len(maps)
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", help="comma-separated model folders (config.json + model.safetensors)")
    parser.add_argument("--data", default=None, help="run folder with the training tokens and controls")
    parser.add_argument("--count", type=int, default=128, help="training images to score")
    args = parser.parse_args()
    if args.count < 1:
        raise ValueError(f"--count must be >= 1, got {args.count}")
    folders = args.folders.split(",")
    data = Path(args.data or folders[0])
    table = load_safetensors(data / "train_tokens.safetensors")
    tokens = table["tokens"][: args.count].long()
    labels = table["cond" if "cond" in table else "labels"][: args.count]
    maps = {k: v[: args.count] for k, v in load_safetensors(data / CONTROLS_FILE).items()}
    for folder in folders:
        model = ImageGenerator.from_pretrained(folder).float().eval()
        losses = probe(
            model, tokens, labels, {k: v for k, v in maps.items() if k in model.config.control.types}
        )
        print(folder, " ".join(f"{k} {v:.4f}" for k, v in losses.items()), flush=True)


if __name__ == "__main__":
    main()

"""Train the causal (C-ViViT-style) video tokenizer on sprite clips: l2 reconstruction + a small KL term.

Batches are rendered on the fly: step i draws clips start = i * batch_size of the seeded class clip set, so
a resumed run sees the clips an uninterrupted one would have. Clips have ``num_frames`` = 1 + k * tubelet
frames; the first frame is trained as an image slice in every clip.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from arstudio.data.sprites import class_clips
from arstudio.images import images_to_tensor
from arstudio.tokenizers.causal_video import CausalVideoConfig, CausalVideoTokenizer
from arstudio.training.common import (
    checkpoint_due,
    cosine_lr,
    optimizer_step,
    save_checkpoint,
    seeded,
    set_lr,
    start_training,
)


def clip_tensor(seed: int, count: int, num_frames: int, resolution: int, start: int = 0) -> torch.Tensor:
    """(count, T, 3, H, W) in [-1, 1] of the seeded class clip set."""
    frames, _, _ = class_clips(seed, count, num_frames, resolution, start=start)
    pixels = images_to_tensor(frames.reshape(-1, resolution, resolution, 3))
    return pixels.view(count, num_frames, *pixels.shape[1:])


def train_causal_video_tokenizer(
    out_dir: str | Path,
    config: CausalVideoConfig,
    steps: int = 600,
    batch_size: int = 8,
    num_frames: int = 5,
    lr: float = 1e-3,
    seed: int = 0,
    save_every: int = 100,
) -> CausalVideoTokenizer:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.slices(num_frames)  # refuses clip lengths that do not split into first frame + tubelets
    model = seeded(lambda: CausalVideoTokenizer(config), seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    start, accelerator, model, optimizer, unwrapped = start_training(model, optimizer, out_dir)
    noise = torch.Generator().manual_seed(seed + 2)
    bar = tqdm(range(start, steps), desc="causal video tokenizer", initial=start, total=steps)
    for step in bar:
        set_lr(optimizer, cosine_lr(step, steps, lr, warmup=50))
        video = clip_tensor(seed, batch_size, num_frames, config.resolution, start=step * batch_size)
        loss, parts = unwrapped.loss(video.to(accelerator.device), noise)
        optimizer_step(accelerator, model, optimizer, loss, 1.0)
        if step % 10 == 0:
            bar.set_postfix(mse=f"{parts['mse']:.4f}", kl=f"{parts['kl']:.2f}")
        if checkpoint_due(step, steps, save_every):
            save_checkpoint(unwrapped, optimizer, step + 1, out_dir)
    return unwrapped.eval()

"""Train the VQ tokenizer on procedural shapes mixed with scikit-image photo crops.

Loss: l2 reconstruction + codebook loss + 0.25 x commitment (LlamaGen's recipe without LPIPS/GAN, which
need downloaded weights). Resumable: rerunning with the same ``out_dir`` continues from the last save.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from arstudio.data.photos import photo_crops
from arstudio.data.shapes import class_batch, make_text_item
from arstudio.images import images_to_tensor
from arstudio.tokenizers.vq import VQConfig, VQTokenizer, codebook_usage
from arstudio.training.common import (
    checkpoint_due,
    cosine_lr,
    optimizer_step,
    save_checkpoint,
    seeded,
    set_lr,
    start_training,
)


def tokenizer_batch(
    step: int, batch_size: int, resolution: int, seed: int, photo_fraction: float, text_fraction: float = 0.0
):
    """Batch ``step`` of the training stream: deterministic, never repeats.

    Order inside a batch: one-object class items, then 1-2 object text items, then photo crops.
    """
    n_photos = int(round(batch_size * photo_fraction))
    n_text = int(round(batch_size * text_fraction))
    n_class = batch_size - n_photos - n_text
    if n_class < 0:
        raise ValueError(f"photo_fraction + text_fraction = {photo_fraction + text_fraction} exceeds 1")
    parts = [class_batch(seed, n_class, resolution, start=step * batch_size)[0]]
    if n_text:
        parts.append(
            np.stack([make_text_item(seed, step * batch_size + i, resolution)[0] for i in range(n_text)])
        )
    if n_photos:
        parts.append(photo_crops(n_photos, resolution, seed=seed * 1_000_003 + step, split="train"))
    return images_to_tensor(np.concatenate(parts))


def train_tokenizer(
    out_dir: str | Path,
    config: VQConfig | None = None,
    steps: int = 1500,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    photo_fraction: float = 0.2,
    text_fraction: float = 0.0,
    save_every: int = 250,
    init_from: str | Path | None = None,
) -> VQTokenizer:
    """Train (or, with ``init_from``, fine-tune from another tokenizer's weights) and save to ``out_dir``."""
    out_dir = Path(out_dir)
    config = config or VQConfig()
    model = seeded(lambda: VQTokenizer(config), seed)
    if init_from is not None:
        model = VQTokenizer.from_pretrained(init_from).train()
        if model.config != config:
            raise ValueError(f"init_from tokenizer has config {model.config}, expected {config}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    start, accelerator, model, optimizer, _ = start_training(model, optimizer, out_dir)
    bar = tqdm(range(start, steps), desc="tokenizer", initial=start, total=steps)
    for step in bar:
        set_lr(optimizer, cosine_lr(step, steps, lr, warmup=50))
        images = tokenizer_batch(step, batch_size, config.resolution, seed, photo_fraction, text_fraction)
        images = images.to(accelerator.device)
        recon, ids, vq_loss = model(images)
        rec_loss = F.mse_loss(recon, images)
        loss = rec_loss + vq_loss
        optimizer_step(accelerator, model, optimizer, loss)
        if step % 25 == 0:
            usage = codebook_usage(ids, config.codebook_size)["usage"]
            bar.set_postfix(rec=f"{rec_loss.item():.4f}", vq=f"{vq_loss.item():.4f}", usage=f"{usage:.2f}")
        if checkpoint_due(step, steps, save_every):
            save_checkpoint(accelerator.unwrap_model(model), optimizer, step + 1, out_dir)
    return accelerator.unwrap_model(model).eval()

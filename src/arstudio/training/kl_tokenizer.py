"""Train the KL tokenizer on the same image stream as the VQ tokenizer, then measure its scaling factor.

Loss: per-pixel l2 + ``kl_weight`` x per-element KL(q(z|x) || N(0, 1)) on posterior samples (LDM's KL-VAE
recipe without LPIPS/GAN, whose weights would need a download). After the last step the scaling factor is
set to 1 / std of the posterior means on held-out images, as LDM/MAR do, and saved in config.json.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from arstudio.tokenizers.kl import KLConfig, KLTokenizer
from arstudio.training.common import (
    cosine_lr,
    optimizer_step,
    save_checkpoint,
    seeded,
    set_lr,
    start_training,
)
from arstudio.training.tokenizer import tokenizer_batch

SCALE_BATCHES = 8  # held-out batches (steps past the end of training) for the scaling factor


@torch.no_grad()
def measure_scaling_factor(model: KLTokenizer, steps: int, batch_size: int, seed: int, photo_fraction: float):
    """1 / std of unscaled posterior means over held-out batches of the training stream."""
    means = []
    for step in range(steps, steps + SCALE_BATCHES):
        images = tokenizer_batch(step, batch_size, model.config.resolution, seed, photo_fraction)
        means.append(model.posterior(images).mean)
    return float(1.0 / torch.cat(means).std())


def train_kl_tokenizer(
    out_dir: str | Path,
    config: KLConfig | None = None,
    steps: int = 1500,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    photo_fraction: float = 0.1,
    save_every: int = 250,
) -> KLTokenizer:
    out_dir = Path(out_dir)
    config = config or KLConfig()
    model = seeded(lambda: KLTokenizer(config), seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    start, accelerator, model, optimizer, unwrapped = start_training(model, optimizer, out_dir)
    noise = torch.Generator().manual_seed(seed + 1)
    bar = tqdm(range(start, steps), desc="kl-tokenizer", initial=start, total=steps)
    for step in bar:
        set_lr(optimizer, cosine_lr(step, steps, lr, warmup=50))
        images = tokenizer_batch(step, batch_size, config.resolution, seed, photo_fraction)
        images = images.to(accelerator.device)
        posterior = unwrapped.posterior(images)
        recon = unwrapped.decode_unscaled(posterior.sample(generator=noise))
        rec_loss = F.mse_loss(recon, images)
        kl = posterior.kl().mean() / posterior.mean[0].numel()  # per latent element
        loss = rec_loss + config.kl_weight * kl
        optimizer_step(accelerator, model, optimizer, loss)
        if step % 25 == 0:
            bar.set_postfix(rec=f"{rec_loss.item():.4f}", kl=f"{kl.item():.2f}")
        if (step + 1) % save_every == 0 and step + 1 < steps:
            save_checkpoint(unwrapped, optimizer, step + 1, out_dir)
    unwrapped.eval()
    scale = measure_scaling_factor(unwrapped, steps, batch_size, seed, photo_fraction)
    unwrapped.config = dataclasses.replace(unwrapped.config, scaling_factor=scale)
    save_checkpoint(unwrapped, optimizer, steps, out_dir)
    print(f"scaling factor {scale:.4f}")
    return unwrapped


@torch.no_grad()
def build_bridge_tokenizer(
    out_dir: str | Path,
    kl_dir: str | Path,
    levels: int = 64,
    num_images: int = 4096,
    seed: int = 0,
    batch_size: int = 256,
    method: str = "empirical",
):
    """TokenBridge's post-training step: fit the per-dimension quantiser (bins by ``method``, see
    ``tokenizers/bridge.py``) of a trained KL tokenizer on the latents of ``num_images`` training-set images
    (class set, seed ``seed``) and save the bridge tokenizer.

    Returns (tokenizer, the reconstruction-error vs bits-per-dimension table on held-out images).
    """
    from arstudio.data.shapes import class_batch
    from arstudio.images import images_to_tensor
    from arstudio.tokenizers.bridge import BridgeTokenizer, quantisation_sweep

    kl = KLTokenizer.from_pretrained(kl_dir)
    resolution = kl.config.resolution
    latents = [
        kl.encode(
            images_to_tensor(class_batch(seed, min(batch_size, num_images - i), resolution, start=i)[0])
        )
        for i in range(0, num_images, batch_size)
    ]
    latents = torch.cat(latents)  # (num_images, h, w, d)
    bridge = BridgeTokenizer.from_kl(kl, levels, latents, method)
    bridge.save_pretrained(out_dir)
    held_out = images_to_tensor(class_batch(seed + 7919, 512, resolution)[0])
    return bridge, quantisation_sweep(kl, held_out, latents)

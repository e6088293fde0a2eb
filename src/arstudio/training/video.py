"""Train the FAR video generator on KL latents of sprite clips.

1. Render ``num_clips`` class clips of ``clip_frames`` frames and encode every frame once with the frozen KL
   tokenizer (posterior mean); the table is saved beside the checkpoint, so a resumed run skips this.
2. Each step draws clips and a random window of ``train_frames`` frames from each, drops labels to the null
   class at the model's rate (CFG), and, for ``long_context_prob`` of the batches, hands a random number of
   leading frames to the model compressed (long-term context). Loss: ``VideoGenerator.loss``.
3. Optional: bf16 autocast (``mixed_precision``) for more steps in the same time, and an average of the
   weights (``ema_decay``) saved in ``out_dir/ema``, which ships instead of the last step when it samples better.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from arstudio.data.sprites import class_clips
from arstudio.generators.video import VideoGenerator, VideoGeneratorConfig
from arstudio.images import images_to_tensor
from arstudio.io import atomic_write_bytes, load_safetensors
from arstudio.tokenizers.kl import KLTokenizer
from arstudio.training.common import (
    EmaWeights,
    autocast,
    checkpoint_due,
    cosine_lr,
    generator_optimizer,
    optimizer_step,
    save_checkpoint,
    seeded,
    set_lr,
    start_training,
)

LATENTS_FILE = "train_latents.safetensors"


@torch.no_grad()
def encode_clips(tokenizer: KLTokenizer, num_clips: int, clip_frames: int, seed: int, chunk: int = 32):
    """(latents (num_clips, T, N, d) fp32, labels (num_clips,)) of the seeded class clip set."""
    resolution = tokenizer.config.resolution
    all_latents, all_labels = [], []
    for start in tqdm(range(0, num_clips, chunk), desc="encoding clips"):
        count = min(chunk, num_clips - start)
        frames, labels, _ = class_clips(seed, count, clip_frames, resolution, start=start)
        pixels = images_to_tensor(frames.reshape(-1, resolution, resolution, 3))
        latents = tokenizer.encode(pixels).flatten(1, 2)  # (count * T, N, d), raster order
        all_latents.append(latents.view(count, clip_frames, *latents.shape[1:]))
        all_labels.append(torch.from_numpy(labels))
    return torch.cat(all_latents), torch.cat(all_labels)


def load_or_encode(out_dir: Path, tokenizer, num_clips: int, clip_frames: int, seed: int):
    from safetensors.torch import save

    path = out_dir / LATENTS_FILE
    if path.is_file():
        table = load_safetensors(path)
        if tuple(table["latents"].shape[:2]) == (num_clips, clip_frames):
            return table["latents"].float(), table["labels"]
    latents, labels = encode_clips(tokenizer, num_clips, clip_frames, seed)
    # fp16 halves the file; latents are ~unit scale, so fp16's 3 decimal digits lose nothing that matters.
    atomic_write_bytes(path, save({"latents": latents.half().contiguous(), "labels": labels.contiguous()}))
    return latents, labels


class ClipBatches:
    """Seeded batches of (clip windows (B, train_frames, N, d), labels with dropout, num_long); ``skip(n)``
    replays n draws so a resumed run sees the batches an uninterrupted one would have."""

    def __init__(
        self, latents, labels, batch_size: int, config: VideoGeneratorConfig, seed: int, conditioning
    ):
        self.latents, self.labels, self.batch_size, self.config = latents, labels, batch_size, config
        self.conditioning = conditioning
        self.generator = torch.Generator().manual_seed(seed + 1)

    def skip(self, steps: int) -> None:
        for _ in range(steps):
            self.next()

    def next(self):
        cfg, g = self.config, self.generator
        window = cfg.train_frames
        index = torch.randint(0, self.latents.shape[0], (self.batch_size,), generator=g)
        starts = torch.randint(0, self.latents.shape[1] - window + 1, (self.batch_size,), generator=g)
        offsets = starts[:, None] + torch.arange(window)[None]  # (B, window)
        clips = self.latents[index[:, None], offsets]  # (B, window, N, d)
        labels = self.conditioning.drop(self.labels[index], generator=g)
        num_long = 0
        if window > 2 and float(torch.rand((), generator=g)) < cfg.long_context_prob:
            num_long = int(torch.randint(1, window - 1, (), generator=g))  # leave >= 2 full frames
        return clips, labels, num_long


def train_video_generator(
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    config: VideoGeneratorConfig,
    steps: int = 1500,
    batch_size: int = 16,
    lr: float = 1e-3,
    num_clips: int = 2000,
    clip_frames: int = 16,
    seed: int = 0,
    save_every: int = 100,
    mixed_precision: str = "no",
    ema_decay: float | None = None,
) -> VideoGenerator:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if clip_frames < config.train_frames:
        raise ValueError(f"clip_frames={clip_frames} must be >= train_frames={config.train_frames}")
    tokenizer = KLTokenizer.from_pretrained(tokenizer_dir)
    if tokenizer.token_dim != config.token_dim or tokenizer.grid_size != config.backbone.grid_size:
        raise ValueError(
            f"tokenizer gives {tokenizer.grid_size}x{tokenizer.grid_size} grids of {tokenizer.token_dim}-dim "
            f"latents; the config wants {config.backbone.grid_size} and {config.token_dim}"
        )
    latents, labels = load_or_encode(out_dir, tokenizer, num_clips, clip_frames, seed)
    model = seeded(lambda: VideoGenerator(config), seed)
    optimizer = generator_optimizer(model, lr)
    start, accelerator, model, optimizer, unwrapped = start_training(model, optimizer, out_dir)
    precision = autocast(accelerator.device, mixed_precision)  # checked once, before any step runs
    ema = None if ema_decay is None else EmaWeights(unwrapped, ema_decay, out_dir)
    batches = ClipBatches(latents, labels, batch_size, config, seed, unwrapped.cls_embedding)
    batches.skip(start)
    flow_noise = torch.Generator().manual_seed(seed + 2)  # per-frame t, clean draws, noise (not replayed)
    bar = tqdm(range(start, steps), desc="video generator", initial=start, total=steps)
    for step in bar:
        set_lr(optimizer, cosine_lr(step, steps, lr, warmup=50))
        clips, batch_labels, num_long = batches.next()
        device = accelerator.device
        with precision:
            loss = unwrapped.loss(clips.to(device), batch_labels.to(device), flow_noise, num_long)
        optimizer_step(accelerator, model, optimizer, loss, 1.0)
        if ema is not None:
            ema.update(unwrapped, step)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if checkpoint_due(step, steps, save_every):
            if ema is not None:
                ema.save()
            save_checkpoint(unwrapped, optimizer, step + 1, out_dir)
    return unwrapped.eval()

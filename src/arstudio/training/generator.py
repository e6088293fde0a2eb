"""Train a class-conditional AR generator on tokens of procedural shapes.

1. Render ``num_images`` shapes (class-conditional set, seeded) and encode them once with the frozen
   tokenizer; the token table is saved beside the checkpoint so a resumed run skips this.
2. Teacher-forced cross-entropy on (B, N) tokens with label dropout (the null class teaches CFG).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from arstudio.data.shapes import class_batch
from arstudio.generators.image import ClassImageGenerator, GeneratorConfig
from arstudio.io import atomic_write_bytes, load_safetensors
from arstudio.tokenizers.vq import VQTokenizer
from arstudio.training.common import (
    cosine_lr,
    images_to_tensor,
    make_accelerator,
    resume_checkpoint,
    save_checkpoint,
    seeded,
    set_lr,
)

TOKENS_FILE = "train_tokens.safetensors"


@torch.no_grad()
def tokenize_shapes(tokenizer: VQTokenizer, num_images: int, seed: int, chunk: int = 256):
    """(tokens (num_images, N) int64, labels (num_images,) int64) of the seeded class-conditional set."""
    resolution = tokenizer.config.resolution
    all_tokens, all_labels = [], []
    for start in tqdm(range(0, num_images, chunk), desc="tokenizing"):
        images, labels, _ = class_batch(seed, min(chunk, num_images - start), resolution, start=start)
        all_tokens.append(tokenizer.encode(images_to_tensor(images)).flatten(1))
        all_labels.append(torch.from_numpy(labels))
    return torch.cat(all_tokens), torch.cat(all_labels)


def _load_or_make_tokens(out_dir: Path, tokenizer: VQTokenizer, num_images: int, seed: int):
    from safetensors.torch import save

    path = out_dir / TOKENS_FILE
    if path.is_file():
        table = load_safetensors(path)
        if table["tokens"].shape[0] == num_images:
            return table["tokens"].long(), table["labels"].long()
    tokens, labels = tokenize_shapes(tokenizer, num_images, seed)
    atomic_write_bytes(path, save({"tokens": tokens.to(torch.int16), "labels": labels}))
    return tokens, labels


def train_generator(
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    config: GeneratorConfig,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 1e-3,
    num_images: int = 60_000,
    seed: int = 0,
    save_every: int = 250,
) -> ClassImageGenerator:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = VQTokenizer.from_pretrained(tokenizer_dir)
    if tokenizer.codebook_size != config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.codebook_size} codes but vocab_size={config.vocab_size}")
    if tokenizer.grid_size != config.backbone.grid_size:
        raise ValueError(f"tokenizer grid {tokenizer.grid_size} != backbone grid {config.backbone.grid_size}")
    tokens, labels = _load_or_make_tokens(out_dir, tokenizer, num_images, seed)

    model = seeded(lambda: ClassImageGenerator(config), seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95),
    )  # fmt: skip
    start = resume_checkpoint(model, optimizer, out_dir)
    accelerator = make_accelerator()
    model, optimizer = accelerator.prepare(model, optimizer)
    data_gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(start):  # replay the batch order so a resumed run sees the same batches
        torch.randint(0, num_images, (batch_size,), generator=data_gen)
        torch.rand(batch_size, generator=data_gen)
    bar = tqdm(range(start, steps), desc="generator", initial=start, total=steps)
    unwrapped = accelerator.unwrap_model(model)
    for step in bar:
        set_lr(optimizer, cosine_lr(step, steps, lr, warmup=100))
        index = torch.randint(0, num_images, (batch_size,), generator=data_gen)
        batch_labels = unwrapped.cls_embedding.drop(labels[index], generator=data_gen)
        batch_tokens = tokens[index].to(accelerator.device)
        logits = model(batch_tokens, batch_labels.to(accelerator.device))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch_tokens.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % save_every == 0 or step + 1 == steps:
            save_checkpoint(unwrapped, optimizer, step + 1, out_dir)
    return unwrapped.eval()

"""Train a TokenBridge generator's per-dimension head on the frozen trunk of a diffusion/flow generator.

TokenBridge quantises a trained autoencoder's latents after the fact, so a generator already trained on the
same (unquantised) latents has a trunk that models them; only the categorical head is new. Training the
head alone lets the trunk run once per training image instead of once per step:

1. Tokenize ``num_images`` class-shapes images into level ids (cached beside the checkpoint, as
   ``train_generator`` does) and warm-start the trunk (``warm_start_bridge_trunk``).
2. Run the trunk teacher-forced once over every image, with the class replaced by the null class for a
   seeded 10 % (the conditioning's dropout, so classifier-free guidance has a null stream), and keep the
   per-token states z (N * tokens, dim) in float16 in memory (not saved: a resumed run recomputes them).
3. Per-dimension cross-entropy of the head on random token batches of the cache; only the head moves.

Why not fine-tune everything from the start (``train_generator --init-from``)? Measured on
shapes-c2i-bridge, 2 shared cores: 500 joint steps of 48 images from the continuous trunk and a new head
(~20 min) reached a per-dimension cross-entropy of 2.7-3.2 nats and samples the verifier rejected; 2000
head-only steps of 2048 tokens reached 1.57. Once the head is trained, a joint fine-tune at a low learning
rate is the second stage of the shipped recipe (docs/training.md): the trunk then adapts to the head.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from arstudio.generators.continuous import ContinuousGeneratorConfig, ContinuousImageGenerator
from arstudio.io import WEIGHTS_NAME, load_safetensors
from arstudio.training.common import (
    checkpoint_due,
    cosine_lr,
    resume_checkpoint,
    save_checkpoint,
    seeded,
    set_lr,
)
from arstudio.training.generator import _load_tokenizer, load_or_make_tokens, warm_start_bridge_trunk


@torch.no_grad()
def trunk_states(
    model: ContinuousImageGenerator, tokens: torch.Tensor, labels: torch.Tensor, chunk: int = 100
):
    """Teacher-forced head conditions for every token: (N, T, d) ids + (N,) labels -> (N * T, dim) float16."""
    model.eval()
    states = [
        model(tokens[i : i + chunk], labels[i : i + chunk]).half() for i in range(0, len(tokens), chunk)
    ]
    return torch.cat(states).flatten(0, 1)


def train_bridge_head(
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    config: ContinuousGeneratorConfig,
    trunk_from: str | Path,
    steps: int = 3000,
    batch_tokens: int = 2048,
    lr: float = 2e-3,
    num_images: int = 6000,
    seed: int = 0,
    save_every: int = 500,
) -> ContinuousImageGenerator:
    """Train ``config``'s bridge head on the trunk of the generator saved in ``trunk_from``."""
    if not isinstance(config, ContinuousGeneratorConfig) or config.head != "bridge":
        raise ValueError(f"train_bridge_head trains a bridge head; the preset's generator has {config!r}")
    if config.condition != "class":
        raise ValueError(f"only class-conditioned bridge generators are supported, got {config.condition!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _load_tokenizer(tokenizer_dir, config)
    tokens, labels = load_or_make_tokens(out_dir, tokenizer, num_images, seed, "class", None)

    model = seeded(lambda: ContinuousImageGenerator(config), seed)
    model.bin_values.copy_(tokenizer.quantizer.values)
    warm_start_bridge_trunk(
        model, load_safetensors(Path(trunk_from) / WEIGHTS_NAME), tokenizer.quantizer, str(trunk_from)
    )
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    start = resume_checkpoint(model, optimizer, out_dir)  # the trunk in the checkpoint is the same trunk

    draws = torch.Generator().manual_seed(seed + 1)
    dropped = model.cls_embedding.drop(labels.long(), generator=draws)
    states = trunk_states(model, tokens, dropped)  # (N * T, dim)
    targets = tokens.flatten(0, 1)  # (N * T, d)
    for _ in range(start):  # replay the batch draws of the steps already taken
        torch.randint(0, len(states), (batch_tokens,), generator=draws)

    model.head.train()
    bar = tqdm(range(start, steps), desc="bridge head", initial=start, total=steps)
    for step in bar:
        set_lr(optimizer, cosine_lr(step, steps, lr, warmup=100))
        index = torch.randint(0, len(states), (batch_tokens,), generator=draws)
        loss = model.head.loss(targets[index], states[index].float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if checkpoint_due(step, steps, save_every):
            save_checkpoint(model, optimizer, step + 1, out_dir)
    return model.eval()

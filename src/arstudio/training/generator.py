"""Train an AR generator (class- or text-conditioned) on tokens of procedural shapes.

1. Render ``num_images`` shapes (class set for class conditioning, caption set for text) and encode them
   once with the frozen tokenizer; captions go through the frozen text encoder once too. The table is
   saved beside the checkpoint, so a resumed run skips this.
2. Teacher-forced cross-entropy on (B, N) tokens with condition dropout (the null condition teaches CFG).
   Continuous generators (KL latents (B, N, d) or bridge level ids) train their head's loss instead
   (diffusion / flow MSE, per-dimension cross-entropy), on the same backbone and the same batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from arstudio.data.shapes import class_batch, make_text_item
from arstudio.generators.continuous import ContinuousGeneratorConfig, ContinuousImageGenerator
from arstudio.generators.image import GeneratorConfig, ImageGenerator
from arstudio.images import images_to_tensor
from arstudio.io import atomic_write_bytes, load_safetensors, load_weights_into
from arstudio.tokenizers.vq import VQTokenizer
from arstudio.training.common import (
    checkpoint_due,
    cosine_lr,
    generator_optimizer,
    make_accelerator,
    optimizer_step,
    resume_checkpoint,
    save_checkpoint,
    seeded,
    set_lr,
)

TOKENS_FILE = "train_tokens.safetensors"
WARM_START_NEW_KEYS = ("cls_embedding.position_embedding",)  # added after shapes-t2i v1 was trained


def _shapes_chunk(condition: str, seed: int, start: int, count: int, resolution: int, text_encoder):
    """Images (count, H, W, 3) and their condition: labels (count,) or text states (count, L, D) in fp16."""
    if condition == "class":
        images, labels, _ = class_batch(seed, count, resolution, start=start)
        return images, torch.from_numpy(labels)
    items = [make_text_item(seed, start + i, resolution) for i in range(count)]
    states = text_encoder([caption for _, caption, _ in items])
    return np.stack([image for image, _, _ in items]), states.to(torch.float16)


@torch.no_grad()
def tokenize_shapes(tokenizer: VQTokenizer, num_images: int, seed: int, condition: str = "class",
                    text_encoder=None, chunk: int = 256):  # fmt: skip
    """(tokens (num_images, N) int64 or (num_images, N, d) vectors, conditions) of the seeded class or
    caption set."""
    resolution = tokenizer.config.resolution
    all_tokens, all_conds = [], []
    for start in tqdm(range(0, num_images, chunk), desc="tokenizing"):
        count = min(chunk, num_images - start)
        images, cond = _shapes_chunk(condition, seed, start, count, resolution, text_encoder)
        all_tokens.append(tokenizer.encode(images_to_tensor(images)).flatten(1, 2))  # grid -> raster order
        all_conds.append(cond)
    return torch.cat(all_tokens), torch.cat(all_conds)


def load_or_make_tokens(out_dir: Path, tokenizer, num_images: int, seed: int, condition: str, text_encoder):
    """The tokenized training set, cached in ``out_dir`` (a resumed run reuses it)."""
    from safetensors.torch import save

    path = out_dir / TOKENS_FILE
    if path.is_file():
        table = load_safetensors(path)
        if table["tokens"].shape[0] == num_images:
            tokens = table["tokens"]
            return (tokens if tokens.is_floating_point() else tokens.long()), table["cond"]
    tokens, cond = tokenize_shapes(tokenizer, num_images, seed, condition, text_encoder)
    stored = tokens if tokens.is_floating_point() else tokens.to(torch.int16)
    atomic_write_bytes(path, save({"tokens": stored.contiguous(), "cond": cond.contiguous()}))
    return tokens, cond


def _load_tokenizer(tokenizer_dir, config):
    """The tokenizer a generator config trains on, checked against it."""
    if isinstance(config, ContinuousGeneratorConfig):
        from arstudio.tokenizers.bridge import BridgeTokenizer
        from arstudio.tokenizers.kl import KLTokenizer

        bridge = config.head == "bridge"
        tokenizer = (BridgeTokenizer if bridge else KLTokenizer).from_pretrained(tokenizer_dir)
        if tokenizer.token_dim != config.token_dim:
            raise ValueError(
                f"tokenizer emits {tokenizer.token_dim}-dim tokens but token_dim={config.token_dim}"
            )
        if bridge and tokenizer.config.levels != config.levels:
            raise ValueError(f"tokenizer has {tokenizer.config.levels} levels but levels={config.levels}")
    else:
        tokenizer = VQTokenizer.from_pretrained(tokenizer_dir)
        if tokenizer.codebook_size != config.vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.codebook_size} codes but vocab_size={config.vocab_size}"
            )
    if tokenizer.grid_size != config.backbone.grid_size:
        raise ValueError(f"tokenizer grid {tokenizer.grid_size} != backbone grid {config.backbone.grid_size}")
    return tokenizer


class ConditionedBatches:
    """Seeded random batches of (tokens, condition) from a tokenized table, conditions dropped to the null
    condition at the model's rate (what teaches CFG). ``skip(n)`` replays n batches' draws, so a resumed run
    sees the batches an uninterrupted one would have."""

    def __init__(self, tokens: torch.Tensor, conds: torch.Tensor, batch_size: int, seed: int, conditioning):
        self.tokens, self.conds, self.batch_size = tokens, conds, batch_size
        self.conditioning = conditioning  # the model's cls_embedding: its ``drop`` does the dropout
        self.generator = torch.Generator().manual_seed(seed + 1)

    def skip(self, steps: int) -> None:
        for _ in range(steps):
            self.next()

    def next(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(0, self.tokens.shape[0], (self.batch_size,), generator=self.generator)
        cond = self.conds[index]
        cond = cond.float() if cond.is_floating_point() else cond  # text states are stored in fp16
        cond = self.conditioning.drop(cond, generator=self.generator)
        return self.tokens[index].to(device), cond.to(device)


def train_generator(
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    config: GeneratorConfig | ContinuousGeneratorConfig,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 1e-3,
    num_images: int = 60_000,
    seed: int = 0,
    save_every: int = 250,
    text_encoder=None,
    init_from: str | Path | None = None,
) -> ImageGenerator | ContinuousImageGenerator:
    """Train ``config`` on tokens from ``tokenizer_dir``; text generators need the frozen ``text_encoder``.

    ``init_from``: warm start from another run's weights (same config; parameters added since, such as the
    text prefix's position embedding, keep their zero init).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _load_tokenizer(tokenizer_dir, config)
    if config.condition == "text" and text_encoder is None:
        raise ValueError("a text-conditioned generator needs a text_encoder to encode the captions")
    tokens, conds = load_or_make_tokens(out_dir, tokenizer, num_images, seed, config.condition, text_encoder)

    continuous = isinstance(config, ContinuousGeneratorConfig)
    model = seeded(lambda: (ContinuousImageGenerator if continuous else ImageGenerator)(config), seed)
    if init_from is not None:
        load_weights_into(model, init_from, allow_missing=WARM_START_NEW_KEYS)
    optimizer = generator_optimizer(model, lr)
    if continuous and config.head == "bridge":
        model.bin_values.copy_(tokenizer.quantizer.values)  # the generator embeds ids as de-quantised values
    start = resume_checkpoint(model, optimizer, out_dir)
    accelerator = make_accelerator()
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    batches = ConditionedBatches(tokens, conds, batch_size, seed, unwrapped.cls_embedding)
    batches.skip(start)
    head_noise = torch.Generator().manual_seed(
        seed + 2
    )  # diffusion/flow training noise (not replayed on resume)
    bar = tqdm(range(start, steps), desc="generator", initial=start, total=steps)
    for step in bar:
        set_lr(optimizer, cosine_lr(step, steps, lr, warmup=100))
        batch_tokens, batch_cond = batches.next(accelerator.device)
        if continuous:
            loss = unwrapped.loss(batch_tokens, batch_cond, generator=head_noise)
        else:
            logits = model(batch_tokens, batch_cond)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch_tokens.reshape(-1))
        optimizer_step(accelerator, model, optimizer, loss, 1.0)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if checkpoint_due(step, steps, save_every):
            save_checkpoint(unwrapped, optimizer, step + 1, out_dir)
    return unwrapped.eval()

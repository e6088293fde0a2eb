"""DD1 training: a DD model, initialised from the teacher, learns the flow map's (noise -> tokens) pairs.

Per batch each pair is shown at one of the trained trajectory states, X_0 (all noise) or X_t with
t = ``two_step_start`` (first t tokens as codebook vectors, the rest the original noise). Loss on the
positions still to predict:
    cross-entropy(logits, token) + vector_weight * |vector - codebook[token]|^2 (summed over d)
The logits head is trained at every predicted position (sampling reads it only for the first
``logits_tokens``; elsewhere it is a cheap auxiliary), the vector head likewise. DD1's released sampler and
its `--loss_norm lpips` flag suggest a perceptual loss on the regressed part; here the regression is in the
codebook space (no decoder backward on this CPU).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from arstudio.generators.distilled import DDGenerator
from arstudio.training.common import (
    checkpoint_due,
    cosine_lr,
    generator_optimizer,
    optimizer_step,
    save_checkpoint,
    set_lr,
    start_training,
)
from arstudio.training.distill_data import load_or_make_pairs


def trajectory_states(noise, tokens, codebook, starts, generator):
    """A random trained state per row: (state (B, N, d), known (B,)) with known drawn from ``starts``.

    ``generator`` is a CPU generator whatever the device (the same draws on CPU and GPU); the draws then move.
    """
    choice = torch.randint(0, len(starts), (noise.shape[0],), generator=generator)
    known = torch.tensor(starts)[choice].to(noise.device)
    position = torch.arange(noise.shape[1], device=noise.device)[None, :, None]
    state = torch.where(position < known[:, None, None], codebook[tokens], noise)
    return state, known


def dd1_loss(model: DDGenerator, noise, tokens, cond, codebook, generator, vector_weight: float = 1.0):
    """The loss above on a batch of pairs: noise (B, N, d), tokens (B, N), labels (B,), moved to the
    codebook's device (the model's: pairs stay in CPU memory)."""
    noise, tokens, cond = (t.to(codebook.device) for t in (noise, tokens, cond))
    state, known = trajectory_states(noise, tokens, codebook, (0, model.config.two_step_start), generator)
    logits, vectors = model(state, known, cond)
    predicted = torch.arange(tokens.shape[1], device=tokens.device)[None] >= known[:, None]  # (B, N)
    ce = F.cross_entropy(logits[predicted], tokens[predicted])
    mse = (vectors[predicted] - codebook[tokens[predicted]]).pow(2).sum(-1).mean()
    return ce + vector_weight * mse, {"ce": ce.item(), "mse": mse.item()}


def train_dd1(
    out_dir: str | Path,
    teacher: str = "shapes-c2i",
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 5e-4,
    num_pairs: int = 10_000,
    seed: int = 0,
    save_every: int = 100,
    logits_tokens: int | None = None,
    two_step_start: int | None = None,
    vector_weight: float = 1.0,
) -> DDGenerator:
    """Make (or reuse) the teacher's pairs in ``out_dir``, then fine-tune a DD model from the teacher."""
    from arstudio.pipelines.loading import load_pipeline

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(teacher, device="cpu", decoding_models=False)
    pairs = load_or_make_pairs(out_dir, pipe, num_pairs, seed)
    codebook = pipe.tokenizer.codebook_vectors().detach().float()
    split = {"logits_tokens": logits_tokens, "two_step_start": two_step_start}  # None: 5/16 of the tokens
    split = {k: v for k, v in split.items() if v is not None}
    model = DDGenerator.from_teacher(pipe.generator, pipe.tokenizer, method="dd1", **split)
    optimizer = generator_optimizer(model, lr)
    start, accelerator, model, optimizer, unwrapped = start_training(model, optimizer, out_dir)
    codebook = codebook.to(accelerator.device)
    draws = torch.Generator().manual_seed(seed + 1)
    for _ in range(start):  # replay the batch draws of the steps already done
        torch.randint(0, num_pairs, (batch_size,), generator=draws)
        torch.randint(0, 2, (batch_size,), generator=draws)
    bar = tqdm(range(start, steps), desc="dd1", initial=start, total=steps)
    for step in bar:
        set_lr(optimizer, cosine_lr(step, steps, lr, warmup=50))
        index = torch.randint(0, num_pairs, (batch_size,), generator=draws)
        loss, parts = dd1_loss(
            model,
            pairs["noise"][index],
            pairs["tokens"][index],
            pairs["cond"][index],
            codebook,
            draws,
            vector_weight,
        )
        optimizer_step(accelerator, model, optimizer, loss, 1.0)
        if step % 10 == 0:
            bar.set_postfix(ce=f"{parts['ce']:.3f}", mse=f"{parts['mse']:.3f}")
        if checkpoint_due(step, steps, save_every):
            save_checkpoint(unwrapped, optimizer, step + 1, out_dir)
    return unwrapped.eval()

"""Train an EAGLE-style drafter on a frozen target's own teacher-forced hidden states (LANTERN's recipe).

Per batch: shapes images of the target's training distribution are tokenized, the target reads them
(conditions dropped to the null condition with the target's dropout rate, so the drafter also learns the
unconditional stream that CFG drafting runs), and the drafter learns to predict hidden state f_{j+1} from
(e_{j+1}, f_j):
    loss = SmoothL1(f^, f) + 0.1 * CE(softmax(head(f)), log_softmax(head(f^)))
Uniform noise (std 0.2) on the input features makes it robust to reading its own predictions when it
drafts several tokens in a row.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from arstudio.generators.drafter import Drafter, DrafterConfig
from arstudio.training.batches import ConditionedBatches
from arstudio.training.common import (
    checkpoint_due,
    cosine_lr,
    optimizer_step,
    save_checkpoint,
    seeded,
    set_lr,
    start_training,
)
from arstudio.training.generator import load_or_make_tokens


def drafter_loss(drafter: Drafter, target, tokens: torch.Tensor, cond: torch.Tensor, noise_std: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """Feature regression + 0.1 x soft cross-entropy on the positions that predict image tokens 1..N-1."""
    prefix_len, total = target.prefix_len, target.seq_len
    with torch.no_grad():
        inputs = torch.cat(
            [target.cls_embedding(cond), target.tok_embeddings(tokens)], dim=1
        )  # (B, P+N, dim)
        hidden = target.backbone(inputs)  # f_j predicts the token at position j + 1
    features = hidden[:, :-1]
    if noise_std > 0:
        half_width = noise_std * math.sqrt(3.0)  # a uniform on [-a, a] has std a / sqrt(3)
        noise = torch.rand(features.shape, generator=generator, device=features.device) * 2 - 1
        features = features + half_width * noise
    predicted = drafter(inputs[:, 1:], features)  # (B, P+N-1, dim): row j predicts f_{j+1}
    # Drafts are image tokens 1..N-1, predicted by f_P .. f_{P+N-2}, i.e. rows P-1 .. P+N-3.
    rows = slice(prefix_len - 1, prefix_len + total - 2)
    predicted, wanted = predicted[:, rows], hidden[:, prefix_len : prefix_len + total - 1]
    regression = F.smooth_l1_loss(predicted, wanted)
    target_probs = target.head(wanted).softmax(-1)
    cross_entropy = -(target_probs * target.head(predicted).log_softmax(-1)).sum(-1).mean()
    return regression + 0.1 * cross_entropy


def train_drafter(
    out_dir: str | Path,
    preset: str,
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 1e-3,
    num_images: int = 20_000,
    seed: int = 0,
    noise_std: float = 0.2,
    save_every: int = 250,
) -> Drafter:
    """Train a one-block drafter for ``preset``'s generator (loaded with its shipped weights, frozen)."""
    from arstudio.pipelines.loading import load_pipeline

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(preset, device="cpu", decoding_models=False)  # the shipped drafter may be stale
    target = pipe.generator.requires_grad_(False)
    condition = target.config.condition
    tokens, conds = load_or_make_tokens(
        out_dir, pipe.tokenizer, num_images, seed, condition, pipe.text_encoder
    )

    drafter = seeded(lambda: Drafter(DrafterConfig.for_target(target)), seed)
    optimizer = torch.optim.AdamW(drafter.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    start, accelerator, drafter, optimizer, unwrapped = start_training(drafter, optimizer, out_dir)
    target.to(accelerator.device)
    batches = ConditionedBatches(tokens, conds, batch_size, seed, target.cls_embedding)
    batches.skip(start)
    noise_gen = torch.Generator().manual_seed(seed + 2)
    bar = tqdm(range(start, steps), desc="drafter", initial=start, total=steps)
    for step in bar:
        set_lr(optimizer, cosine_lr(step, steps, lr, warmup=50))
        batch_tokens, cond = batches.next(accelerator.device)
        loss = drafter_loss(drafter, target, batch_tokens, cond, noise_std, noise_gen)
        optimizer_step(accelerator, drafter, optimizer, loss, 0.5)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if checkpoint_due(step, steps, save_every):
            save_checkpoint(unwrapped, optimizer, step + 1, out_dir)
    return unwrapped.eval()

"""DD2: conditional score distillation (CSD) of the teacher into a one-step generator (arXiv 2510.21003).

No pre-defined noise -> token map. Per step, with x = G(noise) the generator's one-step tokens (B, N, d):
1. Teacher score. The prefix x_<i is snapped to codes and read by the teacher (teacher forcing, CFG at the
   preset's guidance, one forward for all N positions), giving p(. | x_<i). Noised as
   y = t x_i + (1 - t) eps (DD1's rectified-flow path), the teacher's conditional is the Gaussian mixture
   sum_v p_v N(t c_v, (1 - t)^2 I), whose denoiser is closed-form (``mixture_posterior_mean``); the score is
   (t x̂_real - y) / (1 - t)^2.
2. Fake score: ``FakeScore`` learns the score of the generator's own outputs, conditioned on the same
   prefix, by denoising score matching on x.detach() (``fake_updates`` updates per generator update).
3. Generator update (after the fake model's updates on the same batch): per position, the gradient (x̂_fake - x̂_real) / mean|x - x̂_real| (DMD's
   normalisation) through x, as the loss 0.5 |x - sg(x - grad)|^2.

Choices where the paper leaves them open (tested in tests/test_distilled.py):
- Generator initialised from DD1 (``--init``; from the teacher when none is given).
- The generator's early positions (argmax in sampling) get their gradient through a straight-through
  estimator (forward the argmax code, backward through softmax(logits) @ codebook); later positions are the
  vector head's output.
- ``FakeScore`` reads the prefix through the teacher's own (frozen) hidden states, which the teacher pass
  computes anyway: a trainable copy of the whole trunk tripled the step time on this CPU (10.7 s against
  ~3.5 s at batch 32). On those features it has a zero-initialised head of logits added to the teacher's
  guided log-probabilities and a zero-initialised AdaLN MLP correction of the mixture mean (off-codebook
  outputs of the vector head need it). It therefore starts *equal* to the teacher's denoiser: at step 0
  the CSD gradient is zero, and it grows only as the fake model learns where the generator differs.
- t ~ U(0.02, 0.98) per position; the prefix is not noised (the condition is the clean previous tokens).
- A DD1 regression term on the teacher's pairs (``dd1_weight``, DMD's paired regression loss) keeps the
  generator anchored while the fake model is still weak; 0 turns it off.
- The teacher's score uses the preset's guidance unless ``guidance_scale`` says otherwise (DMD, too, guides
  its real score more strongly than the teacher samples). The fake model starts from the same guided
  log-probabilities, so the CSD gradient is still zero at step 0.
- ``ema_decay``: an average of the generator's weights kept in ``out_dir/ema`` (``training.common.EmaWeights``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from arstudio.decoding.autoregressive import with_unconditional
from arstudio.decoding.flow_map import mixture_posterior_mean
from arstudio.decoding.logits import classifier_free_guidance, filter_logits
from arstudio.generators.adaln_mlp import AdaLNMLP
from arstudio.generators.distilled import DDGenerator, nearest_codes, straight_through_codes
from arstudio.io import atomic_write_bytes, load_weights_into
from arstudio.training.common import (
    TRAIN_STATE,
    EmaWeights,
    checkpoint_due,
    cosine_lr,
    generator_optimizer,
    make_accelerator,
    set_lr,
)
from arstudio.training.distill import dd1_loss
from arstudio.training.distill_data import PAIRS_FILE, load_or_make_pairs, teacher_sampling

T_RANGE = (0.02, 0.98)
FAKE_DIR = "fake_score"


class FakeScore(nn.Module):
    """Denoiser of the generator's distribution at position i given the clean prefix: (y, t) -> x̂."""

    def __init__(self, dim: int, vocab_size: int, token_dim: int, width: int = 128, depth: int = 2):
        super().__init__()
        self.delta_logits = nn.Linear(dim, vocab_size, bias=False)
        nn.init.zeros_(self.delta_logits.weight)
        self.correction = AdaLNMLP(token_dim, dim, width, depth)

    def forward(self, y, t, hidden, teacher_log_probs, codebook):
        """y (B, N, d) noised tokens at times t (B, N); hidden (B, N, dim) the teacher's states for the
        clean prefix of each position; teacher_log_probs (B, N, V) -> x̂ (B, N, d)."""
        log_probs = (teacher_log_probs + self.delta_logits(hidden)).log_softmax(-1)
        flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731  (B, N, k) -> (B N, k)
        mean = mixture_posterior_mean(flat(y), t.reshape(-1), 1 - t.reshape(-1), flat(log_probs), codebook)
        correction = self.correction(flat(y), 1000 * t.reshape(-1), flat(hidden))
        return (mean + correction).view(y.shape)


def generator_tokens(model: DDGenerator, noise, cond, codebook):
    """One step, differentiable: (B, N, d) tokens, straight-through codes before ``logits_tokens``."""
    logits, vectors = model(noise, 0, cond)
    early = torch.arange(noise.shape[1], device=noise.device)[None, :, None] < model.config.logits_tokens
    return torch.where(early, straight_through_codes(logits, codebook), vectors)


@torch.no_grad()
def teacher_log_probs(teacher, ids, cond, params):
    """(log p(. | x_<i) (B, N, V) at the teacher's sampling settings, the conditional rows' hidden states
    (B, N, dim)) from one (CFG-doubled) forward."""
    rows = with_unconditional(teacher, cond, None) if params.uses_cfg else cond
    hidden = teacher.hidden(ids.repeat(rows.shape[0] // ids.shape[0], 1), rows)  # (rows, N, dim)
    logits = teacher.head(hidden)
    if params.uses_cfg:
        logits = classifier_free_guidance(
            logits[: ids.shape[0]], logits[ids.shape[0] :], params.guidance_scale
        )
    shape = logits.shape
    probs = filter_logits(logits.reshape(-1, shape[-1]), params.temperature, params.top_k, params.top_p)
    # filtered tokens: tiny, not -inf (keeps the fake model's softmax finite)
    return probs.clamp_min(1e-30).log().view(shape), hidden[: ids.shape[0]]


def _noised(x, generator):
    """(t (B, N), y = t x + (1 - t) eps), drawn from the CPU ``generator`` (the same draws on any device)."""
    t = torch.empty(x.shape[:2]).uniform_(*T_RANGE, generator=generator).to(x.device)
    eps = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    return t, t[..., None] * x + (1 - t[..., None]) * eps


@dataclass
class CSDBatch:
    """One batch of the generator's tokens and what the teacher says about each position's prefix."""

    x: torch.Tensor  # (B, N, d) generator tokens, with grad
    log_p: torch.Tensor  # (B, N, V) teacher log-probabilities given the (snapped) prefix
    hidden: torch.Tensor  # (B, N, dim) teacher hidden states for that prefix (the fake model's input)


def csd_batch(model, teacher, noise, cond, codebook, params) -> CSDBatch:
    x = generator_tokens(model, noise, cond, codebook)
    log_p, hidden = teacher_log_probs(teacher, nearest_codes(x.detach(), codebook), cond, params)
    return CSDBatch(x, log_p, hidden)


def fake_loss(fake, batch: CSDBatch, codebook, generator) -> torch.Tensor:
    """Denoising score matching of the fake model on the generator's (detached) tokens."""
    t, y = _noised(batch.x.detach(), generator)
    return (fake(y, t, batch.hidden, batch.log_p, codebook) - batch.x.detach()).pow(2).sum(-1).mean()


def csd_generator_loss(fake, batch: CSDBatch, codebook, generator) -> tuple[torch.Tensor, float]:
    """The CSD surrogate 0.5 |x - sg(x - grad)|^2 whose gradient in x is (x̂_fake - x̂_real) / scale, and
    the mean |grad|."""
    x = batch.x
    t, y = _noised(x.detach(), generator)
    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731  (B, N, k) -> (B N, k)
    with torch.no_grad():
        real = mixture_posterior_mean(flat(y), t.reshape(-1), 1 - t.reshape(-1), flat(batch.log_p), codebook)
        real = real.view(x.shape)
        fake_x = fake(y, t, batch.hidden, batch.log_p, codebook)
        scale = (x.detach() - real).abs().mean(dim=(1, 2), keepdim=True).clamp_min(1e-4)
        grad = (fake_x - real) / scale
    return 0.5 * (x - (x - grad).detach()).pow(2).sum(-1).mean(), grad.abs().mean().item()


def train_dd2(
    out_dir: str | Path,
    teacher: str = "shapes-c2i",
    init: str | Path | None = None,
    steps: int = 400,
    batch_size: int = 32,
    lr: float = 1e-4,
    fake_lr: float = 1e-3,
    fake_updates: int = 2,
    dd1_weight: float = 0.25,
    seed: int = 0,
    save_every: int = 50,
    num_pairs: int = 0,
    snapshot_every: int = 0,
    csd_weight: float = 1.0,
    guidance_scale: float | None = None,
    ema_decay: float | None = None,
) -> DDGenerator:
    """CSD from ``init`` (a DD1 run or shipped folder; None: from the teacher). ``num_pairs`` > 0 with
    ``dd1_weight`` > 0 reuses/makes DD1's pairs in ``init`` for the regression term. ``snapshot_every`` > 0
    also keeps the generator every that many steps in ``snapshots/step-N`` (the quality curve).
    ``csd_weight=0`` is the ablation: the same run with only the DD1 term."""
    from arstudio.pipelines.loading import load_pipeline

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(teacher, device="cpu", decoding_models=False)
    teacher_model = pipe.generator.requires_grad_(False)
    codebook = pipe.tokenizer.codebook_vectors().detach().float()
    params = teacher_sampling(pipe)
    if guidance_scale is not None:
        params = replace(params, guidance_scale=guidance_scale)  # SamplingParams checks the value
    if init is None:
        model = DDGenerator.from_teacher(teacher_model, pipe.tokenizer, method="dd2")
    else:
        model = DDGenerator.from_pretrained(init)
        model.check_pairing(teacher_model, pipe.tokenizer)
        model.config = replace(model.config, method="dd2")
    pairs = None
    if dd1_weight > 0 and num_pairs > 0:
        # DD1's pairs are reused, copied here rather than extended in place (--init may be the shipped dd1/)
        reused = Path(init) / PAIRS_FILE if init is not None else None
        if reused is not None and reused.is_file() and not (out_dir / PAIRS_FILE).is_file():
            shutil.copyfile(reused, out_dir / PAIRS_FILE)
        pairs = load_or_make_pairs(out_dir, pipe, num_pairs, seed)
    fake = FakeScore(
        teacher_model.config.backbone.dim, teacher_model.config.vocab_size, model.config.token_dim
    )
    optimizer = generator_optimizer(model, lr)
    fake_optimizer = torch.optim.AdamW(fake.parameters(), lr=fake_lr, betas=(0.0, 0.99), weight_decay=0.0)
    start = _resume(model, fake, optimizer, fake_optimizer, out_dir)
    accelerator = make_accelerator()
    model, fake, optimizer, fake_optimizer = accelerator.prepare(model, fake, optimizer, fake_optimizer)
    unwrapped = accelerator.unwrap_model(model)
    device = accelerator.device  # the teacher and the codebook are not prepared by accelerate: moved here
    teacher_model.to(device)
    codebook = codebook.to(device)
    ema = None if ema_decay is None else EmaWeights(unwrapped, ema_decay, out_dir)
    draws = torch.Generator().manual_seed(seed + 1000 + start)  # a resumed run draws fresh batches
    bar = tqdm(range(start, steps), desc="dd2", initial=start, total=steps)
    for step in bar:
        set_lr(optimizer, cosine_lr(step, steps, lr, warmup=20))
        labels = torch.randint(0, teacher_model.config.num_classes, (batch_size,), generator=draws).to(device)
        noise = torch.randn(batch_size, model.seq_len, model.config.token_dim, generator=draws).to(device)
        batch = csd_batch(model, teacher_model, noise, labels, codebook, params)
        for _ in range(fake_updates):  # the fake model first catches up with the current generator
            denoising = fake_loss(fake, batch, codebook, draws)
            fake_optimizer.zero_grad(set_to_none=True)
            accelerator.backward(denoising)
            accelerator.clip_grad_norm_(fake.parameters(), 1.0)
            fake_optimizer.step()
        loss, grad = csd_generator_loss(fake, batch, codebook, draws)
        loss = csd_weight * loss
        stats = {"grad": grad, "fake": denoising.item()}
        if pairs is not None:
            index = torch.randint(0, pairs["tokens"].shape[0], (batch_size,), generator=draws)
            regression, _ = dd1_loss(
                model, pairs["noise"][index], pairs["tokens"][index], pairs["cond"][index], codebook, draws
            )
            loss = loss + dd1_weight * regression
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if ema is not None:
            ema.update(unwrapped, step)
        if step % 5 == 0:
            bar.set_postfix(grad=f"{stats['grad']:.4f}", fake=f"{stats['fake']:.3f}")
        if snapshot_every and (step + 1) % snapshot_every == 0:
            unwrapped.save_pretrained(out_dir / "snapshots" / f"step-{step + 1}")
        if checkpoint_due(step, steps, save_every):
            if ema is not None:
                ema.save()
            _save(unwrapped, accelerator.unwrap_model(fake), optimizer, fake_optimizer, step + 1, out_dir)
    return unwrapped.eval()


def _save(model, fake, optimizer, fake_optimizer, step, out_dir: Path) -> None:
    import io

    from safetensors.torch import save

    model.save_pretrained(out_dir)
    atomic_write_bytes(
        out_dir / FAKE_DIR / "model.safetensors",
        save({k: v.contiguous() for k, v in fake.state_dict().items()}),
    )
    buffer = io.BytesIO()
    torch.save(
        {"optimizer": optimizer.state_dict(), "fake_optimizer": fake_optimizer.state_dict(), "step": step},
        buffer,
    )
    atomic_write_bytes(out_dir / TRAIN_STATE, buffer.getvalue())


def _resume(model, fake, optimizer, fake_optimizer, out_dir: Path) -> int:
    state_path = out_dir / TRAIN_STATE
    if not state_path.is_file():
        return 0
    load_weights_into(model, out_dir)
    load_weights_into(fake, out_dir / FAKE_DIR)
    state = torch.load(state_path, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    fake_optimizer.load_state_dict(state["fake_optimizer"])
    return int(state["step"])

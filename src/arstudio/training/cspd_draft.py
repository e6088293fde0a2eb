"""Distil a CSpD draft head from a continuous generator's diffusion head (``generators/draft_head.py``).

What the draft must do is make the exact acceptance test pass: u <= p(traj) / q(traj) on its own trajectory.
For Gaussian transitions sharing their variances that ratio depends only on the two heads' step means, so the
loss is the trajectory's KL, sum_i |mu_p,i(x_i) - mu_q,i(x_i)|^2 / (2 sigma_i^2), over the noisy steps of the
sampling schedule the draft will meet (the preset's head steps and temperature), on points of target and draft
trajectories alike (the test reads the draft's own). Conditions z are the target's guided trunk features,
teacher-forced on tokenized shapes images, at guidance scales in [1, 2 s] around the preset's s.

    nice -n 10 python -m arstudio.training.cspd_draft --preset shapes-c2i-continuous --out runs/cspd-draft
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from tqdm.auto import tqdm

from arstudio.decoding.trajectories import Trajectories
from arstudio.generators.draft_head import DraftHead
from arstudio.seeding import seeded


@torch.no_grad()
def guided_features(target, tokens: torch.Tensor, cond: torch.Tensor, scales: torch.Tensor, chunk: int = 128):
    """The target's guided trunk features z_u + s (z_c - z_u), teacher-forced: tokens (M, N, d), cond (M,),
    scales (M,) -> (M * N, dim)."""
    out = []
    for i in range(0, tokens.shape[0], chunk):
        x, c, s = tokens[i : i + chunk], cond[i : i + chunk], scales[i : i + chunk, None, None]
        z_c = target(x, c)
        z_u = target(x, target.cls_embedding.null(c.shape[0], c.device))
        out.append((z_u + s * (z_c - z_u)).flatten(0, 1))
    return torch.cat(out)


def trajectory_kl(p: Trajectories, q: Trajectories, xs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over rows of sum_i |mu_p - mu_q|^2 / (2 sigma_i^2) over the drafted steps of states xs (k + 1, M, d)."""
    with torch.no_grad():
        mu_p = p.means(xs[:-1], z)
    mu_q = q.means(xs[:-1], z)
    std = p.tables(z.device)[-1][: xs.shape[0] - 1]
    return (((mu_p - mu_q) / std) ** 2).sum((0, 2)).mean() / 2


@torch.no_grad()
def acceptance(p: Trajectories, q: Trajectories, z: torch.Tensor, drafted: int, seed: int = 7) -> float:
    """E_q[min(1, p/q)] over the draft's own first ``drafted`` steps: the exact test's acceptance for these z."""
    noise = torch.randn(
        (p.steps, *z.shape[:1], p.head.token_dim), generator=torch.Generator().manual_seed(seed)
    )
    xs = q.sample(z, noise, stop=drafted)
    log_ratio = p.log_density(xs, p.means(xs[:-1], z)) - Trajectories.own_log_density(noise[: drafted + 1])
    return float(log_ratio.clamp(max=0).exp().mean())


def distill_draft_head(
    out_dir,
    preset: str = "shapes-c2i-continuous",
    steps: int = 3000,
    batch_size: int = 256,
    lr: float = 1e-3,
    depth: int = 1,
    width: int | None = None,
    num_images: int = 1024,
    seed: int = 0,
    dtype: str = "float16",
    tail_steps: int = 2,
) -> DraftHead:
    from arstudio.pipelines.loading import load_pipeline
    from arstudio.training.generator import tokenize_shapes

    out_dir = Path(out_dir)
    pipe = load_pipeline(preset, device="cpu", decoding_models=False)
    target, defaults = pipe.generator.eval().requires_grad_(False), pipe.preset.defaults
    head_steps, temperature = defaults.get("num_inference_steps", 25), defaults.get("temperature", 1.0)
    scale = defaults.get("guidance_scale", 1.0)
    gen = torch.Generator().manual_seed(seed)
    tokens, cond = tokenize_shapes(pipe.tokenizer, num_images, seed + 1)
    scales = 1 + (2 * scale - 1) * torch.rand(num_images, generator=gen)  # [1, 2 s]
    features = guided_features(target, tokens, cond, scales)
    draft = seeded(lambda: DraftHead.from_target(target, width, depth), seed)
    clip = target.config.x0_clip
    drafted = head_steps - tail_steps  # the steps the draft makes; the target makes the tail itself
    schedules = {
        tau: (
            Trajectories(target.head, head_steps, tau, clip),
            Trajectories(draft.head, head_steps, tau, clip),
        )
        for tau in (temperature, 1.0)
    }
    optimizer = torch.optim.AdamW(draft.parameters(), lr=lr, weight_decay=0.0)
    held_out = features[torch.randperm(features.shape[0], generator=gen)[:512]]
    progress = tqdm(range(steps), desc="distilling the CSpD draft head")
    for step in progress:
        for group in optimizer.param_groups:  # cosine decay
            group["lr"] = lr * 0.5 * (1 + torch.cos(torch.tensor(step / steps * torch.pi)).item())
        z = features[torch.randint(0, features.shape[0], (batch_size,), generator=gen)]
        tau = temperature if step % 4 else 1.0  # mostly the preset's temperature, sometimes the plain one
        p, q = schedules[tau]
        with torch.no_grad():  # half the rows on target trajectories, half on the draft's own
            half = batch_size // 2
            noise = torch.randn((head_steps, batch_size, target.config.token_dim), generator=gen)
            xs = torch.cat(
                [
                    p.sample(z[:half], noise[:, :half], stop=drafted),
                    q.sample(z[half:], noise[:, half:], stop=drafted),
                ],
                dim=1,
            )
        loss = trajectory_kl(p, q, xs, z)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step + 1 == steps:
            p0, q0 = schedules[temperature]
            rate = acceptance(p0, q0, held_out, drafted)
            progress.set_postfix(kl=f"{loss.item():.3f}", accept=f"{rate:.3f}")
            tqdm.write(f"step {step} kl {loss.item():.4f} held-out exact acceptance {rate:.3f}")
    draft.eval().save_pretrained(out_dir / "drafter", dtype=getattr(torch, dtype))
    return draft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shapes-c2i-continuous")
    parser.add_argument("--out", required=True, help="folder; the draft goes to OUT/drafter")
    for name, default in (
        ("steps", 3000),
        ("batch-size", 256),
        ("depth", 1),
        ("num-images", 1024),
        ("seed", 0),
        ("tail-steps", 2),
    ):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--width", type=int, default=None, help="default: the target head's width")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    kwargs = dict(vars(args))
    out = kwargs.pop("out")
    draft = distill_draft_head(out, **kwargs)
    print(f"draft head saved to {Path(out) / 'drafter'} ({dataclasses.asdict(draft.config)})")


if __name__ == "__main__":
    main()

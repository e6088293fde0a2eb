"""Parity of the MAR converter, head sampler and MAR sampler against MAR's own code (LTH14/mar), on random weights.

    python -m benchmarks.parity_mar --reference /path/to/mar [--size mar_base] [--num-iter 4] [--steps 20]

``--reference`` is a snapshot of https://github.com/LTH14/mar (``models/mar.py``, ``models/diffloss.py`` and
``diffusion/`` are imported from it; nothing of it is copied here). Its code needs ``timm`` (``Block``; 0.9.12 in
MAR's environment: ``pip install --target DIR timm==0.9.12 --no-deps`` and pass ``--timm DIR``) and hard-codes
``.cuda()``: on a CPU machine ``Tensor.cuda`` is made the identity while it runs. Without torchvision, timm's
imports of it (data transforms, a frozen batch norm, never used by ``Block``) get an empty stand-in module.
Steps:

1. MAR's ``mar_base``/``mar_large``/``mar_huge`` (the released head sizes) with seeded random weights (every
   parameter re-drawn: MAR zero-initialises its head's output and modulation layers), saved as ``main_mar.py``
   does: ``{"model", "model_ema", "optimizer", "epoch", "scaler", "args": Namespace}``, the EMA weights perturbed
   so that loading the wrong ones shows; the reference then loads the EMA weights, as MAR's evaluation does.
2. That file converted with ``arstudio.convert.mar.load_mar`` (float32).
3. (a) the head: the net's output (noise and variance value, (M, 32)) for the same random x_t, t, z; and one
   respaced reverse step's mean and log variance (MAR's ``p_mean_variance``).
   (b) sampling: ``arstudio.decoding.mar.sample_mar`` runs for real (its random order and noise drawn from the
   images' generators); MAR's ``sample_tokens`` gets the same order (``sample_orders`` patched) and the same noise
   (``torch.randn`` / ``torch.randn_like`` patched to hand out the noise ours drew, row for row): the tokens of
   every iteration and the final latents are compared (tolerance 1e-4, fp32).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.machinery
import sys
import tempfile
import types
from pathlib import Path

import torch

import arstudio.decoding.mar as mar_sampler
from arstudio.convert.mar import MAR_SIZES, load_mar, mar_config
from arstudio.decoding.logits import SamplingParams
from arstudio.decoding.mar_head import learned_range_schedule, reverse_step
from benchmarks.common import finish, header


class _Missing(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{cls.__name__}.{name}"


class _StandIn(types.ModuleType):
    """A module whose every attribute is an inert class (for imports timm makes and ``Block`` never uses)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Missing(name, (), {})


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StandIn(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def import_reference(src: Path, timm_dir: Path | None):
    """MAR's ``models.mar`` module from a snapshot."""
    if not (src / "models" / "mar.py").is_file() or not (src / "diffusion" / "respace.py").is_file():
        raise SystemExit(
            f"--reference {str(src)!r} is not a snapshot of LTH14/mar (no models/mar.py, diffusion/respace.py); get "
            "one with: git clone https://github.com/LTH14/mar"
        )
    if timm_dir is not None:
        sys.path.insert(0, str(timm_dir))
    try:
        import torchvision  # noqa: F401
    except ImportError:
        sys.meta_path.insert(0, _StandInFinder())
    sys.path.insert(0, str(src))
    try:
        from models import mar
    except ImportError as error:
        raise SystemExit(f"MAR's code could not be imported ({error}); it needs timm: see --timm") from error
    return mar


@contextlib.contextmanager
def cuda_is_cpu():
    """MAR calls ``.cuda()`` everywhere; on a CPU machine it becomes the identity while the reference runs."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


class NoiseFeed:
    """Stands in for ``torch.randn`` / ``torch.randn_like`` inside MAR's ``DiffLoss.sample``: each call of
    ``randn`` starts the next iteration's noise (S, M, d) as ours drew it; each ``randn_like`` (one per reverse
    step, on the doubled batch under guidance) hands out the next step's, zeros for the rows ours never reads."""

    def __init__(self, noises: list[torch.Tensor]):
        self.pending, self.current, self.step = list(noises), None, 0
        self.randn, self.randn_like = torch.randn, torch.randn_like

    def fake_randn(self, *shape, **kwargs):
        size = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        if size[0] == 0:  # an iteration with nothing to predict: ours drew nothing
            return self.randn(*size)
        self.current, self.step = self.pending.pop(0), 1
        assert tuple(size) == tuple(self.current.shape[1:]), (size, self.current.shape)
        return self.current[0].clone()

    def fake_randn_like(self, x, **kwargs):
        out = torch.zeros_like(x)
        if self.step < self.current.shape[0]:
            out[: self.current.shape[1]] = self.current[self.step]
        self.step += 1
        return out

    @contextlib.contextmanager
    def active(self):
        torch.randn, torch.randn_like = self.fake_randn, self.fake_randn_like
        try:
            yield
        finally:
            torch.randn, torch.randn_like = self.randn, self.randn_like


def random_weights(model: torch.nn.Module, seed: int) -> None:
    """Every parameter re-drawn (LayerNorm weights around 1), so no zero-initialised layer hides a mismatch; the
    head's output layer smaller, so its noise predictions and variance values stay in a trained model's range
    (|v| <= 1 or so) and the latents stay finite over the reverse steps."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=g)
            is_norm = name.endswith("weight") and param.ndim == 1
            std = 0.002 if name.startswith("diffloss.net.final_layer.linear") else 0.05
            param.copy_(1 + 0.1 * noise if is_norm else std * noise)


def build_reference(mar, size: str, steps: int, path: Path):
    """MAR's model with random weights, saved in ``main_mar.py``'s layout; returns it with the EMA loaded."""
    width, _, _, head_depth, head_width = MAR_SIZES[size]
    model = getattr(mar, size)(
        buffer_size=64, diffloss_d=head_depth, diffloss_w=head_width, num_sampling_steps=str(steps)
    ).eval()
    random_weights(model, 0)
    state = model.state_dict()
    g = torch.Generator().manual_seed(1)
    ema = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in state.items()}
    args = argparse.Namespace(model=size, diffloss_d=head_depth, diffloss_w=head_width, buffer_size=64)
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 0.02, "params": [0, 1]}]}
    torch.save(
        {"model": state, "model_ema": ema, "optimizer": optimizer, "epoch": 799, "scaler": {}, "args": args},
        path,
    )
    model.load_state_dict(ema)
    return model


def head_parity(reference, ours, steps: int) -> dict:
    """(a): the net's outputs and one reverse step's mean / log variance for the same inputs."""
    g = torch.Generator().manual_seed(3)
    rows, d = 64, ours.config.token_dim
    x = torch.randn(rows, d, generator=g)
    z = torch.randn(rows, ours.config.decoder_dim, generator=g)
    t = torch.randint(0, 1000, (rows,), generator=g)
    i = torch.randint(0, steps, (rows,), generator=g)[:1].repeat(rows)  # one respaced step for the batch
    schedule = learned_range_schedule(ours.head.num_timesteps, steps)
    with torch.no_grad(), cuda_is_cpu():
        theirs_out = reference.diffloss.net(x, t, z)
        theirs = reference.diffloss.gen_diffusion.p_mean_variance(
            reference.diffloss.net, x, i, clip_denoised=False, model_kwargs={"c": z}
        )
        mine_out = ours.head(x, t, z)
        mean, log_var = reverse_step(ours.head, x, int(i[0]), schedule, z)
    return {
        "head_output_max_abs_diff": (mine_out - theirs_out).abs().max().item(),
        "reverse_step_mean_max_abs_diff": (mean - theirs["mean"]).abs().max().item(),
        "reverse_step_log_variance_max_abs_diff": (log_var - theirs["log_variance"]).abs().max().item(),
        "respaced_timesteps_identical": reference.diffloss.gen_diffusion.timestep_map
        == schedule.timestep_map,
    }


def sampling_parity(reference, ours, args) -> dict:
    """(b): ours for real (order and noise recorded), MAR's ``sample_tokens`` fed the same."""
    recorded = {"orders": [], "noise": [], "tokens": []}
    draw_orders, draw_noise, head = (
        mar_sampler.random_orders,
        mar_sampler.iteration_noise,
        mar_sampler.sample_mar_head,
    )

    def orders(*a):
        recorded["orders"].append(draw_orders(*a))
        return recorded["orders"][-1]

    def noise(*a):
        recorded["noise"].append(draw_noise(*a))
        return recorded["noise"][-1]

    def sample_head(*a, **k):
        recorded["tokens"].append(head(*a, **k))
        return recorded["tokens"][-1]

    labels = torch.arange(args.batch) * 97 % 1000
    generators = [torch.Generator().manual_seed(10 + b) for b in range(args.batch)]
    params = SamplingParams(guidance_scale=args.cfg, temperature=args.temperature)
    mar_sampler.random_orders, mar_sampler.iteration_noise, mar_sampler.sample_mar_head = (
        orders,
        noise,
        sample_head,
    )
    try:
        result = mar_sampler.sample_mar(ours, labels, generators, params, args.num_iter, args.steps)
    finally:
        mar_sampler.random_orders, mar_sampler.iteration_noise, mar_sampler.sample_mar_head = (
            draw_orders,
            draw_noise,
            head,
        )

    theirs_tokens, original_sample = [], reference.diffloss.sample

    def record_sample(z, temperature=1.0, cfg=1.0):
        out = original_sample(z, temperature, cfg)
        theirs_tokens.append(out[: out.shape[0] // 2] if cfg != 1.0 else out)
        return out

    reference.sample_orders = lambda bsz: recorded["orders"][0]
    reference.diffloss.sample = record_sample
    feed = NoiseFeed(recorded["noise"])
    with torch.no_grad(), cuda_is_cpu(), feed.active():
        latents = reference.sample_tokens(
            args.batch,
            num_iter=args.num_iter,
            cfg=args.cfg,
            cfg_schedule="linear",
            labels=labels,
            temperature=args.temperature,
        )
    theirs_tokens = [t for t in theirs_tokens if t.shape[0]]
    theirs_final = latents.flatten(2).transpose(1, 2)  # (B, 16, h, w) -> (B, N, 16) raster order
    per_iteration = [
        (a - b).abs().max().item() for a, b in zip(recorded["tokens"], theirs_tokens, strict=True)
    ]
    return {
        "iterations": len(per_iteration),
        "first_iteration_tokens_max_abs_diff": per_iteration[0],
        "iteration_tokens_max_abs_diff": max(per_iteration),
        "final_latents_max_abs_diff": (result.tokens - theirs_final).abs().max().item(),
        "final_latents_max_abs": theirs_final.abs().max().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a snapshot of LTH14/mar")
    parser.add_argument("--timm", type=Path, default=None, help="a folder holding timm (if not installed)")
    parser.add_argument("--size", default="mar_base", choices=tuple(MAR_SIZES))
    parser.add_argument("--num-iter", type=int, default=4, help="MAR iterations to compare")
    parser.add_argument(
        "--steps", type=int, default=20, help="head sampling steps (MAR's num_sampling_steps)"
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--cfg", type=float, default=2.9)
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    mar = import_reference(args.reference.resolve(), args.timm)
    info = header("parity_mar" if args.size == "mar_base" else f"parity_{args.size}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint-last.pth"
        with cuda_is_cpu():
            reference = build_reference(mar, args.size, args.steps, path)
        ours = load_mar(path, mar_config(args.size))
    row = {
        "size": args.size,
        "num_iter": args.num_iter,
        "steps": args.steps,
        "batch": args.batch,
        "cfg": args.cfg,
    }
    row.update(head_parity(reference, ours, args.steps))
    row.update(sampling_parity(reference, ours, args))
    worst = max(v for k, v in row.items() if k.endswith("max_abs_diff"))
    print(
        f"MAR ({args.size}, random weights, {args.num_iter} iterations x {args.steps} head steps, cfg {args.cfg}): "
        f"max abs diff {worst:.3g} (tolerance 1e-4)"
    )
    for key, value in row.items():
        print(f"  {key}: {value}")
    finish(info, {"reference": str(args.reference), "result": row})


if __name__ == "__main__":
    main()

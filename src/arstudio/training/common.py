"""Pieces every training loop shares: accelerate set-up, resumable checkpoints, a learning-rate schedule."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from arstudio.io import atomic_write_bytes, load_weights_into
from arstudio.seeding import seeded  # noqa: F401  (re-exported: training modules and tests import it here)

TRAIN_STATE = "train_state.pt"


MIXED_PRECISION = ("no", "bf16")


def make_accelerator():
    """CPU/fp32 here; on a GPU box accelerate picks the device (mixed precision via `accelerate config`)."""
    from accelerate import Accelerator

    return Accelerator()


def autocast(device: torch.device, mixed_precision: str):
    """The forward pass's precision context: ``"bf16"`` autocasts matmuls to bfloat16 (on this CPU's AMX a
    video-generator step is ~1.4x faster), ``"no"`` leaves float32. Weights, the optimizer, norms and RoPE
    stay float32 either way.

    Not accelerate's ``mixed_precision``: that is fixed once per process, so one run in bf16 would refuse
    every later float32 one (tests, a benchmark after a training call)."""
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision={mixed_precision!r}; choose one of {MIXED_PRECISION}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision == "bf16")


def generator_optimizer(model, lr: float, new_params=(), old_lr_scale: float = 1.0):
    """AdamW (betas 0.9 / 0.95) with weight decay 0.05 on matrices only: norms, biases and embeddings' 1-D
    parameters are not pulled to zero (the generators' recipe).

    ``new_params``: names of parameters a warm start did not load (e.g. a new control encoder); they train
    at ``lr`` while the loaded ones train at ``old_lr_scale * lr`` (``set_lr`` honours each group's
    ``lr_scale``). Groups: loaded then new, each decay then no-decay; empty groups are left out, so a
    run without a warm start has the two groups its checkpoints hold.
    """
    groups = []
    for is_new, scale in ((False, old_lr_scale), (True, 1.0)):
        params = [p for name, p in model.named_parameters() if (name in new_params) == is_new]
        groups += [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.05, "lr_scale": scale},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr_scale": scale},
        ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95))


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def save_checkpoint(model, optimizer, step: int, out_dir: Path, extra: dict | None = None) -> None:
    """Weights as safetensors + config (what gets shipped), optimizer state beside them (to resume)."""
    import io

    model.save_pretrained(out_dir)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "step": step, **(extra or {})}, buffer)
    atomic_write_bytes(out_dir / TRAIN_STATE, buffer.getvalue())


def start_training(model, optimizer, out_dir: Path):
    """Resume from ``out_dir``'s checkpoint (if any), then hand model and optimizer to accelerate.

    Returns (first step, accelerator, wrapped model, wrapped optimizer, the unwrapped model): the loop steps the
    wrapped pair and calls the unwrapped model's own methods (loss, save) directly.
    """
    start = resume_checkpoint(model, optimizer, out_dir)
    accelerator = make_accelerator()
    model, optimizer = accelerator.prepare(model, optimizer)
    return start, accelerator, model, optimizer, accelerator.unwrap_model(model)


def resume_checkpoint(model, optimizer, out_dir: Path) -> int:
    """Load weights and optimizer state from ``out_dir``; returns the step to continue from (0 if none)."""
    state_path = out_dir / TRAIN_STATE
    if not state_path.is_file():
        return 0
    load_weights_into(model, out_dir)
    # Our own file, but still no arbitrary pickle: optimizer state is tensors and numbers.
    state = torch.load(state_path, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def set_lr(optimizer, lr: float) -> None:
    """Set every group's learning rate: ``lr`` times the group's ``lr_scale`` (1 unless given)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def optimizer_step(accelerator, model, optimizer, loss, max_grad_norm: float | None = None) -> None:
    """One update: zero the gradients, backward through accelerate (mixed precision, DDP), clip, step."""
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    if max_grad_norm is not None:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()


def checkpoint_due(step: int, steps: int, save_every: int) -> bool:
    """Save every ``save_every`` steps and after the last one (so a killed run loses little)."""
    return (step + 1) % save_every == 0 or step + 1 == steps


class EmaWeights:
    """Exponential moving average of a model's weights, kept beside its checkpoint in ``out_dir/ema``.

    The average over the last few hundred steps often samples better than the last step's weights, but not
    always (docs/training.md: for sprites-video it probed best at one of two temperatures, for DD2 it lost),
    so a run keeps both and ships the one that probes better. A resumed run reloads the saved average
    (saved before the train state, so its step is never behind the checkpoint's).

    The averaging is torch's ``AveragedModel`` with ``get_ema_multi_avg_fn``. One thing is ours: the decay
    warms up as min(decay, (1 + step) / (10 + step)), so the first steps' random weights fade fast (with a
    fixed 0.999 a 2000-step run would still hold e^-2 of its first weights), hence one EMA function per
    step. The average starts as the model (``n_averaged`` = 1), not as a copy taken at the first update,
    so an update at step s moves it by the same 1 - decay(s) as the hand-written loop this replaced.
    """

    def __init__(self, model: torch.nn.Module, decay: float, out_dir: Path):
        from torch.optim.swa_utils import AveragedModel

        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay={decay} must be in (0, 1)")
        self.decay, self.directory = decay, Path(out_dir) / "ema"
        self.averaged = AveragedModel(model, use_buffers=False)
        self.averaged.n_averaged.fill_(1)  # the copy is the average's start: every update averages
        self.model = self.averaged.module.eval().requires_grad_(False)
        if (self.directory / "model.safetensors").is_file() and (Path(out_dir) / TRAIN_STATE).is_file():
            load_weights_into(self.model, self.directory)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        self.averaged.multi_avg_fn = get_ema_multi_avg_fn(min(self.decay, (1 + step) / (10 + step)))
        self.averaged.update_parameters(model)

    def save(self) -> None:
        self.model.save_pretrained(self.directory)

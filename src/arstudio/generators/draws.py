"""Training-time random draws from an explicit ``torch.Generator`` for tensors on any device.

Training loops keep their generators on the CPU, so a run draws the same numbers on a CPU or a GPU; torch refuses
a CPU generator for a CUDA draw, so each draw happens on the generator's device and then moves to the model's.
"""

from __future__ import annotations

import torch


def _where(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def randn(shape, generator: torch.Generator | None, device: torch.device, dtype=None) -> torch.Tensor:
    """Standard normals of ``shape`` (``dtype``, default float32), on ``device``."""
    return torch.randn(shape, generator=generator, device=_where(generator, device), dtype=dtype).to(device)


def rand(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniforms in [0, 1) of ``shape`` (float32), on ``device``."""
    return torch.rand(shape, generator=generator, device=_where(generator, device)).to(device)


def randint(high: int, shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Integers in [0, high) of ``shape`` (int64), on ``device``."""
    return torch.randint(0, high, shape, generator=generator, device=_where(generator, device)).to(device)

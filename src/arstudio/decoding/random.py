"""Per-image random draws made on the device, with no host round trip inside decoding loops.

Why a counter-based draw and not one ``torch.Generator`` per image: a CPU generator per row means a
host-side draw, a stack and a copy to the device at every token (and a sync on a GPU); one device generator
per row means one kernel per row per draw and cannot be captured in a CUDA graph. Here each image gets a
63-bit *key* (one draw from its own generator, once, before the loop), and every random number is a hash
of (key, draw index, lane): the n-th call of ``uniform``/``normal`` gives row b the same numbers whatever
the batch, the device or the dtype, and no state lives on the device. The hash is integer arithmetic on
int64 tensors that never overflows (32-bit values times multipliers below 2^31), so CPU and CUDA compute
identical bits.

What users rely on still holds: one seed per image (``out.seeds``), the same image for the same seed
whatever its batch-mates (up to float rounding of batched matmuls, see ``logits.py``).
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
# Odd multipliers below 2^31 (so x * m < 2^63 for x < 2^32): the first is lowbias32's, the second is
# another well-mixing odd constant chosen under the same bound.
_M1, _M2 = 0x7FEB352D, 0x2C1B3C6D
_GOLDEN = 0x9E3779B9  # separates consecutive draw indices before mixing


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche hash of int64 values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * _M1) & _MASK32
    x = x ^ (x >> 15)
    x = (x * _M2) & _MASK32
    return x ^ (x >> 16)


class DeviceRandom:
    """A sequence of per-row random draws, keyed by each image's generator.

    ``uniform(n)`` / ``normal(shape)`` return (B, ...) tensors on ``device``; each call advances a host-side
    draw index (a Python int, so nothing is read back from the device).
    """

    def __init__(self, generators: list[torch.Generator], device: torch.device | str):
        if not generators or not all(isinstance(g, torch.Generator) for g in generators):
            raise ValueError(f"need one torch.Generator per image, got {generators!r}")
        # The image's key: one draw from its generator, made where the generator lives and copied over
        # as a tensor (nothing is read back to the host).
        key = torch.stack(
            [torch.randint(0, 2**63 - 1, (), generator=g, device=g.device).to(device) for g in generators]
        )
        # Pre-mix both halves of the key once; each draw then hashes (key state, index, lane).
        self._state = _mix32(_mix32(key & _MASK32) ^ (key >> 32))  # (B,) in [0, 2^32)
        self.device = torch.device(device)
        self.draws = 0
        self._ahead = None  # uniform_ahead's draw offsets, kept for the next call of the same count

    @property
    def batch(self) -> int:
        return self._state.shape[0]

    def __len__(self) -> int:  # as the list of generators it stands for
        return self.batch

    def _bits(self, lanes: int) -> torch.Tensor:
        """(B, lanes) int64 uniform 32-bit values for the next draw index."""
        index = (self.draws * _GOLDEN) & _MASK32
        self.draws += 1
        lane = torch.arange(lanes, device=self.device, dtype=torch.int64)
        return _mix32(_mix32(self._state[:, None] ^ index) ^ lane)

    def uniform(self, lanes: int = 1) -> torch.Tensor:
        """(B, lanes) float32 uniforms in the open interval (0, 1): 24 random bits, centred in their cell."""
        return ((self._bits(lanes) >> 8).float() + 0.5) * 2.0**-24

    def uniform_ahead(self, count: int, lanes: int) -> torch.Tensor:
        """(B, count, lanes): what ``count`` successive ``uniform(lanes)`` calls return, in one batch of ops
        (a loop drawing every round can take several rounds' numbers at once); advances by ``count``. A
        caller that uses fewer gives the rest back with ``self.draws -= unused``."""
        if self._ahead is None or self._ahead.shape[0] != count:
            self._ahead = torch.arange(count, device=self.device, dtype=torch.int64)
        index = ((self._ahead + self.draws) * _GOLDEN) & _MASK32  # (count,) as ``_bits`` makes each
        self.draws += count
        lane = torch.arange(lanes, device=self.device, dtype=torch.int64)
        bits = _mix32(_mix32(self._state[:, None, None] ^ index[:, None]) ^ lane)  # (B, count, lanes)
        return ((bits >> 8).float() + 0.5) * 2.0**-24

    def normal(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B, *shape) standard normals by Box-Muller from two uniforms per value."""
        count = 1
        for size in shape:
            count *= size
        u = self.uniform(2 * count)  # (B, 2 count)
        radius = torch.sqrt(-2.0 * torch.log(u[:, :count]))
        z = radius * torch.cos((2 * torch.pi) * u[:, count:])
        return z.view(self.batch, *shape).to(dtype)


def as_device_random(generators, device) -> DeviceRandom:
    """Accept a ready ``DeviceRandom`` (a sampler handing its draws on) or a list of generators."""
    return generators if isinstance(generators, DeviceRandom) else DeviceRandom(generators, device)

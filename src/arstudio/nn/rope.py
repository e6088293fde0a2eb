"""Rotary position embeddings: 2D (row, column) for image token grids.

LlamaGen's layout: the head dimension is split in two halves of rotation pairs; the first half rotates by
the token's row, the second by its column, with base 10000. Condition-prefix tokens get no rotation
(identity), except for LlamaGen's released checkpoints, whose tables hold *zeros* for the prefix, which
zeroes prefix queries and keys (``zero_prefix=True`` reproduces that; new models should not use it).
"""

from __future__ import annotations

import torch


def rope_2d_table(
    grid_size: int,
    head_dim: int,
    prefix_len: int,
    base: float = 10000.0,
    zero_prefix: bool = False,
    grid_prefix: bool = False,
) -> torch.Tensor:
    """(prefix_len + grid_size**2, head_dim // 2, 2) table of (cos, sin) per rotation pair, raster order.

    ``grid_prefix``: the last grid_size**2 prefix positions are a control grid (prefilled control tokens):
    each gets the rotation of the image token it describes, so "same place" is a relative offset of zero.
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {head_dim}")
    half = head_dim // 2  # dimensions per axis
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))  # (head_dim // 4,)
    angles = torch.outer(torch.arange(grid_size).float(), freqs)  # (grid, head_dim // 4)
    grid = torch.cat(
        [
            angles[:, None, :].expand(-1, grid_size, -1),  # depends on the row
            angles[None, :, :].expand(grid_size, -1, -1),  # depends on the column
        ],
        dim=-1,
    )  # (grid, grid, head_dim // 2)
    table = torch.stack([grid.cos(), grid.sin()], dim=-1).flatten(0, 1)  # (grid*grid, head_dim // 2, 2)
    plain = prefix_len - table.shape[0] if grid_prefix else prefix_len
    if plain < 0:
        raise ValueError(f"a grid prefix needs prefix_len >= {table.shape[0]}, got {prefix_len}")
    prefix = torch.zeros(plain, half, 2)
    if not zero_prefix:
        prefix[..., 0] = 1.0  # cos = 1, sin = 0: no rotation
    return torch.cat([prefix, table, table] if grid_prefix else [prefix, table])


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x: (B, L, heads, head_dim); table: (L, head_dim // 2, 2) (cos, sin) for those positions, or
    (B, L, head_dim // 2, 2) when each row sits at its own positions (batched speculative decoding).

    Each pair (x0, x1) becomes (x0 cos - x1 sin, x1 cos + x0 sin). Eagerly that is a complex product, a
    handful of kernels instead of a dozen (this runs twice per layer on every decoding step); under
    torch.compile it is written in real arithmetic, which the compiler fuses into one kernel and which,
    unlike complex views, it compiles without a graph break.
    """
    if torch.compiler.is_compiling():
        pairs = x.float().reshape(*x.shape[:-1], -1, 2)
        x0, x1 = pairs[..., 0], pairs[..., 1]  # (B, L, heads, head_dim // 2)
        cos, sin = table[..., 0].float().unsqueeze(-2), table[..., 1].float().unsqueeze(-2)
        return torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(-2).type_as(x)
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, L, heads, head_dim // 2)
    rotation = torch.view_as_complex(table.float().contiguous()).unsqueeze(-2)  # ([B,] L, 1, head_dim // 2)
    return torch.view_as_real(pairs * rotation).flatten(-2).type_as(x)


def rope_axes_table(coords: torch.Tensor, pairs: tuple[int, ...], base: float = 10000.0) -> torch.Tensor:
    """N-axis RoPE (video: frame, row, column): coords (L, A) float -> (L, sum(pairs), 2) (cos, sin).

    Axis a gets ``pairs[a]`` rotation pairs with frequencies base^(-2i / (2 pairs[a])), as each axis of the
    2D table does. NaN coordinates (condition prefix) get no rotation. Coordinates may be fractional: a
    compressed long-term token sits at the centre of the patch it pools.
    """
    if coords.ndim != 2 or coords.shape[1] != len(pairs):
        raise ValueError(f"coords must be (L, {len(pairs)}); got {tuple(coords.shape)}")
    angles = []
    for axis, n in enumerate(pairs):
        freqs = 1.0 / (base ** (torch.arange(n, device=coords.device).float() * 2 / (2 * n)))
        angles.append(coords[:, axis : axis + 1].float() * freqs[None])  # (L, n)
    angles = torch.cat(angles, dim=1).nan_to_num(0.0)  # prefix rows: angle 0, i.e. cos 1 and sin 0
    return torch.stack([angles.cos(), angles.sin()], dim=-1)

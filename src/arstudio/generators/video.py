"""FAR-style next-frame video generator on frame-wise continuous latents (an image is a one-frame video).

A clip's frames (each an h x w grid of d-dim KL latents) are packed into one sequence after the condition
prefix. Attention is block-causal: a token sees the prefix and every token of its own and earlier frames
(bidirectional inside a frame, causal between frames). Positions are 3D RoPE over (frame, row, column).

The backbone is the frame denoiser (FAR): a frame enters as noisy latents x_t plus an embedding of its
flow time t, or, when it is clean context, plus a learned "clean" embedding (FAR's timestep -1). The
backbone's output at each token conditions ``heads.FlowHead``, which predicts that token's velocity
eps - x from (x_t, t, z): the whole frame is denoised jointly, through the backbone's in-frame attention.

Training (``loss``), two ways to give a noisy frame the clean past it will have at sampling time
(``context_mode``):
- ``"stochastic"`` (FAR's stochastic clean context): every frame gets its own logit-normal t; with
  probability ``clean_context_ratio`` a frame is replaced by its clean latents and carries no loss. A frame
  then sees the frames before it partly clean, partly noisy.
- ``"clean_copy"`` (teacher forcing): the sequence holds the clean frames and, after them, every frame
  noisy at its own t; noisy frame f sees the clean frames before f and itself, never the other noisy
  frames. Every frame carries a loss with exactly the context it has at sampling time, for a sequence
  about twice as long.

Long/short-term context: frames older than the last ``short_frames`` are *compressed*: each
``long_pool`` x ``long_pool`` patch of latents becomes one token (concatenated, through ``long_embed``),
at the RoPE coordinates of the patch centre. Training puts a random number of leading frames of the clip
in that form (always clean), so the model learns to read them.

Sampling loops (Euler steps per frame, CFG, the frame KV cache) live in ``decoding/video.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from arstudio.generators import draws
from arstudio.generators.adaln_mlp import timestep_embedding
from arstudio.generators.backbone import BackboneConfig
from arstudio.generators.heads import FlowHead
from arstudio.generators.image import PrefixARGenerator, check_condition_config
from arstudio.nn.rope import rope_axes_table

PREFIX_FRAME = -1  # frame index of condition-prefix tokens: visible to every token, never decayed
CONTEXT_MODES = ("stochastic", "clean_copy")


@dataclass(frozen=True)
class VideoGeneratorConfig:
    # How training builds context frames; sampling reads none of them (see loading.py).
    TRAINING_ONLY: ClassVar[tuple[str, ...]] = ("context_mode", "clean_context_ratio", "long_context_prob")

    token_dim: int = 8  # d, the KL tokenizer's latent channels
    head_width: int = 128
    head_depth: int = 2
    train_frames: int = 8  # clip length seen in training
    max_frames: int = 64  # longest clip a pipeline may ask for (4x+ training: extrapolation)
    context_mode: str = "stochastic"  # or "clean_copy" (teacher forcing); see the module docstring
    clean_context_ratio: float = 0.5  # stochastic: FAR uses 0.1 on UCF; more clean frames teach clean context
    time_rope_pairs: int = 4  # rotation pairs for the frame axis; the rest split between rows and columns
    short_frames: int = 3  # past frames kept at full resolution (0: never compress)
    long_pool: int = 2  # compressed frames: one token per long_pool x long_pool latent patch
    long_context_prob: float = 0.5  # training: share of batches whose first frames are compressed
    num_classes: int = 24
    class_dropout_prob: float = 0.1
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    initializer_range: float = 0.02
    condition: str = "class"
    text_dim: int = 0

    def __post_init__(self):
        check_condition_config(self)
        if self.condition != "class":
            raise ValueError(f"condition={self.condition!r}: video generators are class-conditioned so far")
        if not isinstance(self.long_pool, int) or self.long_pool < 1:
            raise ValueError(f"long_pool={self.long_pool!r} must be an integer >= 1")
        half = self.backbone.head_dim // 2
        spatial = half - self.time_rope_pairs
        if not 0 < self.time_rope_pairs < half or spatial % 2:
            raise ValueError(
                f"time_rope_pairs={self.time_rope_pairs} must leave an even number (> 0) of the {half} "
                "rotation pairs for rows and columns"
            )
        if self.backbone.grid_size % self.long_pool:
            raise ValueError(f"long_pool={self.long_pool} must divide grid_size={self.backbone.grid_size}")
        if not 1 <= self.train_frames <= self.max_frames:
            raise ValueError(
                f"need 1 <= train_frames ({self.train_frames}) <= max_frames ({self.max_frames})"
            )
        if self.context_mode not in CONTEXT_MODES:
            raise ValueError(f"context_mode={self.context_mode!r}; choose one of {CONTEXT_MODES}")
        if not 0.0 <= self.clean_context_ratio < 1.0:
            raise ValueError(f"clean_context_ratio={self.clean_context_ratio} must be in [0, 1)")

    @property
    def frame_tokens(self) -> int:
        return self.backbone.grid_size**2

    @property
    def long_tokens(self) -> int:
        return (self.backbone.grid_size // self.long_pool) ** 2

    @property
    def rope_pairs(self) -> tuple[int, int, int]:
        spatial = (self.backbone.head_dim // 2 - self.time_rope_pairs) // 2
        return (self.time_rope_pairs, spatial, spatial)


def frame_coords(frame: int, grid: int, pool: int = 1) -> torch.Tensor:
    """(n, 3) float (frame, row, column) of one frame's tokens in raster order; pooled tokens sit at the
    centre of their patch, so both resolutions share one spatial frame of reference."""
    cells = torch.arange(grid // pool).float() * pool + (pool - 1) / 2
    rows, cols = torch.meshgrid(cells, cells, indexing="ij")
    return torch.stack([torch.full_like(rows, float(frame)), rows, cols], dim=-1).reshape(-1, 3)


def prefix_coords(prefix_len: int) -> torch.Tensor:
    return torch.full((prefix_len, 3), float("nan"))  # NaN: no rotation (see rope_axes_table)


def block_mask(query_frames: torch.Tensor, key_frames: torch.Tensor, temporal_decay: float = 0.0):
    """Block-causal visibility: a query sees keys of frames <= its own (prefix keys always).

    query_frames (Tq,), key_frames (Tk,) frame indices (-1 = prefix; keys may be -2 = empty cache slot,
    never seen). Returns (1, 1, Tq, Tk): bool, or with ``temporal_decay`` > 0 a float bias that also adds
    -decay * (frame distance) to visible frame keys (FAR's FlexRoPE-style test-time decay, ALiBi-like).
    """
    q, k = query_frames[:, None], key_frames[None, :]
    visible = (k <= q) & (k >= PREFIX_FRAME)
    if temporal_decay == 0.0:
        return visible[None, None]
    distance = (q - k).clamp(min=0).float() * (k > PREFIX_FRAME)
    bias = torch.where(visible, -temporal_decay * distance, -math.inf)
    return bias[None, None]


def clean_copy_mask(frames: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """Teacher-forcing visibility over [prefix, clean frames, noisy frames]: frames (T,) frame indices
    (-1 = prefix), noisy (T,) bool. A clean token sees the prefix and clean frames <= its own (block-causal);
    a noisy token sees the prefix, clean frames *before* its own, and its own noisy frame. (1, 1, T, T) bool."""
    q, k = frames[:, None], frames[None, :]
    q_noisy, k_noisy = noisy[:, None], noisy[None, :]
    clean_context = ~k_noisy & (k >= PREFIX_FRAME) & torch.where(q_noisy, k < q, k <= q)
    own_frame = q_noisy & k_noisy & (k == q)
    return (clean_context | own_frame)[None, None]


def pool_latents(latents: torch.Tensor, pool: int) -> torch.Tensor:
    """(B, F, N, d) raster latents -> (B, F, N / pool^2, pool^2 * d): each patch's vectors concatenated."""
    b, f, n, d = latents.shape
    g = math.isqrt(n)
    x = latents.reshape(b, f, g // pool, pool, g // pool, pool, d).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, f, (g // pool) ** 2, pool * pool * d)


class VideoGenerator(PrefixARGenerator):
    """Frame-level AR flow model over clips of latent grids (B, F, N, d), conditioned by a class prefix."""

    config_class = VideoGeneratorConfig
    token_kind = "continuous"
    step_includes_head = True  # ``step`` runs the flow head too: compiling it covers the head (compiled.py)

    def __init__(self, config: VideoGeneratorConfig):
        super().__init__()
        self.config = config
        dim = config.backbone.dim
        self._build_trunk(config, lambda: nn.Linear(config.token_dim, dim))
        self.long_embed = nn.Linear(config.long_pool**2 * config.token_dim, dim)
        self.time_embed = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.clean_embedding = nn.Parameter(torch.zeros(dim))
        self.apply(self._init_weights)
        self.head = FlowHead(config.token_dim, dim, config.head_width, config.head_depth)  # zero-init output

    # ---- inputs ---------------------------------------------------------------------------------
    def check_latents(self, latents: torch.Tensor) -> None:
        n, d = self.config.frame_tokens, self.config.token_dim
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or tuple(latents.shape[2:]) != (n, d):
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"clip latents must be (B, frames, {n}, {d}); got {shape}")

    def frame_inputs(self, x: torch.Tensor, t: torch.Tensor | None, clean: torch.Tensor | None = None):
        """Full-resolution frames x (B, F, N, d) at flow times t (B, F) -> (B, F * N, dim).

        ``clean`` (B, F) bool marks clean context frames (their t is ignored); t None: all clean.
        """
        h = self.tok_embeddings(x.to(self.tok_embeddings.weight.dtype))  # (B, F, N, dim)
        state = self.clean_embedding.expand(*x.shape[:2], -1)
        if t is not None:
            noisy = self.time_embed(timestep_embedding(t.flatten() * 1000, 256).to(h.dtype)).view_as(state)
            state = noisy if clean is None else torch.where(clean[..., None], state, noisy)
        return (h + state[:, :, None]).flatten(1, 2)

    def long_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Clean frames x (B, F, N, d) -> compressed tokens (B, F * N / pool^2, dim)."""
        pooled = pool_latents(x.to(self.long_embed.weight.dtype), self.config.long_pool)
        return (self.long_embed(pooled) + self.clean_embedding).flatten(1, 2)

    def rope_rows(self, coords: torch.Tensor) -> torch.Tensor:
        return rope_axes_table(coords, self.config.rope_pairs, self.config.backbone.rope_base)

    def layout(self, num_long: int, num_full: int, first_frame: int = 0):
        """Coordinates (L, 3) and frame index (L,) of [prefix, num_long compressed, num_full full frames]."""
        cfg, g = self.config, self.config.backbone.grid_size
        coords = [prefix_coords(self.prefix_len)]
        frames = [torch.full((self.prefix_len,), PREFIX_FRAME)]
        for i in range(num_long + num_full):
            pool = cfg.long_pool if i < num_long else 1
            coords.append(frame_coords(first_frame + i, g, pool))
            frames.append(torch.full((coords[-1].shape[0],), first_frame + i))
        return torch.cat(coords), torch.cat(frames)

    # ---- passes ---------------------------------------------------------------------------------
    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Noisy frames x_t (B, F, N, d) at times t (B, F), backbone outputs z (B, F * N, dim) -> v (B, F, N, d)."""
        b, f, n, d = x_t.shape
        times = t[:, :, None].expand(b, f, n).reshape(-1)
        return self.head(x_t.reshape(-1, d), times, z.reshape(b * f * n, -1)).view(b, f, n, d)

    def step(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        input_pos: torch.Tensor,
        mask: torch.Tensor,
        rope: torch.Tensor,
        kv_len: int | None = None,
    ) -> torch.Tensor:
        """One Euler step's pass (what decoding compiles): a noisy frame x_t (B, 1, N, d) at times t (B, 1),
        written into cache slots ``input_pos`` (N,) that see the slots ``mask`` (1, 1, N, slots) allows, with
        RoPE rows ``rope`` (N, pairs, 2) -> velocity (B, N, d). ``kv_len``: attend over the first kv_len
        slots only (an eager saving; a compiled step drops it and keeps its static shapes)."""
        if kv_len is not None:
            mask = mask[..., :kv_len]
        z = self.backbone.step(self.frame_inputs(x_t, t), input_pos, mask, rope)
        return self.velocity(x_t, t, z)[:, 0]

    def sequence_hidden(self, cond, long, x, t, clean=None, temporal_decay: float = 0.0):
        """One uncached pass over [prefix, compressed ``long`` (B, L, N, d), frames ``x`` (B, F, N, d)]
        -> the backbone outputs of the full-resolution frames (B, F * N, dim)."""
        parts = [self.cls_embedding(cond)]
        if long is not None and long.shape[1]:
            parts.append(self.long_inputs(long))
        parts.append(self.frame_inputs(x, t, clean))
        num_long = 0 if long is None else long.shape[1]
        coords, frames = self.layout(num_long, x.shape[1])
        device = parts[0].device
        mask = block_mask(frames, frames, temporal_decay).to(device)
        hidden = self.backbone(torch.cat(parts, dim=1), mask=mask, rope=self.rope_rows(coords).to(device))
        return hidden[:, -x.shape[1] * x.shape[2] :]

    def clean_copy_hidden(self, cond, long, x, x_t, t):
        """Teacher-forcing pass over [prefix, compressed ``long`` (B, L, N, d), clean frames x[:, :-1],
        noisy frames x_t (B, F, N, d) at times t (B, F)] -> backbone outputs of the noisy frames (B, F * N, dim).
        """
        b, f, n = x.shape[:3]
        num_long = 0 if long is None else long.shape[1]
        parts = [self.cls_embedding(cond)]
        if num_long:
            parts.append(self.long_inputs(long))
        parts += [self.frame_inputs(x[:, : f - 1], None), self.frame_inputs(x_t, t)]
        coords, frames = self.layout(num_long, f - 1)
        grid = self.config.backbone.grid_size
        noisy_coords = torch.cat([frame_coords(num_long + i, grid) for i in range(f)])
        noisy = torch.cat([torch.zeros(len(frames), dtype=torch.bool), torch.ones(f * n, dtype=torch.bool)])
        frames = torch.cat([frames, noisy_coords[:, 0].long()])
        device = parts[0].device
        mask = clean_copy_mask(frames, noisy).to(device)
        rope = self.rope_rows(torch.cat([coords, noisy_coords])).to(device)
        hidden = self.backbone(torch.cat(parts, dim=1), mask=mask, rope=rope)
        return hidden[:, -f * n :]

    def loss(
        self,
        latents: torch.Tensor,
        cond: torch.Tensor,
        generator: torch.Generator | None = None,
        num_long: int = 0,
    ) -> torch.Tensor:
        """Per-frame flow-matching loss on a batch of clips (B, F, N, d), the first ``num_long`` frames given
        compressed (clean, no loss); the rest noisy with per-frame t and clean context as ``context_mode``
        says (see the module docstring)."""
        self.check_latents(latents)
        long, x = latents[:, :num_long], latents[:, num_long:]
        b, f = x.shape[:2]
        device = x.device
        t = torch.sigmoid(draws.randn((b, f), generator, device))
        stochastic = self.config.context_mode == "stochastic"
        if stochastic:  # drawn before the noise, as the first shipped recipe did (its runs stay reproducible)
            clean = draws.rand((b, f), generator, device) < self.config.clean_context_ratio
        noise = draws.randn(x.shape, generator, device, x.dtype)
        x_t = (1 - t[..., None, None]) * x + t[..., None, None] * noise
        if not stochastic:  # clean_copy
            z = self.clean_copy_hidden(cond, long, x, x_t, t)
            return F.mse_loss(self.velocity(x_t, t, z), noise - x)
        x_t = torch.where(clean[..., None, None], x, x_t)
        z = self.sequence_hidden(cond, long, x_t, t, clean)
        error = F.mse_loss(self.velocity(x_t, t, z), noise - x, reduction="none").mean(-1)  # (B, F, N)
        weight = (~clean).float()[..., None].expand_as(error)
        return (error * weight).sum() / weight.sum().clamp(min=1.0)

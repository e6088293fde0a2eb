"""Next-frame video sampling (FAR): one frame at a time, Euler steps of the flow, a frame-wise KV cache.

For frame f: noise (per video, from its own generator, times the temperature) is integrated from t = 1 to 0
in ``num_inference_steps`` Euler steps; each step is one backbone pass over the frame's N noisy tokens
(bidirectional among themselves, seeing every cached context token) and the flow head. Guidance mixes the
velocities of the conditional and null-condition rows, v_u + s (v_c - v_u). When the frame is done it is
written once, clean, into the cache: its keys/values are then reused by every later frame.

Long/short-term context (``short_frames`` S > 0): the cache holds the prefix, a growing region of
compressed frames (N / pool^2 tokens each) and a ring of S + 1 full-resolution slots (S context frames and
the frame being made). When a frame leaves the window it is written compressed, then its ring slot is
reused: memory grows by N / pool^2 tokens per frame instead of N.

``use_cache=False`` recomputes [prefix, context, noisy frame] at every Euler step: the speed baseline, and
(without compression) a check that the cache changes nothing.
"""

from __future__ import annotations

import time

import torch

from arstudio.decoding.autoregressive import DecodeResult, with_unconditional
from arstudio.decoding.continuous import per_row_randn
from arstudio.decoding.random import as_device_random
from arstudio.generators.video import PREFIX_FRAME, block_mask, frame_coords, prefix_coords

EMPTY = -2  # owner of a cache slot nothing was written to (never visible)
PREFIX, LONG, FULL = 0, 1, 2


class FrameSlots:
    """Cache layout: which slot range holds which frame, at which resolution.

    The tables live on the device and are written by slice from host integers (which frame goes where is
    host arithmetic), so building a frame's mask reads nothing back; ``used`` (host) is how far slots are
    claimed, the length eager steps attend over.
    """

    def __init__(self, config, prefix_len: int, num_frames: int, short_frames: int, device=None):
        self.n_full, self.n_long = config.frame_tokens, config.long_tokens
        self.prefix_len, self.short = prefix_len, short_frames
        self.compress = short_frames > 0 and num_frames > short_frames + 1
        self.long_capacity = (num_frames - short_frames - 1) * self.n_long if self.compress else 0
        ring = short_frames + 1 if self.compress else num_frames
        length = prefix_len + self.long_capacity + ring * self.n_full
        self.owner = torch.full((length,), EMPTY, device=device)  # frame index held by each slot
        self.kind = torch.full((length,), FULL, device=device)
        self.owner[:prefix_len].fill_(PREFIX_FRAME)
        self.kind[:prefix_len].fill_(PREFIX)
        self.used = prefix_len

    def __len__(self) -> int:
        return self.owner.shape[0]

    def full_start(self, frame: int) -> int:
        ring_index = frame % (self.short + 1) if self.compress else frame
        return self.prefix_len + self.long_capacity + ring_index * self.n_full

    def long_start(self, frame: int) -> int:
        return self.prefix_len + frame * self.n_long

    def leaving(self, frame: int) -> int | None:
        """The frame that leaves the full-resolution window when ``frame`` starts (None if none)."""
        old = frame - self.short - 1
        return old if self.compress and old >= 0 else None

    def claim(self, start: int, count: int, frame: int, kind: int) -> torch.Tensor:
        """Mark slots [start, start + count) as ``frame``'s; returns their positions (count,) on the device."""
        self.owner[start : start + count].fill_(frame)
        self.kind[start : start + count].fill_(kind)
        self.used = max(self.used, start + count)
        return torch.arange(start, start + count, device=self.owner.device)

    def mask(self, frame: int, kind: int, decay: float) -> torch.Tensor:
        """(1, 1, T, len(self)) for a block of ``frame`` written as ``kind``: it sees slots of frames <= its
        own (a compressed frame only the prefix and compressed frames, as in training). Over every slot (a
        static shape for compiled steps); eager steps read its first ``used`` columns."""
        owner = self.owner
        if kind == LONG:
            owner = torch.where(self.kind == FULL, EMPTY, owner)
        count = {PREFIX: self.prefix_len, LONG: self.n_long, FULL: self.n_full}[kind]
        return block_mask(torch.full((count,), frame, device=owner.device), owner, decay)


def rope_tables(model, num_frames: int, pool: int, device) -> torch.Tensor:
    """(num_frames, tokens, pairs, 2) RoPE rows of every frame at one resolution, made once per call on the
    host (frame by frame, as the tables were always made) and sent to the device in one copy."""
    grid = model.config.backbone.grid_size
    return torch.stack([model.rope_rows(frame_coords(f, grid, pool)) for f in range(num_frames)]).to(device)


def check_context(model, context: torch.Tensor | None, batch: int, num_frames: int) -> int:
    if context is None:
        return 0
    model.check_latents(context)
    if context.shape[0] != batch or not 1 <= context.shape[1] < num_frames + 1:
        raise ValueError(
            f"context latents {tuple(context.shape)} must hold 1..{num_frames} frames for each of {batch} videos"
        )
    return context.shape[1]


@torch.no_grad()
def sample_video(
    model,
    cond: torch.Tensor,
    generators,
    num_frames: int,
    context: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    temperature: float = 1.0,
    num_inference_steps: int = 20,
    temporal_decay: float = 0.0,
    short_frames: int | None = None,
    use_cache: bool = True,
    callback=None,
) -> DecodeResult:
    """Sample clips (B, num_frames, N, d) of latents from a ``VideoGenerator`` for labels ``cond`` (B,).

    ``context`` (B, C, N, d): the first C frames are given (video prediction) and returned unchanged.
    ``short_frames``: full-resolution window (None: the model's; 0: never compress).
    ``callback(frame_index, num_frames, latents_so_far (B, frame_index + 1, N, d))`` after each frame;
    returning False stops early.
    """
    cfg = model.config
    batch, device = cond.shape[0], cond.device
    if len(generators) != batch:
        raise ValueError(f"got {len(generators)} generators for a batch of {batch}")
    num_given = check_context(model, context, batch, num_frames)
    rng = as_device_random(generators, device)
    short = cfg.short_frames if short_frames is None else short_frames
    if short < 0:
        raise ValueError(f"short_frames={short} must be >= 0 (0: keep every frame at full resolution)")
    guided = guidance_scale != 1.0
    rows_cond = with_unconditional(model, cond, None) if guided else cond
    rows = rows_cond.shape[0]
    n, d = cfg.frame_tokens, cfg.token_dim
    dtype = model.tok_embeddings.weight.dtype
    latents = torch.zeros(batch, num_frames, n, d, dtype=dtype, device=device)
    times = torch.linspace(1.0, 0.0, num_inference_steps + 1).tolist()
    slots = FrameSlots(cfg, model.prefix_len, num_frames, short, device) if use_cache else None
    if use_cache:
        rope = {
            FULL: rope_tables(model, num_frames, 1, device),
            PREFIX: model.rope_rows(prefix_coords(model.prefix_len)).to(device),
        }
        if slots.compress:
            rope[LONG] = rope_tables(model, num_frames, cfg.long_pool, device)
    forwards, start = 0, time.perf_counter()

    def both(x: torch.Tensor) -> torch.Tensor:
        return x.repeat(rows // batch, *([1] * (x.ndim - 1)))

    def block_layout(frame: int, kind: int, count: int):
        """(cache positions, mask, RoPE rows, slots in use) of a ``count``-token block of ``frame`` written as
        ``kind``; claims its slots. A frame's Euler steps and its final clean write share one layout. Nothing
        in it is read back or copied from the host."""
        if kind == PREFIX:
            first, rows_rope = 0, rope[PREFIX]
        else:
            first = slots.long_start(frame) if kind == LONG else slots.full_start(frame)
            rows_rope = rope[kind][frame]
        positions = slots.claim(first, count, frame, kind)
        return positions, slots.mask(frame, kind, temporal_decay), rows_rope, slots.used

    def write_block(inputs, frame: int, kind: int, layout=None) -> torch.Tensor:
        nonlocal forwards
        forwards += 1
        positions, mask, rows_rope, used = layout or block_layout(frame, kind, inputs.shape[1])
        return model.backbone.step(inputs, positions, mask[..., :used], rows_rope)

    def velocity(x: torch.Tensor, t: float, frame: int, layout) -> torch.Tensor:
        """x (B, N, d) noisy frame at time t -> guided velocity (B, N, d)."""
        nonlocal forwards
        forwards += 1
        x_rows, t_rows = both(x)[:, None], torch.full((rows, 1), t, device=device, dtype=dtype)
        if use_cache:
            positions, mask, rows_rope, used = layout
            # kv_len: eager steps attend over the claimed slots only; a compiled step drops it (static shapes).
            v = model.step(x_rows, t_rows, positions, mask, rows_rope, kv_len=used)
        else:
            keep = frame if not short or frame <= short else short  # full-resolution context frames
            full = torch.cat([both(latents[:, frame - keep : frame]), x_rows], dim=1)
            clean = torch.zeros(rows, keep + 1, dtype=torch.bool, device=device)
            clean[:, :keep] = True
            t_all = torch.full((rows, keep + 1), t, device=device, dtype=dtype)
            long = both(latents[:, : frame - keep])
            z = model.sequence_hidden(rows_cond, long, full, t_all, clean, temporal_decay)[:, -n:]
            v = model.velocity(x_rows, t_rows, z)[:, 0]  # (rows, N, d)
        return v[batch:] + guidance_scale * (v[:batch] - v[batch:]) if guided else v

    cache_bytes = 0
    try:  # the cache is set up inside: any failure from here on still frees it
        if use_cache:
            model.backbone.setup_cache(rows, device=device, length=len(slots))
            cache_bytes = sum(c.k.nbytes + c.v.nbytes for c in model.backbone.caches)
            write_block(model.cls_embedding(rows_cond), PREFIX_FRAME, PREFIX)
        for frame in range(num_frames):
            if use_cache and slots.leaving(frame) is not None:
                old = slots.leaving(frame)
                write_block(model.long_inputs(both(latents[:, old : old + 1])), old, LONG)
            layout = block_layout(frame, FULL, n) if use_cache else None  # the same for all Euler steps
            if frame < num_given:
                latents[:, frame] = context[:, frame].to(dtype)
            else:
                x = temperature * per_row_randn(rng, (n, d), latents)
                for t, t_next in zip(times[:-1], times[1:], strict=True):
                    x = x + (t_next - t) * velocity(x, t, frame, layout)
                latents[:, frame] = x
            if use_cache and frame + 1 < num_frames:  # store the finished frame once, clean
                write_block(
                    model.frame_inputs(both(latents[:, frame : frame + 1]), None), frame, FULL, layout
                )
            if callback is not None and callback(frame, num_frames, latents[:, : frame + 1]) is False:
                latents = latents[:, : frame + 1]
                break
    finally:
        model.backbone.reset_cache()
    stats = {
        "forwards": forwards,
        "decode_seconds": time.perf_counter() - start,
        "cache_slots": len(slots) if slots is not None else 0,
        "cache_bytes": cache_bytes,  # keys + values of every layer, both CFG rows
        "context_frames": num_given,
    }
    return DecodeResult(latents, stats)

"""The shared Llama-style backbone: the only attention and KV-cache code in arstudio.

It maps input embeddings (condition prefix + token embeddings) to hidden states. What the tokens *are*
(ids or vectors) and what the head predicts (logits or a per-token diffusion) live outside, in
``generators/image.py`` and ``generators/heads.py``.

Blocks follow LlamaGen/Llama: pre-norm RMSNorm, fused ``wqkv`` with optional grouped-query attention,
SwiGLU feed-forward, 2D RoPE, attention through ``scaled_dot_product_attention``.

Video (``generators/video.py``) uses the same blocks with its own mask (block-causal over frames, plus an
optional temporal-decay bias) and its own 3D RoPE rows, passed to ``forward`` / ``step``; its cache slots
need not be sequence positions (rotations are applied before keys are cached, so a slot is just storage).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from arstudio.generators.rope import apply_rope, rope_2d_table


@dataclass(frozen=True)
class BackboneConfig:
    TRAINING_ONLY: ClassVar[tuple[str, ...]] = ("dropout",)  # a loaded model may differ here (see loading.py)

    dim: int = 256
    n_layer: int = 6
    n_head: int = 8
    n_kv_head: int | None = None  # None: as many as n_head; fewer: grouped-query attention
    multiple_of: int = 64  # SwiGLU hidden size is rounded up to a multiple of this (LlamaGen: 256)
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    grid_size: int = 8  # tokens per side of the image grid
    prefix_len: int = 1  # condition tokens before the image tokens
    zero_prefix_rope: bool = False  # LlamaGen checkpoint quirk, see rope.py
    grid_prefix: bool = (
        False  # the prefix ends with grid_size**2 control tokens (prefill control), see rope.py
    )
    dropout: float = 0.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return -(-hidden // self.multiple_of) * self.multiple_of

    @property
    def max_len(self) -> int:
        return self.prefix_len + self.grid_size**2


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 even under bf16 (the mean square of large activations overflows otherwise);
        # the fused kernel matters on the decode path, where this runs 2 x n_layer + 1 times per token.
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return normed.type_as(x) * self.weight


class KVCache(nn.Module):
    """Preallocated keys/values (B, kv_heads, max_len, head_dim): no reallocation while decoding."""

    def __init__(self, batch_size: int, kv_heads: int, max_len: int, head_dim: int, device, dtype):
        super().__init__()
        shape = (batch_size, kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        # Tell torch.compile the caches keep their address (CUDA graphs then capture writes into them).
        torch._dynamo.mark_static_address(self.k)
        torch._dynamo.mark_static_address(self.v)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, kv_heads, T, head_dim) at positions ``input_pos``: (T,) positions shared by all rows,
        or (B, T) when every row has its own (speculative decoding).

        Written by index from a device tensor, never by a host-side slice: the position is not read back
        (no sync on a GPU) and the step keeps the same shapes at every position (CUDA-graph capturable).
        Returns the whole caches.
        """
        if input_pos.ndim == 1:
            self.k.index_copy_(2, input_pos, k)
            self.v.index_copy_(2, input_pos, v)
        else:
            index = input_pos[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            self.k.scatter_(2, index, k)
            self.v.scatter_(2, index, v)
        return self.k, self.v


ATTENTION_BACKENDS = ("sdpa", "xformers")


def check_attention_backend(name, device) -> str:
    """``name`` if it can run on ``device``; else a one-line error naming it and what is allowed."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend={name!r} is not allowed: use one of {ATTENTION_BACKENDS}")
    if name == "xformers":
        if torch.device(device).type != "cuda":
            raise ValueError(
                f"attention_backend='xformers' needs a CUDA device (it has no CPU kernels), got {device}; "
                "use 'sdpa'"
            )
        try:
            import xformers.ops  # noqa: F401
        except ImportError as error:
            raise ValueError(
                "attention_backend='xformers' needs the xformers package: pip install 'arstudio[gpu]', "
                f"or use 'sdpa' ({error})"
            ) from None
    return name


def _xformers_attention(q, k, v, mask):
    """xformers' memory-efficient attention on (B, heads, T, head_dim) tensors; ``mask`` as for SDPA."""
    import xformers.ops as xops

    b, h, t, _ = q.shape
    bias = None
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
        # xformers wants the bias' last dimension 8-aligned in memory: allocate padded, use a view.
        keys = k.shape[2]
        padded = torch.empty(b, h, t, -(-keys // 8) * 8, dtype=q.dtype, device=q.device)
        bias = padded[..., :keys]
        bias.copy_(mask.expand(b, h, t, keys))
    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias
    )  # (B, T, heads, head_dim)
    return out.transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        qkv_dim = (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, qkv_dim, bias=False)
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.dim, bias=False)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.backend = "sdpa"  # or "xformers": set through Backbone.set_attention_backend

    def forward(self, x, rope, cache: KVCache | None = None, input_pos=None, mask=None):
        cfg = self.cfg
        b, t, _ = x.shape
        q_size, kv_size = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        q, k, v = self.wqkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = apply_rope(q.view(b, t, cfg.n_head, cfg.head_dim), rope)
        k = apply_rope(k.view(b, t, cfg.kv_heads, cfg.head_dim), rope)
        v = v.view(b, t, cfg.kv_heads, cfg.head_dim)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (B, heads, T, head_dim)
        if cache is not None:
            k, v = cache.update(input_pos, k, v)  # (B, kv_heads, cache length, head_dim)
            # Read at the mask's length (static for a call): the step's shapes never depend on the position.
            k, v = k[:, :, : mask.shape[-1]], v[:, :, : mask.shape[-1]]
        if cfg.kv_heads != cfg.n_head:
            repeat = cfg.n_head // cfg.kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        if self.backend == "xformers":
            if mask is None:  # training: plain causal
                mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            out = _xformers_attention(q, k, v, mask)
        elif mask is None:  # training: plain causal
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(b, t, q_size)))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)
        self.ffn_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x, rope, cache=None, input_pos=None, mask=None):
        h = x + self.attention(self.attention_norm(x), rope, cache, input_pos, mask)
        return h + self.feed_forward(self.ffn_norm(h))


_CACHE_POOL_SIZE = 4  # cache shapes kept per backbone (batch size x length x device x dtype)


def _addition(inject, x: torch.Tensor) -> torch.Tensor:
    """What ``inject`` adds to a block's input x: a tensor as it is, a function applied to x."""
    return inject(x) if callable(inject) else inject


class Backbone(nn.Module):
    """Causal transformer over embeddings (B, L, dim) laid out as [prefix, image tokens in raster order]."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        if cfg.dim % cfg.n_head or cfg.n_head % cfg.kv_heads:
            raise ValueError(
                f"dim {cfg.dim} must divide by n_head {cfg.n_head}, and n_head by n_kv_head {cfg.kv_heads}"
            )
        self.cfg = cfg
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        table = rope_2d_table(
            cfg.grid_size, cfg.head_dim, cfg.prefix_len, cfg.rope_base, cfg.zero_prefix_rope, cfg.grid_prefix
        )
        self.register_buffer("rope", table, persistent=False)
        self.caches: list[KVCache] | None = None
        self._cache_pool: dict[tuple, list[KVCache]] = {}

    def setup_cache(
        self, batch_size: int, device=None, dtype=None, extra: int = 0, length: int | None = None
    ) -> None:
        """Give every layer a static cache for ``batch_size`` sequences of up to ``max_len`` tokens.

        ``extra`` adds room past the end: speculative decoding verifies drafts that may run beyond the last
        image token (they are discarded, but they are written before they are judged). ``length`` replaces
        ``max_len`` (video: the slots its frame layout needs).

        Caches are kept between calls (``reset_cache`` only detaches them) and reused for the same shape,
        device and dtype: a compiled or graph-captured step then sees the same tensor addresses every call.
        Stale entries need no clearing: a query only sees positions its mask allows, all written this call.
        """
        ref = self.norm.weight
        cfg = self.cfg
        length = (cfg.max_len if length is None else length) + extra
        key = (batch_size, length, torch.device(device or ref.device), dtype or ref.dtype)
        if key not in self._cache_pool:
            while len(self._cache_pool) >= _CACHE_POOL_SIZE:  # oldest first: dicts keep insertion order
                self._cache_pool.pop(next(iter(self._cache_pool)))
            self._cache_pool[key] = [
                KVCache(batch_size, cfg.kv_heads, length, cfg.head_dim, key[2], key[3]) for _ in self.layers
            ]
        self.caches = self._cache_pool[key]

    def reset_cache(self) -> None:
        """Detach the caches after a call; their memory stays pooled for the next call of the same shape."""
        self.caches = None

    def release_cache(self) -> None:
        """Free every pooled cache (e.g. before moving the model to another device)."""
        self.caches = None
        self._cache_pool.clear()

    def move_slots(self, source: torch.Tensor, target: torch.Tensor) -> None:
        """Copy every layer's cached keys/values from slots ``source`` to slots ``target`` (both (B, T), one
        row per cache row): a verified draft tree's accepted path moves to its sequence positions. All
        sources are read before any target is written, so the two may overlap."""
        k = self.caches[0].k  # every layer's caches have this shape
        expand = (-1, k.shape[1], -1, k.shape[3])
        source, target = source[:, None, :, None].expand(*expand), target[:, None, :, None].expand(*expand)
        for cache in self.caches:
            for buffer in (cache.k, cache.v):
                buffer.scatter_(2, target, buffer.gather(2, source))

    def set_attention_backend(self, name: str) -> None:
        """ "sdpa" (default) or "xformers" (CUDA only, when installed); checked against the model's device."""
        check_attention_backend(name, self.norm.weight.device)
        for layer in self.layers:
            layer.attention.backend = name

    def forward(
        self, x: torch.Tensor, mask=None, rope=None, inject: dict[int, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Training / full pass without cache: x (B, L, dim) -> hidden (B, L, dim).

        Default: causal attention and the 2D table's first L rotations. ``mask`` (bool visibility or float
        bias, broadcastable to (B, heads, L, L)) and ``rope`` rows (L, head_dim // 2, 2) replace them.
        ``inject``: {block index: (B, L, dim)} added to that block's input (ControlAR's control fusion), or a
        function of the block's input x returning what to add (additions relative to the stream's scale).
        """
        rope = self.rope[: x.shape[1]] if rope is None else rope
        for index, layer in enumerate(self.layers):
            if inject and index in inject:
                x = x + _addition(inject[index], x)
            x = layer(x, rope, mask=mask)
        return self.norm(x)

    def step(
        self,
        x: torch.Tensor,
        input_pos: torch.Tensor,
        mask=None,
        rope=None,
        inject: dict[int, torch.Tensor] | None = None,
        kv_len: int | None = None,
        rope_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cached pass: x (B, T, dim) at increasing sequence positions -> hidden (B, T, dim).

        ``input_pos`` is (T,) when all rows share positions (prefill is a step over 0..P-1; plain decoding
        steps one position), or (B, T) when each row is at its own place (batched speculative decoding,
        where rows accept different numbers of drafts). Keys past a row's position are never seen, so a
        rejected draft left in the cache is harmless: it is overwritten before it could be attended to.

        ``mask`` (bool or float, (1 or B, 1, T, kv_len)) and ``rope`` rows (T, head_dim // 2, 2) replace the
        causal-by-position defaults: video writes a frame's slots and says itself which slots it sees.
        ``inject`` as in ``forward``, for these T positions.

        ``kv_len`` (eager callers that know it on the host): attend over the first kv_len cache slots only,
        an eager-CPU saving (attention over the whole cache cost ~8% of a step at 64 tokens). Compiled
        steps never get it (``CompiledCall`` drops it): their shapes must not change with the position.

        ``rope_pos`` (shaped like ``input_pos``): the sequence positions to rotate by when the cache slots
        are not them. Tree verification (``decoding/tree.py``) writes a draft tree's nodes to consecutive
        slots while siblings share a position, with a ``mask`` that shows each node its ancestors.
        """
        if self.caches is None or self.caches[0].k.shape[0] != x.shape[0]:
            raise RuntimeError("call setup_cache(batch_size) before step(); the cache batch must match x")
        if mask is None:
            # Each query sees the cached keys at positions <= its own, over the cache's whole (static)
            # length: an additive mask (1 or B, 1, T, cache length) made on the device once per step (a
            # boolean one would be converted to this by every layer's attention).
            keys = torch.arange(kv_len or self.caches[0].k.shape[2], device=x.device)
            mask = torch.where(keys <= input_pos[..., None], 0.0, float("-inf")).to(x.dtype)  # ([B,] T, len)
            mask = mask[:, None] if input_pos.ndim == 2 else mask[None, None]
        if rope is None:
            # Positions past the image (speculative overshoot, discarded anyway) reuse the last rotation.
            at = input_pos if rope_pos is None else rope_pos
            rope = self.rope[at.clamp(max=self.rope.shape[0] - 1)]
        for index, (layer, cache) in enumerate(zip(self.layers, self.caches, strict=True)):
            if inject and index in inject:
                x = x + _addition(inject[index], x)
            x = layer(x, rope, cache, input_pos, mask)
        return self.norm(x)

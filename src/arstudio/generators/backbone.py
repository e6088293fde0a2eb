"""The generators' backbone: the transformer blocks of ``nn/transformer.py`` plus the KV cache and step.

It maps input embeddings (condition prefix + token embeddings) to hidden states. What the tokens *are*
(ids or vectors) and what the head predicts (logits or a per-token diffusion) live outside, in
``generators/image.py`` and ``generators/heads.py``. ``BackboneConfig`` (defined with the blocks) is
re-exported here, where generators look for it.

Video (``generators/video.py``) uses the same blocks with its own mask (block-causal over frames, plus an
optional temporal-decay bias) and its own 3D RoPE rows, passed to ``forward`` / ``step``; its cache slots
need not be sequence positions (rotations are applied before keys are cached, so a slot is just storage).
"""

from __future__ import annotations

import torch
from torch import nn

from arstudio.nn.rope import rope_2d_table
from arstudio.nn.transformer import BackboneConfig, RMSNorm, TransformerBlock, check_attention_backend

__all__ = ["Backbone", "BackboneConfig", "KVCache", "check_attention_backend"]


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
        if kv_len is not None:  # a caller's reach past the cache (a draft model's +1 slot) is the cache
            kv_len = min(kv_len, self.caches[0].k.shape[2])
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

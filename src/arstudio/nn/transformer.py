"""The transformer layers every model shares: the only attention code in arstudio.

Llama-style blocks (LlamaGen's layout): pre-norm RMSNorm, fused ``wqkv`` with optional grouped-query attention,
SwiGLU feed-forward, RoPE (``nn/rope.py``), attention through ``scaled_dot_product_attention`` or xformers.
Generators build their ``Backbone`` (``generators/backbone.py``: the KV cache, prefill and step) from these
blocks; the causal video tokenizer (``tokenizers/causal_video.py``) uses the same blocks without a cache.
Parameter names (``attention.wqkv``, ``feed_forward.w1``, ...) are the checkpoints' keys: keep them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from arstudio.nn.rope import apply_rope


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

    def forward(self, x, rope, cache=None, input_pos=None, mask=None):
        """``cache``: a ``generators/backbone.py: KVCache`` (its ``update`` writes k, v at ``input_pos`` and
        returns the whole caches), or None for a pass without cache."""
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


class ViTAttention(nn.Module):
    """Bidirectional multi-head attention with a biased fused ``qkv`` and ``proj`` (timm's ``Attention``)."""

    def __init__(self, dim: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, dim = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.n_head, dim // self.n_head).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(*qkv.unbind(0))  # (B, heads, T, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, t, dim))


class ViTBlock(nn.Module):
    """A pre-norm ViT block (timm's ``Block`` as MAE and MAR use it): LayerNorm, bidirectional attention, LayerNorm,
    GELU MLP, no RoPE (the model adds learned positions). Parameter names are timm's (``norm1``, ``attn.qkv``,
    ``mlp.fc1``, ...), so MAR's checkpoints load by name."""

    def __init__(self, dim: int, n_head: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = ViTAttention(dim, n_head)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, hidden))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

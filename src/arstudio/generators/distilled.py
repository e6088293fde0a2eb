"""The Distilled Decoding model (DD1's ``DDTransformer`` layout, also DD2's one-step generator).

It reads a whole trajectory state X_t at once: positions < t hold codebook vectors of known tokens (data),
positions >= t the original noise vectors, each tagged by a data/noise flag embedding. The row that reads
position i outputs token i itself (not i + 1 as in the teacher), so one causal forward maps X_t to every
remaining token: logits (argmax) for the first ``logits_tokens`` positions, where a wrong code changes the
layout of the whole image, and a regressed d-dim vector for the rest, fed to the tokenizer's decoder as is.

Initialised from the teacher: condition prefix, backbone and logits head are copied; the input projection
(d -> dim) is the least-squares map from the codebook vectors to the teacher's token embeddings, so a data
position starts out embedded as the teacher embeds that token. The config carries fingerprints of the
teacher and of the tokenizer's codebook; loading against another teacher or tokenizer is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from arstudio.generators.backbone import BackboneConfig
from arstudio.generators.drafter import target_fingerprint
from arstudio.generators.heads import CategoricalHead
from arstudio.generators.image import PrefixARGenerator, check_condition_config
from arstudio.generators.pairing import stored_float32


def codebook_fingerprint(tokenizer) -> str:
    """A short hash of the tokenizer's stored codebook parameter: its shape and its values rounded to bf16.

    Hashed from a float32 CPU copy of the parameter, never from vectors computed on the model's device (CUDA
    normalises with other rounding than the CPU, which refused valid pairings on a GPU). The bf16 rounding makes
    fp32 and bf16 copies agree, and fp16 copies of float16-stored weights (the shipped ones).
    """
    codes = stored_float32(tokenizer.codebook_parameter()).to(torch.bfloat16)
    digest = hashlib.sha256(f"{tuple(codes.shape)};".encode())
    digest.update(codes.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


VECTOR_HEADS = ("adaln", "pixart")  # ours, and DD1's released FinalLayer (PixArtVectorHead)


@dataclass(frozen=True)
class DDConfig:
    vocab_size: int = 512
    num_classes: int = 24
    token_dim: int = 8  # codebook vector size: what noise and data positions hold
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    condition: str = "class"
    text_dim: int = 0
    text_positions: bool = False
    class_dropout_prob: float = 0.0  # no CFG at DD inference: the teacher's guidance is distilled in
    initializer_range: float = 0.02
    logits_tokens: int = 20  # positions < this come from the logits head (argmax), the rest regressed
    two_step_start: int = 20  # the second trajectory state trained: X_t with t tokens known
    method: str = "dd1"  # "dd1" (trained on the flow map's pairs) or "dd2" (conditional score distillation)
    teacher_fingerprint: str = ""
    tokenizer_fingerprint: str = ""
    # DD1's released models (microsoft/distilled_decoding, ``convert/distilled_decoding.py``) differ in three
    # details, kept as options so their checkpoints load as they are:
    vector_head: str = "adaln"  # "adaln" (ours) or "pixart": DD1's FinalLayer, see PixArtVectorHead
    flag_prefix: bool = False  # DD1's release adds the "data" flag embedding to the condition prefix too
    hybrid_logits_tokens: int = 0  # the teacher-involved sampler's split (DD1-L: 180); 0: logits_tokens

    def __post_init__(self):
        check_condition_config(self)
        n = self.backbone.grid_size**2
        if not 0 <= self.logits_tokens <= n or not 0 < self.two_step_start < n:
            raise ValueError(
                f"logits_tokens={self.logits_tokens} must be in [0, {n}] and two_step_start="
                f"{self.two_step_start} in [1, {n - 1}]"
            )
        if self.method not in ("dd1", "dd2"):
            raise ValueError(f"method={self.method!r} is not allowed: use 'dd1' or 'dd2'")
        if self.vector_head not in VECTOR_HEADS:
            raise ValueError(f"vector_head={self.vector_head!r} is not allowed: use one of {VECTOR_HEADS}")
        if not 0 <= self.hybrid_logits_tokens <= n:
            raise ValueError(f"hybrid_logits_tokens={self.hybrid_logits_tokens} must be in [0, {n}]")

    @classmethod
    def for_teacher(cls, teacher, tokenizer, **overrides) -> DDConfig:
        """The teacher's trunk shape and fingerprints; the logits/two-step split defaults to 5/16 of the
        tokens (DD1's 80 of 256 for LlamaGen-B)."""
        c = teacher.config
        split = max(1, 5 * c.backbone.grid_size**2 // 16)
        overrides = {"logits_tokens": split, "two_step_start": split, **overrides}
        if getattr(teacher, "token_kind", "discrete") != "discrete":
            raise ValueError("distilled decoding needs a discrete (codebook) teacher")
        return cls(
            vocab_size=c.vocab_size,
            num_classes=c.num_classes,
            token_dim=tokenizer.codebook_vectors().shape[1],
            backbone=c.backbone,
            condition=c.condition,
            text_dim=c.text_dim,
            text_positions=c.text_positions,
            initializer_range=c.initializer_range,
            teacher_fingerprint=target_fingerprint(teacher),
            tokenizer_fingerprint=codebook_fingerprint(tokenizer),
            **overrides,
        )


class VectorHead(nn.Module):
    """The continuous output: PixArt-style final layer, hidden (B, N, dim) shifted/scaled by the condition
    (mean of the prefix embeddings (B, dim)) -> token vectors (B, N, d). Starts at zero output."""

    def __init__(self, dim: int, token_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.output = nn.Linear(dim, token_dim)
        for layer in (self.modulation[1], self.output):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, hidden: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(cond)[:, None].chunk(2, dim=-1)
        return self.output(self.norm(hidden) * (1 + scale) + shift).float()


class PixArtVectorHead(nn.Module):
    """DD1's released continuous output (``FinalLayer`` in its ``dd.py``, from PixArt): the hidden state *before*
    the final RMSNorm, layer-normed, shifted by ``table[0] + cond`` and scaled by ``1 + table[1] + cond`` (the
    condition embedding added as is: no SiLU/linear modulation), then projected to the token vector."""

    def __init__(self, dim: int, token_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.output = nn.Linear(dim, token_dim)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)

    def forward(self, hidden: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + cond[:, None]).chunk(2, dim=1)  # (B, 1, dim) each
        return self.output(self.norm(hidden) * (1 + scale) + shift).float()


class DDGenerator(PrefixARGenerator):
    config_class = DDConfig
    token_kind = "distilled"

    def __init__(self, config: DDConfig):
        super().__init__()
        self.config = config
        dim = config.backbone.dim
        self._build_trunk(config, lambda: nn.Linear(config.token_dim, dim))
        self.flag_embedding = nn.Embedding(2, dim)  # 0: noise position, 1: data position
        self.head = CategoricalHead(dim, config.vocab_size)
        head_class = PixArtVectorHead if config.vector_head == "pixart" else VectorHead
        self.vector_head = head_class(dim, config.token_dim)
        self.apply(self._init_weights)
        nn.init.zeros_(self.head.output.weight)
        if config.vector_head == "adaln":
            for layer in (self.vector_head.modulation[1], self.vector_head.output):
                nn.init.zeros_(layer.weight)

    @classmethod
    def from_teacher(cls, teacher, tokenizer, **overrides) -> DDGenerator:
        """A DD model whose shared parts are copies of ``teacher``'s (see the module docstring), in float32 on
        the teacher's device."""
        model = cls(DDConfig.for_teacher(teacher, tokenizer, **overrides))
        for part in ("cls_embedding", "backbone", "head"):
            getattr(model, part).load_state_dict(getattr(teacher, part).state_dict())
        # Solved on the CPU in float32 whatever the teacher's device and dtype (lstsq wants float32 or wider,
        # and the model is built on the CPU); the solution is copied into the model below.
        codes = stored_float32(tokenizer.codebook_vectors())  # (V, d)
        embeddings = stored_float32(teacher.tok_embeddings.weight)  # (V, dim)
        ones = torch.ones(codes.shape[0], 1)
        # [codes, 1] @ [W^T; b] ≈ embeddings in the least-squares sense
        solution = torch.linalg.lstsq(torch.cat([codes, ones], 1), embeddings).solution  # (d + 1, dim)
        with torch.no_grad():
            model.tok_embeddings.weight.copy_(solution[:-1].T)
            model.tok_embeddings.bias.copy_(solution[-1])
        return model.to(teacher.tok_embeddings.weight.device)

    def check_pairing(self, teacher, tokenizer) -> None:
        """Refuse a teacher or tokenizer other than the ones this model was distilled from."""
        for what, expected, found in (
            ("teacher", self.config.teacher_fingerprint, target_fingerprint(teacher)),
            ("tokenizer", self.config.tokenizer_fingerprint, codebook_fingerprint(tokenizer)),
        ):
            if expected != found:
                raise ValueError(
                    f"this {self.config.method} model was distilled from {what} {expected!r}, but the "
                    f"{what} here has fingerprint {found!r}; distil one for it with `arstudio train distill`"
                )

    def forward(
        self,
        state: torch.Tensor,
        known: int | torch.Tensor,
        cond: torch.Tensor,
        split: bool = False,
        logits_tokens: int | None = None,
    ):
        """state (B, N, d): X_t, data vectors then noise; ``known``: t, an int or per row (B,) -> (logits
        (B, N, vocab), vectors (B, N, d)), row i predicting token i.

        ``split=True`` (sampling) runs each head only where the sampler reads it: logits for positions
        < ``logits_tokens`` (B, logits_tokens, vocab), vectors for the rest (B, N - logits_tokens, d). Training
        uses both heads everywhere (the other head is an auxiliary loss there); at batch 1 the unused rows
        cost about a tenth of a millisecond, a few percent of the one-step sampler. ``logits_tokens`` moves
        that split (DD1's teacher-involved sampler uses a later one); default the config's.
        """
        batch, n, d = state.shape
        if (n, d) != (self.seq_len, self.config.token_dim):
            raise ValueError(
                f"state must be (B, {self.seq_len}, {self.config.token_dim}) (tokens x codebook dims), got "
                f"{tuple(state.shape)}"
            )
        known = torch.as_tensor(known, device=state.device).expand(batch)
        flags = (torch.arange(n, device=state.device)[None] < known[:, None]).long()  # (B, N)
        prefix = self.cls_embedding(cond)  # (B, P, dim)
        tokens = self.tok_embeddings(state.to(prefix.dtype)) + self.flag_embedding(flags)
        given = prefix + self.flag_embedding.weight[1] if self.config.flag_prefix else prefix
        hidden, head_input = self._hidden(torch.cat([given, tokens], dim=1))  # (B, N, dim) each
        if not split:
            return self.head(hidden), self.vector_head(head_input, prefix.mean(dim=1))
        early = self.config.logits_tokens if logits_tokens is None else logits_tokens
        return self.head(hidden[:, :early]), self.vector_head(head_input[:, early:], prefix.mean(dim=1))

    def _hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone on (B, P + N, dim) -> the token rows' final hidden states and what the vector head reads:
        the same states, or (``pixart``) the states before the final norm."""
        if self.config.vector_head == "adaln":
            hidden = self.backbone(x)[:, self.prefix_len :]
            return hidden, hidden
        backbone = self.backbone
        rope = backbone.rope[: x.shape[1]]
        for layer in backbone.layers:
            x = layer(x, rope)
        x = x[:, self.prefix_len :]
        return backbone.norm(x), x


def nearest_codes(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """vectors (..., d) -> ids (...) of the nearest codebook vectors (V, d) in L2."""
    flat = vectors.reshape(-1, vectors.shape[-1]).float()
    distances = torch.cdist(flat, codebook.float())
    return distances.argmin(dim=-1).view(vectors.shape[:-1])


def straight_through_codes(logits: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """DD2's differentiable early positions: forward the argmax code, backward through the softmax-weighted
    mean of the codes. logits (..., V) -> vectors (..., d)."""
    soft = F.softmax(logits.float(), dim=-1) @ codebook.float()
    hard = codebook.float()[logits.argmax(dim=-1)]
    return hard + soft - soft.detach()

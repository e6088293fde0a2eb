"""The discrete image generator: condition prefix + token embeddings -> backbone -> categorical head.

The condition is a class id (one prefix token) or text-encoder states (``text_len`` prefix tokens); either
way it sits in ``cls_embedding``, as in LlamaGen's c2i and t2i models.

It only computes: ``forward`` for teacher-forced training and ``prefill`` / ``step`` for decoding.
Sampling loops live in ``arstudio.decoding``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from arstudio.checks import check_id_range
from arstudio.generators.backbone import Backbone, BackboneConfig
from arstudio.generators.conditioning import ClassConditioning, TextConditioning
from arstudio.generators.control import ControlConfig, ControlEncoder
from arstudio.generators.heads import CategoricalHead
from arstudio.io import PretrainedMixin


@dataclass(frozen=True)
class GeneratorConfig:
    vocab_size: int = 512
    num_classes: int = 24
    class_dropout_prob: float = 0.1  # label / caption dropout to the null condition (teaches CFG)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    initializer_range: float = 0.02
    condition: str = "class"  # "class" (num_classes) or "text" (text_dim states, backbone.prefix_len long)
    text_dim: int = 0
    text_positions: bool = False  # learned positions for the text prefix (see TextConditioning)
    text_phrases: int = 0  # > 0: the text encoder fills this many phrase slots (see text_encoders.py)
    control: ControlConfig | None = None  # spatial control (ControlAR), see generators/control.py

    def __post_init__(self):
        check_condition_config(self)


def check_condition_config(config) -> None:
    """Shared by every generator config: backbone and control from dicts (config.json), a known condition
    kind, a prefix as long as the condition (plus the control grid for prefilled control)."""
    if isinstance(config.backbone, dict):  # from config.json
        object.__setattr__(config, "backbone", BackboneConfig(**config.backbone))
    control = getattr(config, "control", None)  # video configs take no control
    if isinstance(control, dict):
        control = ControlConfig(**control)
        object.__setattr__(config, "control", control)
    if config.condition not in ("class", "text"):
        raise ValueError(f"condition={config.condition!r} is not allowed: use 'class' or 'text'")
    if config.condition == "text" and config.text_dim <= 0:
        raise ValueError("a text-conditioned generator needs text_dim > 0 (the text encoder's width)")
    phrases = getattr(config, "text_phrases", 0)
    if phrases and (config.condition != "text" or phrases < 0 or condition_len(config) % phrases):
        raise ValueError(
            f"text_phrases={phrases} needs a text condition whose {condition_len(config)} prefix tokens it "
            "divides into equal phrase slots"
        )
    prefilled = control is not None and control.mode == "prefill"
    if config.backbone.grid_prefix != prefilled:
        raise ValueError(
            f"backbone.grid_prefix={config.backbone.grid_prefix} but the control is "
            f"{control.mode if control else None!r}: grid_prefix is for prefilled control only"
        )
    if condition_len(config) < 1 or (config.condition == "class" and condition_len(config) != 1):
        extra = " plus the control grid" if prefilled else ""
        raise ValueError(
            f"class conditioning is one prefix token{extra}, got prefix_len={config.backbone.prefix_len}"
        )


def condition_len(config) -> int:
    """Prefix tokens of the class/text condition: the prefix minus a prefilled control grid."""
    control = getattr(config, "control", None)
    prefilled = control is not None and control.mode == "prefill"
    return config.backbone.prefix_len - (config.backbone.grid_size**2 if prefilled else 0)


class PrefixARGenerator(PretrainedMixin, nn.Module):
    """What every image generator shares: condition prefix (``cls_embedding``) + ``backbone``.

    Subclasses give ``tok_embeddings`` (how a token enters the backbone: ``embed``) and add ``head`` (what
    the hidden state predicts). Hidden state i is the one that predicts token i.

    With a control config, ``control_encoder`` turns control maps into control tokens (B, N, dim)
    (``encode_control``) that are fused per position or prefilled (generators/control.py). Training passes
    them to ``forward``; decoding loops, which only call ``prefill`` / ``step``, hand them over once with
    ``set_control`` (like the KV cache, state that lives for one sampling call). No control is the null
    control.
    """

    decode_control: torch.Tensor | None = None

    def _build_trunk(self, config, make_tok_embeddings) -> None:
        """Condition prefix, token input, backbone (and control encoder), created in this order (seeded random
        inits depend on it)."""
        dim = config.backbone.dim
        if config.condition == "class":
            self.cls_embedding = ClassConditioning(config.num_classes, dim, config.class_dropout_prob)
        else:
            self.cls_embedding = TextConditioning(
                config.text_dim,
                condition_len(config),
                dim,
                config.class_dropout_prob,
                config.text_positions,
            )
        self.tok_embeddings = make_tok_embeddings()
        self.backbone = Backbone(config.backbone)
        self.control_encoder = None
        control = getattr(config, "control", None)  # configs of DD and video models have none
        if control is not None:
            cfg = config.backbone
            self.control_encoder = ControlEncoder(
                control, dim, cfg.grid_size, cfg.n_layer, config.initializer_range, cfg.n_head
            )

    def _init_control(self) -> None:
        if self.control_encoder is not None:
            self.control_encoder.zero_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    @property
    def seq_len(self) -> int:
        return self.config.backbone.grid_size**2

    @property
    def prefix_len(self) -> int:
        return self.config.backbone.prefix_len

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ---- control -------------------------------------------------------------------------------
    def encode_control(self, maps: torch.Tensor, kinds: list[str], strength=1.0, keep=None) -> torch.Tensor:
        """Control maps (B, 1, R, R) of types ``kinds`` -> control tokens (B, N, dim); see ControlEncoder."""
        if self.control_encoder is None:
            raise ValueError("this generator takes no control: its config has no control encoder")
        types = self.control_encoder.type_ids(kinds, maps.device)
        return self.control_encoder(maps, types, strength, keep)

    def set_control(self, control: torch.Tensor | None) -> None:
        """Control tokens (rows, N, dim) for the next decoding call's rows (one per cache row), or None."""
        if control is not None:
            if self.control_encoder is None:
                raise ValueError("this generator takes no control: its config has no control encoder")
            expected = (self.control_encoder.num_tokens, self.config.backbone.dim)
            if control.ndim != 3 or tuple(control.shape[1:]) != expected:
                raise ValueError(
                    f"control tokens must be (B, {expected[0]}, {expected[1]}), got {tuple(control.shape)}"
                )
        self.decode_control = control

    def _control_for(self, batch: int, control: torch.Tensor | None) -> torch.Tensor | None:
        """The control tokens in effect for a batch: given, set for decoding, or the null control."""
        if self.control_encoder is None:
            return None
        control = self.decode_control if control is None else control
        if control is None:  # fusion's null control adds nothing: skip the additions altogether
            return None if self.config.control.mode == "fusion" else self.control_encoder.null(batch)
        if control.shape[0] != batch:
            raise ValueError(f"control tokens for {control.shape[0]} rows but the batch has {batch}")
        return control

    def _inject(self, control, input_pos: torch.Tensor):
        """Fusion additions for sequence positions ``input_pos``: position p predicts image token
        p - (P - 1), P the prefix length (ControlAR's shift by one)."""
        if control is None or self.config.control.mode != "fusion":
            return None
        return self.control_encoder.fusion_additions(control, input_pos - (self.prefix_len - 1))

    def _prefix(self, cond: torch.Tensor, control) -> torch.Tensor:
        """Condition prefix (B, P, dim), followed by the control tokens when they are prefilled."""
        prefix = self.cls_embedding(cond)
        if control is not None and self.config.control.mode == "prefill":
            prefix = torch.cat([prefix, control.to(prefix.dtype)], dim=1)
        return prefix

    # ---- computing ------------------------------------------------------------------------------
    def hidden(
        self, tokens: torch.Tensor, cond: torch.Tensor, control: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher forcing: tokens (B, N, ...) + condition (+ control tokens (B, N, dim)) -> hidden (B, N, dim),
        row i predicting token i."""
        control = self._control_for(tokens.shape[0], control)
        x = torch.cat([self._prefix(cond, control), self.embed(tokens[:, :-1])], dim=1)
        inject = self._inject(control, torch.arange(x.shape[1], device=x.device))
        return self.backbone(x, inject=inject)[:, self.prefix_len - 1 :]  # (B, P + N - 1, dim) -> (B, N, dim)

    def setup_cache(self, batch_size: int, device=None, dtype=None, extra: int = 0) -> None:
        self.backbone.setup_cache(batch_size, device, dtype, extra)

    def prefix_hidden(self, cond: torch.Tensor) -> torch.Tensor:
        """Write the condition prefix into the cache; returns its hidden states (B, P, dim), the last of
        which predicts the first token."""
        control = self._control_for(cond.shape[0], None)
        prefix = self._prefix(cond, control)
        positions = torch.arange(prefix.shape[1], device=prefix.device)
        return self.backbone.step(prefix, positions, inject=self._inject(control, positions))

    def step_hidden(
        self,
        tokens: torch.Tensor,
        input_pos: torch.Tensor,
        kv_len: int | None = None,
        mask=None,
        rope_pos=None,
    ) -> torch.Tensor:
        """tokens (B, T, ...) at sequence positions ``input_pos`` ((T,) or per row (B, T)) -> hidden (B, T, dim)
        for the next ones. ``kv_len``, ``mask``, ``rope_pos`` (a draft tree's slots): see ``Backbone.step``."""
        inject = self._inject(self._control_for(tokens.shape[0], None), input_pos)
        return self.backbone.step(
            self.embed(tokens), input_pos, mask=mask, inject=inject, kv_len=kv_len, rope_pos=rope_pos
        )


class ImageGenerator(PrefixARGenerator):
    """AR model over a grid of discrete tokens, conditioned by a class or text prefix (LlamaGen layout)."""

    config_class = GeneratorConfig
    token_kind = "discrete"

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        self._build_trunk(config, lambda: nn.Embedding(config.vocab_size, config.backbone.dim))
        self.head = CategoricalHead(config.backbone.dim, config.vocab_size)
        self.apply(self._init_weights)
        nn.init.zeros_(self.head.output.weight)
        self._init_control()

    def check_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.is_floating_point():
            raise ValueError(
                f"a discrete generator takes integer token ids, got {tokens.dtype} (continuous latents go to "
                "a ContinuousImageGenerator)"
            )
        check_id_range(tokens, self.config.vocab_size)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok_embeddings(tokens)

    def forward(
        self, tokens: torch.Tensor, cond: torch.Tensor, control: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher forcing: tokens (B, N) raster order + condition (labels (B,) or text states (B, L, D))
        (+ control tokens (B, N, dim) from ``encode_control``) -> logits (B, N, vocab), row i predicting
        tokens[:, i]."""
        self.check_tokens(tokens)
        return self.head(self.hidden(tokens, cond, control))

    def prefill(self, cond: torch.Tensor, return_hidden: bool = False):
        """Write the condition prefix into the cache; returns logits (B, vocab) for the first token (and
        the prefix's hidden states (B, P, dim) if ``return_hidden``)."""
        hidden = self.prefix_hidden(cond)
        logits = self.head(hidden[:, -1:])[:, -1]
        return (logits, hidden) if return_hidden else logits

    def step(
        self,
        tokens: torch.Tensor,
        input_pos: torch.Tensor,
        return_hidden: bool = False,
        kv_len=None,
        mask=None,
        rope_pos=None,
    ):
        """tokens (B, T) placed at sequence positions ``input_pos`` ((T,) or per row (B, T)) -> logits
        (B, T, vocab) (and hidden (B, T, dim) if ``return_hidden``). ``mask``/``rope_pos``: a draft tree's
        verification (see ``Backbone.step``).

        Logits at position p predict the token at p + 1, as in training.
        """
        hidden = self.step_hidden(tokens, input_pos, kv_len, mask, rope_pos)
        logits = self.head(hidden)
        return (logits, hidden) if return_hidden else logits

"""The continuous-token image generator: the discrete generator's trunk with a different input and head.

Tokens are d-dim vectors (KL latents) or, for TokenBridge, d quantised level ids per token. A token enters
the backbone through a linear map of its vector (bridge ids first become their bin values); the backbone's
hidden state z_i conditions a per-token head (diffusion, flow or per-dimension categorical) that models
token i. Condition prefix, backbone, KV cache and null condition are ``PrefixARGenerator``'s.

``forward`` returns the z's (the heads' conditioning vectors) and ``loss`` the head's training loss; the
sampling loops (head denoising, raster order, CFG on z) live in ``decoding/continuous.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from arstudio.generators.backbone import BackboneConfig
from arstudio.generators.control import ControlConfig
from arstudio.generators.heads import BRIDGE_ARCHS, CONTINUOUS_HEADS, make_continuous_head
from arstudio.generators.image import PrefixARGenerator, check_condition_config


@dataclass(frozen=True)
class ContinuousGeneratorConfig:
    token_dim: int = 8  # d, the tokenizer's latent channels
    head: str = "diffusion"  # one of CONTINUOUS_HEADS
    head_width: int = 256
    head_depth: int = 3
    num_timesteps: int = 1000  # diffusion head: training timesteps of the cosine schedule
    batch_mul: int = 4  # diffusion/flow heads: noise draws per token and training step
    x0_clip: float = 5.0  # diffusion sampling: |predicted x0| bound, in units of the (scaled) latents
    levels: int = 64  # bridge head: quantisation levels per dimension
    head_arch: str = "mlp"  # bridge head: "mlp" or "transformer" over the dimensions (BRIDGE_ARCHS)
    head_heads: int = 4  # bridge head, transformer: attention heads (head_width must divide by it)
    num_classes: int = 24
    class_dropout_prob: float = 0.1
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    initializer_range: float = 0.02
    condition: str = "class"
    text_dim: int = 0
    control: ControlConfig | None = None  # spatial control (ControlAR), see generators/control.py

    def __post_init__(self):
        check_condition_config(self)
        if self.head not in CONTINUOUS_HEADS:
            raise ValueError(f"head={self.head!r} is unknown; allowed: {CONTINUOUS_HEADS}")
        if self.token_dim < 1:
            raise ValueError(f"token_dim={self.token_dim!r} must be >= 1")
        if self.head == "bridge" and self.levels < 2:
            raise ValueError(f"levels={self.levels!r} is not allowed for a bridge head: use >= 2")
        if self.head_arch not in BRIDGE_ARCHS or (self.head != "bridge" and self.head_arch != "mlp"):
            raise ValueError(
                f"head_arch={self.head_arch!r} is not allowed for a {self.head} head; allowed: "
                f"{BRIDGE_ARCHS if self.head == 'bridge' else ('mlp',)}"
            )
        heads = self.head_heads
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or self.head_width % heads:
            raise ValueError(
                f"head_heads={heads!r} is not allowed: use an integer >= 1 that divides head_width="
                f"{self.head_width}"
            )


class ContinuousImageGenerator(PrefixARGenerator):
    """AR model over a grid of vector tokens (B, N, d): float latents, or level ids for the bridge head."""

    config_class = ContinuousGeneratorConfig

    def __init__(self, config: ContinuousGeneratorConfig):
        super().__init__()
        self.config = config
        self._build_trunk(config, lambda: nn.Linear(config.token_dim, config.backbone.dim))
        self.apply(self._init_weights)
        self._init_control()
        self.head = make_continuous_head(config, config.backbone.dim)  # keeps its own (zero) init
        if config.head == "bridge":
            from arstudio.tokenizers.bridge import gaussian_bins

            # (d, levels) standardised value of each level: ids enter the backbone as their de-quantised
            # values (TokenBridge). Saved with the weights; training copies them from the bridge tokenizer.
            values = gaussian_bins(config.levels)[1].float().repeat(config.token_dim, 1)
            self.register_buffer("bin_values", values)

    @property
    def token_kind(self) -> str:
        return "bridge" if self.config.head == "bridge" else "continuous"

    def check_tokens(self, tokens: torch.Tensor) -> None:
        d = self.config.token_dim
        if tokens.ndim != 3 or tokens.shape[-1] != d:
            raise ValueError(
                f"tokens must be (B, N, {d}) (one {d}-dim vector per token); got {tuple(tokens.shape)}"
            )
        if self.token_kind == "bridge":
            self.head.check_ids(tokens)
        elif not tokens.is_floating_point():
            raise ValueError(
                f"a {self.config.head} head takes float latents, got {tokens.dtype} (discrete token ids go to "
                "an ImageGenerator, level ids to a bridge head)"
            )

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, d) latents or level ids -> (B, T, dim)."""
        if self.token_kind == "bridge":
            dims = torch.arange(tokens.shape[-1], device=tokens.device)
            tokens = self.bin_values[dims, tokens]  # ids -> standardised bin values, (B, T, d)
        return self.tok_embeddings(tokens.to(self.tok_embeddings.weight.dtype))

    def forward(
        self, tokens: torch.Tensor, cond: torch.Tensor, control: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher forcing: tokens (B, N, d) + condition (+ control tokens) -> head conditions z (B, N, dim),
        z_i for token i."""
        self.check_tokens(tokens)
        return self.hidden(tokens, cond, control)

    def loss(
        self,
        tokens: torch.Tensor,
        cond: torch.Tensor,
        generator: torch.Generator | None = None,
        control: torch.Tensor | None = None,
    ):
        """The head's loss on every token of the batch (B, N, d)."""
        z = self(tokens, cond, control)
        return self.head.loss(tokens.flatten(0, 1), z.flatten(0, 1), generator)

    def prefill(self, cond: torch.Tensor) -> torch.Tensor:
        """Write the condition prefix into the cache; returns z (B, dim) for the first token."""
        return self.prefix_hidden(cond)[:, -1]

    def step(self, tokens: torch.Tensor, input_pos: torch.Tensor, kv_len: int | None = None) -> torch.Tensor:
        """tokens (B, T, d) at sequence positions ``input_pos`` (T,) -> z (B, T, dim) for the next tokens;
        ``kv_len`` as in ``Backbone.step``."""
        return self.step_hidden(tokens, input_pos, kv_len)

"""The control encoder (ControlAR): a control map -> one control token per image token.

A small CNN patchifies the (1, R, R) map with the tokenizer's downsampling factor, so its (grid, grid)
output lines up with the image-token grid; a learned embedding of the control type (edges / mask) is
added, so one model serves every type. With ``context_layers`` > 0, bidirectional transformer blocks (the
backbone's, 2D RoPE, no causal mask) then mix the grid, so every control token describes the whole map, as
ControlAR's ViT (DINOv2) tokens do; the CNN alone sees ~one 4x4 patch per token. How the tokens reach the
backbone is the config's ``mode``:

- ``fusion`` (ControlAR's conditional decoding): at the input of blocks ``layers`` the hidden state of
  the position that *predicts* image token i gets ``fusion[k](control_i)`` added. Sequence length is
  unchanged. The projections start at zero, so a warm-started generator begins exactly as it was. With
  ``relative_fusion`` each addition is scaled by the RMS of the hidden state it joins (blocks differ ~20x).
- ``prefill``: the control tokens sit after the condition prefix, sharing the 2D RoPE rotation of the image
  token they describe (see ``rope_2d_table(grid_prefix=True)``); the sequence grows by grid**2 tokens.

The null control (classifier-free guidance over the control, control dropout in training) is "no
addition" for fusion and a learned null token at every control position for prefill. ``strength`` s
interpolates between them: null + s * (control - null).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from arstudio.data.control import CONTROL_TYPES
from arstudio.nn.rope import rope_2d_table
from arstudio.nn.transformer import BackboneConfig, TransformerBlock

CONTROL_MODES = ("fusion", "prefill")
STRENGTH_RANGE = (0.0, 2.0)


@dataclass(frozen=True)
class ControlConfig:
    mode: str = "fusion"  # one of CONTROL_MODES
    types: tuple[str, ...] = CONTROL_TYPES  # control types the model was trained on
    resolution: int = 32  # control maps are (resolution, resolution), one channel: the tokenizer's size
    width: int = 32  # CNN channels before the patchify convolution
    # fusion: blocks whose input gets the control (ControlAR: 0, L/3, 2L/3)
    layers: tuple[int, ...] = (0, 2, 4)
    dropout_prob: float = 0.1  # training: the control alone is replaced by the null control this often
    # Bidirectional transformer blocks over the CNN's tokens (global receptive field); 0 = CNN only. Fusion
    # needs them: the position predicting image token i gets control tokens 0..i only, so with CNN-only
    # tokens it knows nothing of the object's edges further on in raster order.
    context_layers: int = 0
    # Fusion additions scaled by the RMS of the hidden state they join, from unit-scale control tokens. The
    # residual stream's scale differs per block (shapes-c2i: 0.03 at block 0, ~0.5 at blocks 2 and 4), so
    # absolute additions that suit block 0 are ~1/20 of what blocks 2 and 4 would notice.
    relative_fusion: bool = False

    def __post_init__(self):
        for name in ("types", "layers"):  # from config.json, lists
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.mode not in CONTROL_MODES:
            raise ValueError(f"control mode {self.mode!r} is unknown; allowed: {CONTROL_MODES}")
        unknown = [t for t in self.types if t not in CONTROL_TYPES]
        if unknown or not self.types:
            raise ValueError(f"control types {self.types!r} must be a non-empty subset of {CONTROL_TYPES}")
        if (
            isinstance(self.context_layers, bool)
            or not isinstance(self.context_layers, int)
            or self.context_layers < 0
        ):
            raise ValueError(f"control context_layers={self.context_layers!r} must be an integer >= 0")
        if self.relative_fusion and self.mode != "fusion":
            raise ValueError(f"relative_fusion applies to fusion only; this control's mode is {self.mode!r}")
        if self.mode == "fusion" and not self.layers:
            raise ValueError("a fusion control needs at least one layer to inject into")


def check_strength(strength) -> float:
    lo, hi = STRENGTH_RANGE
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not lo <= strength <= hi:
        raise ValueError(f"control_strength={strength!r} is not allowed: use a number in [{lo}, {hi}]")
    return float(strength)


class ControlEncoder(nn.Module):
    """(B, 1, R, R) control maps + type ids -> control tokens (B, grid**2, dim)."""

    def __init__(
        self,
        config: ControlConfig,
        dim: int,
        grid_size: int,
        n_layer: int,
        token_scale: float = 1.0,
        n_head: int = 1,
    ):
        super().__init__()
        if config.resolution % grid_size:
            raise ValueError(
                f"control resolution {config.resolution} must be a multiple of the grid {grid_size}"
            )
        bad = [k for k in config.layers if not 0 <= k < n_layer]
        if config.mode == "fusion" and bad:
            raise ValueError(f"control layers {bad} do not exist: the backbone has blocks 0..{n_layer - 1}")
        self.config = config
        self.grid_size = grid_size
        patch = config.resolution // grid_size
        width = config.width
        self.cnn = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, dim, patch, stride=patch),  # one output per image token
            nn.GELU(),
        )
        self.type_embedding = nn.Embedding(len(config.types), dim)
        if config.context_layers:
            # The generator's block design at its width, without a prefix: the rotation of token i is image
            # token i's, so attention between control tokens depends on their offset on the grid.
            context = BackboneConfig(
                dim=dim, n_layer=config.context_layers, n_head=n_head, grid_size=grid_size, prefix_len=0
            )
            self.context = nn.ModuleList(TransformerBlock(context) for _ in range(config.context_layers))
            self.register_buffer("rope", rope_2d_table(grid_size, context.head_dim, 0), persistent=False)
        self.proj = nn.Linear(dim, dim)
        # Control tokens at the token embeddings' scale (``token_scale``, the generator's init std): unnormalised,
        # the CNN's output is ~1e-3 and the zero-initialised fusion learned nothing in 100 fine-tuning steps;
        # at unit scale, Adam's first updates made additions ~10x the residual stream and wrecked the
        # warm-started model (loss 0.55 -> 3.0 in 20 steps).
        # Relative fusion wants unit-scale tokens, and a gain near 1: at 0.02, Adam's absolute steps (lr 2e-3)
        # shrank the gain to 0.003 in 100 fine-tuning steps, before the zero-initialised fusion was any use.
        self.norm = nn.LayerNorm(dim)
        nn.init.constant_(self.norm.weight, 1.0 if config.relative_fusion else token_scale)
        if config.mode == "fusion":
            # No bias: the null control (zeros) must add exactly nothing, whatever was learned.
            self.fusion = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in config.layers)
        else:
            self.null_token = nn.Parameter(torch.zeros(dim))

    def zero_init(self) -> None:
        """Fusion projections start at zero (after the generator's weight init), so fine-tuning starts from
        the unchanged generator."""
        if self.config.mode == "fusion":
            for layer in self.fusion:
                nn.init.zeros_(layer.weight)

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    def type_ids(self, kinds: list[str], device=None) -> torch.Tensor:
        """Control type names -> ids (B,), refusing types this model was not trained on."""
        for kind in kinds:
            if kind not in self.config.types:
                raise ValueError(
                    f"control type {kind!r} is unknown to this model; allowed: {self.config.types}"
                )
        return torch.tensor([self.config.types.index(k) for k in kinds], dtype=torch.long, device=device)

    def null(self, batch_size: int) -> torch.Tensor:
        """The null control (B, N, dim): zeros for fusion (nothing added), the null token for prefill."""
        ref = self.proj.weight
        if self.config.mode == "fusion":
            return ref.new_zeros(batch_size, self.num_tokens, ref.shape[0])
        return self.null_token[None, None].expand(batch_size, self.num_tokens, -1)

    def forward(self, maps: torch.Tensor, types: torch.Tensor, strength=1.0, keep=None) -> torch.Tensor:
        """maps (B, 1, R, R) in [0, 1], types (B,) ids -> control tokens (B, grid**2, dim).

        ``strength``: a number or (B,) tensor (null + s * (control - null)); ``keep`` (B,) bool: rows where
        False get the null control (dropout in training, CFG's null stream at sampling).
        """
        r = self.config.resolution
        if maps.ndim != 4 or tuple(maps.shape[1:]) != (1, r, r):
            raise ValueError(f"control maps must be (B, 1, {r}, {r}), got {tuple(maps.shape)}")
        if types.shape != maps.shape[:1]:
            raise ValueError(f"need one control type per map: {tuple(types.shape)} for {maps.shape[0]} maps")
        features = self.cnn(maps.to(self.proj.weight.dtype))  # (B, dim, grid, grid)
        tokens = features.flatten(2).transpose(1, 2) + self.type_embedding(types)[:, None]  # (B, N, dim)
        if self.config.context_layers:
            n = tokens.shape[1]
            everyone = torch.ones(1, 1, n, n, dtype=torch.bool, device=tokens.device)  # not causal
            for block in self.context:
                tokens = block(tokens, self.rope, mask=everyone)
        tokens = self.norm(self.proj(tokens))
        null = self.null(maps.shape[0])
        strength = torch.as_tensor(strength, dtype=tokens.dtype, device=tokens.device).reshape(-1, 1, 1)
        tokens = null + strength * (tokens - null)
        if keep is not None:
            tokens = torch.where(keep[:, None, None], tokens, null)
        return tokens

    def fusion_additions(self, control: torch.Tensor, index: torch.Tensor) -> dict[int, torch.Tensor]:
        """Per-block additions for the positions whose predicted image token is ``index``.

        control (B, N, dim); index (T,) or (B, T) image-token indices, out of [0, N) where a position predicts
        no image token (prefix rows before the last, speculative overshoot): those rows get nothing.
        Returns {block: (B, T, dim)}.
        """
        valid = (index >= 0) & (index < self.num_tokens)
        safe = index.clamp(0, self.num_tokens - 1)
        if safe.ndim == 1:
            picked = control[:, safe]  # (B, T, dim)
            valid = valid[None, :, None]
        else:
            picked = torch.gather(control, 1, safe[..., None].expand(-1, -1, control.shape[-1]))
            valid = valid[..., None]
        picked = picked * valid  # bias-free projections keep these rows at zero
        additions = {block: proj(picked) for block, proj in zip(self.config.layers, self.fusion, strict=True)}
        if self.config.relative_fusion:
            return {block: partial(_scaled_by_stream, add) for block, add in additions.items()}
        return additions


def _scaled_by_stream(addition: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``addition`` (B, T, dim) times the RMS of each position of the hidden state x (B, T, dim) it joins
    (detached: a pure rescaling, which must not teach the backbone to grow its stream)."""
    # One norm kernel instead of pow / mean / sqrt: this runs per fused block on every decoding step.
    norm = torch.linalg.vector_norm(x.detach(), dim=-1, keepdim=True, dtype=torch.float32)
    return addition * (norm * x.shape[-1] ** -0.5).to(addition.dtype)

"""Official KL-VAE checkpoints -> ``KLTokenizer``: a diffusers ``AutoencoderKL`` folder/file, or the LDM
layout that MAR's KL-16 (``kl16.ckpt``, weights under ``"model"``) and latent-diffusion use.

The two layouts name the same modules differently (LDM ``encoder.down.1.block.0.nin_shortcut`` is diffusers
``encoder.down_blocks.1.resnets.0.conv_shortcut``; LDM decoder level i is diffusers up block n-1-i; LDM
attention uses 1x1 convs where diffusers has linears). ``ldm_to_diffusers`` renames and reshapes; the result
is checked key for key and shape for shape against the ``KLTokenizer`` the config describes.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from arstudio.io import check_state_dict
from arstudio.tokenizers.kl import KLConfig, KLTokenizer

# MAR's KL-16 (LTH14/mar models/vae.py): ch 128, ch_mult (1, 1, 2, 2, 4), 2 res blocks per level, encoder
# attention at 16 px (its last level at 256 px), 16 latent channels; MAR scales latents by 0.2325.
MAR_KL16 = KLConfig(
    resolution=256,
    block_out_channels=(128, 128, 256, 256, 512),
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    scaling_factor=0.2325,
    encoder_attention=True,
)

_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_RESNET = {"nin_shortcut": "conv_shortcut"}


def _is_ldm(state: dict) -> bool:
    return any(k.startswith(("encoder.down.", "decoder.up.")) for k in state)


def _rename(key: str, levels: int) -> str:
    """One LDM key -> its diffusers name."""
    key = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", key)
    key = re.sub(r"\.mid\.block_(\d)\.", lambda m: f".mid_block.resnets.{int(m[1]) - 1}.", key)
    key = re.sub(r"\.mid\.attn_1\.(\w+)\.", lambda m: f".mid_block.attentions.0.{_ATTN[m[1]]}.", key)
    key = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets.", key)
    key = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", key)
    key = re.sub(
        r"^encoder\.down\.(\d+)\.attn\.(\d+)\.(\w+)\.",
        lambda m: f"encoder.down_blocks.{m[1]}.attentions.{m[2]}.{_ATTN[m[3]]}.",
        key,
    )
    # LDM's decoder.up[i] is the level at resolution 2**i; diffusers lists up blocks from the lowest resolution.
    key = re.sub(
        r"^decoder\.up\.(\d+)\.block\.", lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.resnets.", key
    )
    key = re.sub(
        r"^decoder\.up\.(\d+)\.upsample\.",
        lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.",
        key,
    )
    return re.sub(r"\.(nin_shortcut)\.", lambda m: f".{_RESNET[m[1]]}.", key)


def ldm_to_diffusers(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """LDM/MAR KL-VAE state dict -> diffusers ``AutoencoderKL`` names. Training-loss weights (``loss.*``:
    LPIPS, discriminator) are dropped; attention 1x1 conv weights (C, C, 1, 1) become linears (C, C)."""
    out = {}
    for key, value in state.items():
        if key.startswith("loss."):
            continue
        new = _rename(key, levels)
        if ".attentions." in new and new.endswith(".weight") and value.ndim == 4:
            value = value[:, :, 0, 0]
        out[new] = value
    return out


def convert_kl_state_dict(state: dict[str, torch.Tensor], config: KLConfig) -> dict[str, torch.Tensor]:
    """Either layout -> ``KLTokenizer`` keys (``vae.`` + diffusers names)."""
    if _is_ldm(state):
        state = ldm_to_diffusers(state, len(config.block_out_channels))
    return {f"vae.{k}": v for k, v in state.items()}


def load_kl_checkpoint(path: str | Path, config: KLConfig = MAR_KL16) -> KLTokenizer:
    """A ``KLTokenizer`` (eval mode, fp32) from a local official checkpoint: a diffusers
    ``diffusion_pytorch_model.safetensors`` (or the folder holding it), or an LDM/MAR ``.ckpt``/``.pt``
    (read with ``torch.load(weights_only=True)``). ``config`` must describe the checkpoint's architecture
    (default: MAR's KL-16); a mismatch names the missing, unexpected and mis-shaped keys."""
    from arstudio.convert.llamagen import load_official_checkpoint

    path = Path(path)
    if path.is_dir():
        path = path / "diffusion_pytorch_model.safetensors"
    state = convert_kl_state_dict(load_official_checkpoint(path), config)
    model = KLTokenizer(config)
    check_state_dict(model, state, source=str(path))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()

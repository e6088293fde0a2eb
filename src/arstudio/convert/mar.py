"""MAR's official checkpoints (LTH14/mar, ``mar_{base,large,huge}/checkpoint-last.pth``) -> ``MARGenerator``.

MAR's ``main_mar.py`` saves ``{"model", "model_ema", "optimizer", "epoch", "scaler", "args"}`` (the released
files hold "model" and "model_ema"; "args" is an ``argparse.Namespace``, which our safe loader allows). MAR's
own evaluation swaps in the EMA weights, so do we: "model_ema" when the file has it, else "model" (a warning
says so), else a flat state dict. The encoder-decoder keys are ours as they are (``generators/mar.py`` keeps
the official names); the head's ``diffloss.net.*`` (``SimpleMLPAdaLN``) map onto ``AdaLNMLP``. A file of
another size or model is refused by its shapes, naming what it holds. The KL-16 VAE is ``convert/kl.py``'s.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from arstudio.convert.checkpoint import (
    materialise,
    save_pretrained_bounded,
    shapes_of,
    torch_load,
)
from arstudio.convert.kl import MAR_KL16, load_kl_checkpoint
from arstudio.generators.mar import MARConfig, MARGenerator
from arstudio.tokenizers.kl import KLConfig

logger = logging.getLogger(__name__)

# name -> (width, blocks per encoder and decoder, heads, head depth, head width): mar.py's mar_base/large/huge
# and the README's evaluation commands (--diffloss_d / --diffloss_w of the released checkpoints)
MAR_SIZES = {
    "mar_base": (768, 12, 12, 6, 1024),
    "mar_large": (1024, 16, 16, 8, 1280),
    "mar_huge": (1280, 20, 16, 12, 1536),
}

MAR_DRAFT = "mar_base"  # CSpD's draft for MAR-L and MAR-H

# our head key prefix -> theirs, first match wins
_HEAD_KEYS = (
    (r"^head\.net\.time_embed\.", "diffloss.net.time_embed.mlp."),
    (r"^head\.net\.blocks\.(\d+)\.norm\.", r"diffloss.net.res_blocks.\1.in_ln."),
    (r"^head\.net\.blocks\.(\d+)\.modulation\.", r"diffloss.net.res_blocks.\1.adaLN_modulation."),
    (r"^head\.net\.blocks\.(\d+)\.mlp\.", r"diffloss.net.res_blocks.\1.mlp."),
    (r"^head\.net\.final_modulation\.", "diffloss.net.final_layer.adaLN_modulation."),
    (r"^head\.net\.output\.", "diffloss.net.final_layer.linear."),
    (r"^head\.net\.", "diffloss.net."),
)


def mar_config(size: str, **overrides) -> MARConfig:
    """The config of an official size ("mar_base", "mar_large", "mar_huge") at 256 px with KL-16 tokens."""
    if size not in MAR_SIZES:
        raise ValueError(f"MAR size {size!r} is unknown; allowed: {tuple(MAR_SIZES)}")
    width, blocks, heads, head_depth, head_width = MAR_SIZES[size]
    return MARConfig(
        **{
            "encoder_dim": width,
            "encoder_depth": blocks,
            "encoder_heads": heads,
            "decoder_dim": width,
            "decoder_depth": blocks,
            "decoder_heads": heads,
            "head_width": head_width,
            "head_depth": head_depth,
            **overrides,
        }
    )


def official_key(ours: str) -> str:
    """Our parameter name -> the name in MAR's state dict."""
    for pattern, theirs in _HEAD_KEYS:
        if re.match(pattern, ours):
            return re.sub(pattern, theirs, ours)
    return ours


def mar_keys(config: MARConfig) -> dict[str, str]:
    """Every key of a ``MARGenerator(config)`` -> its official name (built on meta: no memory)."""
    with torch.device("meta"):
        names = list(MARGenerator(config).state_dict())
    return {ours: official_key(ours) for ours in names}


def _size_name(width: int, blocks: int, head_depth: int, head_width: int) -> str | None:
    found = (width, blocks, head_depth, head_width)
    return next((n for n, (w, b, _, hd, hw) in MAR_SIZES.items() if (w, b, hd, hw) == found), None)


def describe_mar_state(shapes: Mapping[str, torch.Size]) -> str:
    """What a state dict holds, from its shapes: 'MAR (mar_base: width 768, 12+12 blocks, head 6x1024)'."""
    if "class_emb.weight" not in shapes or "diffloss.net.input_proj.weight" not in shapes:
        sample = sorted(shapes)[:4]
        return f"no MAR model (no class_emb / diffloss.net weights; keys like {sample})"
    width = shapes["class_emb.weight"][1]
    blocks = len({k.split(".")[1] for k in shapes if k.startswith("encoder_blocks.")})
    decoder = len({k.split(".")[1] for k in shapes if k.startswith("decoder_blocks.")})
    head_depth = len({k.split(".")[3] for k in shapes if k.startswith("diffloss.net.res_blocks.")})
    head_width = shapes["diffloss.net.input_proj.weight"][0]
    name = _size_name(width, blocks, head_depth, head_width) or "an unofficial size"
    return f"MAR ({name}: width {width}, {blocks}+{decoder} blocks, head {head_depth}x{head_width})"


def _describe_config(config: MARConfig) -> str:
    name = _size_name(config.encoder_dim, config.encoder_depth, config.head_depth, config.head_width)
    return (
        f"MAR ({name or 'an unofficial size'}: width {config.encoder_dim}, {config.encoder_depth}+"
        f"{config.decoder_depth} blocks, head {config.head_depth}x{config.head_width})"
    )


def mar_state(path: str | Path) -> Mapping[str, torch.Tensor]:
    """The weights MAR's evaluation uses from an official checkpoint: "model_ema", else "model", else a flat
    state dict; read safely (``torch.load(weights_only=True, mmap=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    obj = torch_load(path)
    if isinstance(obj, dict) and isinstance(obj.get("model_ema"), dict):
        return obj["model_ema"]
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        logger.warning("%s has no 'model_ema' weights; using 'model' (MAR evaluates with the EMA)", path)
        return obj["model"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    found = sorted(map(str, obj))[:12] if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(
        f"no MAR weights found in {str(path)!r}: it holds {found}; expected MAR's checkpoint-last.pth "
        "(weights under 'model_ema' / 'model') or a flat state dict"
    )


def check_mar_kind(shapes: Mapping[str, torch.Size], config: MARConfig, source: str) -> None:
    """Refuse a file whose shapes are not those of ``config``, naming what it holds."""
    expected = official_shapes(config)
    wrong = [k for k, shape in expected.items() if shapes.get(k) != shape]
    if wrong:
        raise ValueError(
            f"{source} holds {describe_mar_state(shapes)}; expected {_describe_config(config)} "
            f"(first differing weight: {wrong[0]!r} {tuple(shapes.get(wrong[0], ())) or 'missing'}, expected "
            f"{tuple(expected[wrong[0]])})"
        )


def official_shapes(config: MARConfig) -> dict[str, torch.Size]:
    """MAR's state-dict key -> shape for ``config`` (our model's, under the official names: tests check these
    against MAR's own layout)."""
    with torch.device("meta"):
        state = MARGenerator(config).state_dict()
    return {official_key(k): v.shape for k, v in state.items()}


def load_mar(
    path: str | Path,
    config: MARConfig,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> MARGenerator:
    """A ``MARGenerator`` (eval mode) from an official checkpoint, in bounded memory: built on meta, each
    tensor cast to ``dtype`` and placed on ``device`` on its own, the file mapped rather than read."""
    state = mar_state(path)
    source = repr(str(path))
    check_mar_kind(shapes_of(state), config, source)
    return materialise(lambda: MARGenerator(config), state, mar_keys(config), source, dtype, device)


def load_mar_vae(
    path: str | Path,
    config: KLConfig = MAR_KL16,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
):
    """MAR's KL-16 VAE (``kl16.ckpt``) as a ``KLTokenizer`` in ``dtype`` on ``device``."""
    return load_kl_checkpoint(path, config).to(device=device or "cpu", dtype=dtype or torch.float32)


def convert_mar_to_pretrained(
    tokenizer_file: str | Path,
    generator_file: str | Path,
    out_dir: str | Path,
    gpt_model: MARConfig | str = "mar_base",
    vq_model: KLConfig = MAR_KL16,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``out_dir/tokenizer`` and ``out_dir/generator`` (our layout) from ``kl16.ckpt`` and a MAR
    ``checkpoint-last.pth`` (the hub converter's signature: ``gpt_model`` / ``vq_model`` are the configs)."""
    out_dir = Path(out_dir)
    config = mar_config(gpt_model) if isinstance(gpt_model, str) else gpt_model
    tokenizer = load_mar_vae(tokenizer_file, vq_model)
    save_pretrained_bounded(tokenizer, out_dir / "tokenizer", dtype=dtype)
    del tokenizer
    generator = load_mar(generator_file, config, dtype=dtype)
    save_pretrained_bounded(generator, out_dir / "generator", dtype=dtype)
    return out_dir


def official_state_dict(model: MARGenerator) -> dict[str, torch.Tensor]:
    """Our model's weights under MAR's names (for tests and parity scripts that write official files)."""
    return {official_key(k): v for k, v in model.state_dict().items()}

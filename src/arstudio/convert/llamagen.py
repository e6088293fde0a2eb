"""LlamaGen's official checkpoints (FoundationVision/LlamaGen) -> ``VQTokenizer`` / ``ImageGenerator``.

Facts used here, from LlamaGen's code (``tokenizer/tokenizer_image/vq_model.py``,
``autoregressive/models/gpt.py``, ``autoregressive/sample/sample_c2i.py``):

* Checkpoints are ``torch.save`` dicts. The samplers take the weights from ``"model"`` (DDP training),
  ``"module"`` (DeepSpeed) or ``"state_dict"``, or use the whole file when it is a flat state dict (FSDP,
  ``--from-fsdp``). Training checkpoints also hold ``"optimizer"``, ``"steps"``, ``"args"`` (an
  ``argparse.Namespace``) and, with ``--ema``, ``"ema"``; the samplers never read ``"ema"``.
* VQ keys already use our names (``encoder.conv_blocks.N.res.M``, ``quantize.embedding``, ...). The
  only extra is the training buffer ``quantize.codebook_used`` (a rolling window of recent code ids).
* VQ-16: width 128, ``ch_mult`` (1, 1, 2, 2, 4); VQ-8: (1, 2, 2, 4). Two ResBlocks per encoder level and
  three per decoder level, GroupNorm(32), ``z_channels`` 256, codebook 16384 x 8, l2-normalised.
* GPT keys differ from ours only by nesting: ``layers.*`` / ``norm.*`` sit in our ``backbone``, ``output.*``
  in our ``head``. The 2D RoPE table (``freqs_cis``) and KV caches are recomputed, never loaded.
* c2i GPT: ``LabelEmbedder`` with ``num_classes + 1`` rows (the last is the CFG null class), one prefix
  token (``cls_token_num=1``), SwiGLU hidden size rounded up to a multiple of 256, RMSNorm eps 1e-5,
  RoPE base 10000, and RoPE *zeros* for the prefix position (``zero_prefix_rope=True``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from arstudio.convert.checkpoint import (  # NESTINGS, load_official_checkpoint: also imported from here
    NESTINGS,  # noqa: F401
    load_official_checkpoint,
    materialise,
    save_pretrained_bounded,
    shapes_of,
)
from arstudio.generators.backbone import BackboneConfig
from arstudio.generators.image import GeneratorConfig, ImageGenerator
from arstudio.tokenizers.vq import VQConfig, VQTokenizer

# name -> (n_layer, n_head, dim), as in LlamaGen's ``GPT_models``.
LLAMAGEN_GPT_SIZES: dict[str, tuple[int, int, int]] = {
    "GPT-B": (12, 12, 768),
    "GPT-L": (24, 16, 1024),
    "GPT-XL": (36, 20, 1280),
    "GPT-XXL": (48, 24, 1536),
    "GPT-XXXL": (48, 40, 2560),
    "GPT-1B": (22, 32, 2048),
    "GPT-3B": (24, 32, 3200),
    "GPT-7B": (32, 32, 4096),
}

# name -> ch_mult, as in LlamaGen's ``VQ_models``.
LLAMAGEN_VQ_CH_MULT: dict[str, tuple[int, ...]] = {
    "VQ-16": (1, 1, 2, 2, 4),
    "VQ-8": (1, 2, 2, 4),
}

# Prefixes added by DDP (``model.module``) and torch.compile (``_orig_mod``) when a wrapper was saved.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Path segments FSDP / activation checkpointing insert inside keys when a wrapped model was saved as is.
WRAPPER_SEGMENTS = re.compile(r"(_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")
# Training-only VQ entries: the usage window, and loss modules if a whole training wrapper was saved.
VQ_DROPPED_PREFIXES = ("discriminator.", "perceptual_loss.", "lpips.", "vq_loss.")
VQ_DROPPED_KEYS = ("quantize.codebook_used",)
# Recomputed GPT buffers: older LlamaGen versions registered the RoPE table; caches exist after sampling.
GPT_DROPPED_KEYS = ("freqs_cis", "causal_mask")


# --------------------------------------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------------------------------------


def _state_from(path_or_state, use_ema: bool) -> tuple[Mapping[str, torch.Tensor], str]:
    if isinstance(path_or_state, Mapping):
        return path_or_state, "state dict"
    return load_official_checkpoint(path_or_state, use_ema=use_ema), repr(str(path_or_state))


def unwrapped_keys(keys: Iterable[str]) -> dict[str, str]:
    """Clean key -> key as saved: drops ``module.`` / ``_orig_mod.`` when *every* key carries it (a saved DDP
    or compiled wrapper) and FSDP's ``_fsdp_wrapped_module.`` segments wherever they are."""
    names = {WRAPPER_SEGMENTS.sub("", k): k for k in keys}
    changed = True
    while changed and names:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in names):
                names = {k[len(prefix) :]: v for k, v in names.items()}
                changed = True
    return names


def _strip_wrapper_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {clean: state[saved] for clean, saved in unwrapped_keys(state).items()}


def describe_llamagen_state(shapes: Mapping[str, torch.Size]) -> str:
    """What a checkpoint holds, for error messages: 'a LlamaGen GPT-L class-to-image model (24 layers, dim
    1024, vocab 16384, 1000 classes)', 'a LlamaGen VQ tokenizer (...)', or the first keys of something else."""
    shapes = {clean: shapes[saved] for clean, saved in unwrapped_keys(shapes).items()}
    if any(k.startswith(("quantize.", "encoder.conv_in.", "decoder.conv_out.")) for k in shapes):
        codebook = shapes.get("quantize.embedding.weight")
        return "a VQ tokenizer" + (
            f" (codebook {codebook[0]} x {codebook[1]})" if codebook is not None else ""
        )
    embed = shapes.get("tok_embeddings.weight")
    if embed is None or len(embed) != 2:
        return f"no LlamaGen model (first keys: {', '.join(sorted(shapes)[:4]) or 'none'})"
    layers = len({k.split(".")[1] for k in shapes if k.startswith("layers.")})
    if any(k.startswith(("final_layer_conti.", "n_d_embed.")) for k in shapes):  # DD's continuous parts
        return f"a Distilled Decoding (DD) model ({layers} layers, dim {embed[0]}), not an AR GPT"
    vocab, dim = embed
    name = _size_name(layers, dim) or "GPT of no LlamaGen size"
    if any(k.startswith("cls_embedding.cap_proj.") for k in shapes):
        text = shapes.get("cls_embedding.uncond_embedding", (0, 0))
        return (
            f"a LlamaGen {name} text-to-image model ({layers} layers, dim {dim}, {text[0]} x {text[1]} text)"
        )
    table = shapes.get("cls_embedding.embedding_table.weight")
    classes = f", {table[0] - 1} classes" if table is not None else ""
    return f"a LlamaGen {name} class-to-image model ({layers} layers, dim {dim}, vocab {vocab}{classes})"


def _size_name(n_layer: int, dim: int) -> str | None:
    """LlamaGen's name of a (layers, width) pair, e.g. 'GPT-XL'; None for no published size."""
    return next((n for n, (nl, _, d) in LLAMAGEN_GPT_SIZES.items() if (nl, d) == (n_layer, dim)), None)


def _describe_config(config: GeneratorConfig) -> str:
    cfg = config.backbone
    name = _size_name(cfg.n_layer, cfg.dim) or "GPT"
    if config.condition == "text":
        text = f"{cfg.prefix_len} x {config.text_dim} text"
        return f"a LlamaGen {name} text-to-image model ({cfg.n_layer} layers, dim {cfg.dim}, {text})"
    return f"a LlamaGen {name} class-to-image model ({cfg.n_layer} layers, dim {cfg.dim}, vocab {config.vocab_size})"


def check_gpt_kind(shapes: Mapping[str, torch.Size], config: GeneratorConfig, source: str) -> None:
    """Refuse another model or size with one line saying what the file holds and what was expected (the
    key-by-key check would list dozens of keys instead)."""
    found = describe_llamagen_state(shapes)
    cfg = config.backbone
    wanted_kind = "class-to-image" if config.condition == "class" else "text-to-image"
    same = (
        found.startswith("a LlamaGen ")
        and wanted_kind in found
        and f"({cfg.n_layer} layers, dim {cfg.dim}," in found
    )
    if not same:
        raise ValueError(f"{source} holds {found}; expected {_describe_config(config)}")


# --------------------------------------------------------------------------------------------------------
# VQ tokenizer
# --------------------------------------------------------------------------------------------------------


def llamagen_vq_config(
    name: str = "VQ-16", resolution: int = 256, codebook_size: int = 16384, codebook_embed_dim: int = 8
) -> VQConfig:
    """LlamaGen's ``VQ_16`` / ``VQ_8`` as a ``VQConfig``. The model is convolutional: ``resolution`` only
    sets the image size this tokenizer accepts (vq_ds16_c2i is used at 256, 384 and 512)."""
    if name not in LLAMAGEN_VQ_CH_MULT:
        raise ValueError(f"unknown LlamaGen VQ model {name!r}; known: {sorted(LLAMAGEN_VQ_CH_MULT)}")
    ch_mult = LLAMAGEN_VQ_CH_MULT[name]
    downsample = 2 ** (len(ch_mult) - 1)
    if resolution % downsample:
        raise ValueError(f"{name} downsamples by {downsample}; resolution {resolution} must divide by it")
    return VQConfig(
        resolution=resolution,
        in_channels=3,
        ch=128,
        ch_mult=ch_mult,
        encoder_res_blocks=2,
        decoder_res_blocks=3,
        z_channels=256,
        codebook_size=codebook_size,
        codebook_embed_dim=codebook_embed_dim,
        commit_beta=0.25,
        norm_groups=32,
        dropout=0.0,
    )


def llamagen_vq_keys(keys: Iterable[str]) -> dict[str, str]:
    """Our VQ key -> the official key: same names, minus ``quantize.codebook_used`` and loss modules."""
    return {
        clean: saved
        for clean, saved in unwrapped_keys(keys).items()
        if clean not in VQ_DROPPED_KEYS and not clean.startswith(VQ_DROPPED_PREFIXES)
    }


def convert_llamagen_vq(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official VQ state dict -> ours: same names, minus ``quantize.codebook_used`` and loss modules."""
    return {ours: state[theirs] for ours, theirs in llamagen_vq_keys(state).items()}


def load_llamagen_vq(
    path_or_state: str | Path | Mapping[str, torch.Tensor],
    config: VQConfig | str = "VQ-16",
    use_ema: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> VQTokenizer:
    """A ``VQTokenizer`` (eval mode; fp32 unless ``dtype``) from an official LlamaGen VQ checkpoint or its
    state dict.

    Args:
        config: a ``VQConfig`` or a LlamaGen name (``"VQ-16"``, ``"VQ-8"``; 256 px).
    """
    if isinstance(config, str):
        config = llamagen_vq_config(config)
    state, source = _state_from(path_or_state, use_ema)
    found = describe_llamagen_state(shapes_of(state))
    if not found.startswith("a VQ tokenizer"):
        raise ValueError(
            f"{source} holds {found}; expected a LlamaGen VQ tokenizer (codebook {config.codebook_size} x "
            f"{config.codebook_embed_dim})"
        )
    return materialise(lambda: VQTokenizer(config), state, llamagen_vq_keys(state), source, dtype, device)


# --------------------------------------------------------------------------------------------------------
# GPT (class-conditional)
# --------------------------------------------------------------------------------------------------------


def llamagen_gpt_config(
    name: str = "GPT-B",
    image_size: int = 256,
    downsample: int = 16,
    num_classes: int = 1000,
    vocab_size: int = 16384,
    dropout: float = 0.1,
) -> GeneratorConfig:
    """LlamaGen's c2i ``GPT_models[name]`` as a ``GeneratorConfig`` for a grid of image_size // downsample.

    ``dropout`` is LlamaGen's resid/ffn dropout (0.1 in training; no effect in eval mode). LlamaGen also
    drops whole input embeddings (``token_dropout_p=0.1``) in training, which our backbone does not do.
    """
    if name not in LLAMAGEN_GPT_SIZES:
        raise ValueError(f"unknown LlamaGen GPT model {name!r}; known: {list(LLAMAGEN_GPT_SIZES)}")
    if image_size % downsample:
        raise ValueError(f"image_size {image_size} must divide by the tokenizer's downsample {downsample}")
    n_layer, n_head, dim = LLAMAGEN_GPT_SIZES[name]
    backbone = BackboneConfig(
        dim=dim,
        n_layer=n_layer,
        n_head=n_head,
        n_kv_head=None,
        multiple_of=256,
        ffn_dim_multiplier=None,
        norm_eps=1e-5,
        rope_base=10000.0,
        grid_size=image_size // downsample,
        prefix_len=1,
        zero_prefix_rope=True,
        dropout=dropout,
    )
    return GeneratorConfig(
        vocab_size=vocab_size,
        num_classes=num_classes,
        class_dropout_prob=0.1,
        backbone=backbone,
        initializer_range=0.02,
    )


def _gpt_key(key: str) -> str:
    if key.startswith(("layers.", "norm.")):
        return "backbone." + key
    if key.startswith("output."):
        return "head." + key
    return key  # tok_embeddings.*, cls_embedding.embedding_table.*; anything else fails the key check


def llamagen_gpt_keys(keys: Iterable[str]) -> dict[str, str]:
    """Our ``ImageGenerator`` key -> the official c2i GPT key, minus recomputed buffers (RoPE, caches)."""
    return {
        _gpt_key(clean): saved
        for clean, saved in unwrapped_keys(keys).items()
        if clean not in GPT_DROPPED_KEYS and ".kv_cache." not in clean
    }


def _refuse_t2i(keys: Iterable[str]) -> None:
    if any(k.startswith("cls_embedding.cap_proj.") or k == "cls_embedding.uncond_embedding" for k in keys):
        raise ValueError(
            "this is a LlamaGen text-to-image (t2i) checkpoint (it has cls_embedding.cap_proj / "
            "uncond_embedding); only class-to-image (c2i) checkpoints convert to ImageGenerator"
        )


def convert_llamagen_gpt(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official c2i GPT state dict -> ``ImageGenerator`` names, minus recomputed buffers."""
    _refuse_t2i(unwrapped_keys(state))
    return {ours: state[theirs] for ours, theirs in llamagen_gpt_keys(state).items()}


def load_llamagen_gpt(
    path_or_state: str | Path | Mapping[str, torch.Tensor],
    config: GeneratorConfig | str,
    use_ema: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> ImageGenerator:
    """A ``ImageGenerator`` (eval mode; fp32 unless ``dtype``) from an official LlamaGen c2i checkpoint or
    state dict, in bounded memory: the file is mapped, not read, and each tensor is cast on its own, so
    GPT-3B in bf16 needs its 6 GB and not the 12 GB fp32 file on top (see ``convert.checkpoint``).

    Args:
        config: a ``GeneratorConfig`` or a LlamaGen name such as ``"GPT-B"`` (256 px, ds16, 1000 classes).
        dtype, device: where the weights end up (default fp32 on the CPU).
    Raises:
        ValueError: the file holds another model or size (one line: what it holds, what was expected),
            a text-to-image model, a corrupt or truncated file, or pickled objects beyond tensors.
    """
    if isinstance(config, str):
        config = llamagen_gpt_config(config)
    state, source = _state_from(path_or_state, use_ema)
    check_gpt_kind(shapes_of(state), config, source)
    return materialise(lambda: ImageGenerator(config), state, llamagen_gpt_keys(state), source, dtype, device)


# --------------------------------------------------------------------------------------------------------
# Official checkpoints -> save_pretrained folders
# --------------------------------------------------------------------------------------------------------


def convert_llamagen_to_pretrained(
    vq_checkpoint: str | Path,
    gpt_checkpoint: str | Path,
    out_dir: str | Path,
    gpt_model: GeneratorConfig | str = "GPT-B",
    vq_model: VQConfig | str = "VQ-16",
    image_size: int = 256,
    num_classes: int = 1000,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``out_dir/tokenizer`` and ``out_dir/generator`` (config.json + model.safetensors each), the
    layout of a preset's weights folder, from LlamaGen's official ``.pt`` files.

    Args:
        gpt_model, vq_model: LlamaGen names (built for ``image_size`` and ``num_classes``) or full configs.
        dtype: storage dtype for floating tensors (e.g. ``torch.bfloat16`` halves the files); as loaded
            (fp32) if None.
    """
    out_dir = Path(out_dir)
    if isinstance(vq_model, str):
        vq_model = llamagen_vq_config(vq_model, resolution=image_size)
    if isinstance(gpt_model, str):
        gpt_model = llamagen_gpt_config(
            gpt_model, image_size=vq_model.resolution, downsample=vq_model.downsample, num_classes=num_classes
        )
    if gpt_model.backbone.grid_size != vq_model.grid_size or gpt_model.vocab_size != vq_model.codebook_size:
        raise ValueError(
            f"generator ({gpt_model.backbone.grid_size}x{gpt_model.backbone.grid_size} grid, vocab "
            f"{gpt_model.vocab_size}) does not fit the tokenizer ({vq_model.grid_size}x{vq_model.grid_size} "
            f"grid, {vq_model.codebook_size} codes)"
        )
    tokenizer = load_llamagen_vq(vq_checkpoint, vq_model)
    tokenizer.save_pretrained(out_dir / "tokenizer", dtype=dtype)
    del tokenizer
    # Loaded straight in the storage dtype and streamed out: GPT-3B never has two copies in memory.
    generator = load_llamagen_gpt(gpt_checkpoint, gpt_model, dtype=dtype)
    save_pretrained_bounded(generator, out_dir / "generator", dtype=dtype)
    return out_dir

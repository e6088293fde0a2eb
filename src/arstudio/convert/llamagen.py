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

import argparse
import pickle
import re
from pathlib import Path

import torch

from arstudio.generators.backbone import BackboneConfig
from arstudio.generators.image import GeneratorConfig, ImageGenerator
from arstudio.io import check_state_dict, load_safetensors
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

# Where LlamaGen's samplers look for the weights inside a checkpoint, in their order.
NESTINGS = ("model", "module", "state_dict")
# Prefixes added by DDP (``model.module``) and torch.compile (``_orig_mod``) when a wrapper was saved.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Training-only VQ entries: the usage window, and loss modules if a whole training wrapper was saved.
VQ_DROPPED_PREFIXES = ("discriminator.", "perceptual_loss.", "lpips.", "vq_loss.")
VQ_DROPPED_KEYS = ("quantize.codebook_used",)
# Recomputed GPT buffers: older LlamaGen versions registered the RoPE table; caches exist after sampling.
GPT_DROPPED_KEYS = ("freqs_cis", "causal_mask")


# --------------------------------------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------------------------------------


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _torch_load(path: Path):
    """``torch.load(weights_only=True)``, with ``argparse.Namespace`` allowed (LlamaGen saves its args).

    A Namespace is a plain attribute bag: allowing it lets no code run while unpickling.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found:  # a class or function the allowlist refuses: loading it would run code
            raise ValueError(
                f"{str(path)!r} holds Python objects ({found.group(1)}) that torch.load(weights_only=True) "
                "refuses to unpickle, so it is not loaded: unpickling them could run arbitrary code. Official "
                "LlamaGen checkpoints hold only tensors and plain containers; if you trust this file, "
                "re-save its state dict alone (torch.save(ckpt['model'], ...)) or as safetensors."
            ) from err
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\n", str(err) + "\n")
        reason = detail.group(1).strip() if detail else str(err).splitlines()[0]
        raise ValueError(f"{str(path)!r} is not a PyTorch checkpoint (unpickling failed: {reason})") from err
    except EOFError as err:
        raise ValueError(f"{str(path)!r} is not a PyTorch checkpoint (empty or truncated file)") from err
    except Exception as err:  # torch.load fails on junk with KeyError, RuntimeError, ...
        raise ValueError(f"{str(path)!r} is not a PyTorch checkpoint ({type(err).__name__}: {err})") from err


def load_official_checkpoint(path: str | Path, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Read an official ``.pt`` checkpoint (or a ``.safetensors`` file) into a flat state dict on CPU.

    Nestings are unwrapped the way LlamaGen's samplers do: ``"model"``, then ``"module"``, then
    ``"state_dict"``, else the file itself when it is already a flat state dict (FSDP exports).

    Args:
        use_ema: take ``"ema"`` (the EMA weights some training runs save) instead of ``"model"``; an error
            if the checkpoint has none. LlamaGen's samplers use ``"model"``, hence the default.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    obj = _torch_load(path)
    trail = []
    if use_ema:
        if not isinstance(obj, dict) or "ema" not in obj:
            found = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{str(path)!r} has no 'ema' weights (top level: {found})")
        trail.append("ema")
        obj = obj["ema"]
    for _ in range(4):  # e.g. {"state_dict": {"model": {...}}}
        if _is_state_dict(obj):
            return dict(obj)
        key = next((k for k in NESTINGS if k in obj), None) if isinstance(obj, dict) else None
        if key is None:
            break
        trail.append(key)
        obj = obj[key]
    where = "".join(f"[{k!r}]" for k in trail) or "the top level"
    found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(
        f"no state dict found in {str(path)!r}: at {where} it holds {found}; expected the weights under "
        f"one of {list(NESTINGS)} or a flat dict of tensors"
    )


def _state_from(path_or_state, use_ema: bool) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(path_or_state, dict):
        return path_or_state, "state dict"
    return load_official_checkpoint(path_or_state, use_ema=use_ema), str(path_or_state)


def _strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop ``module.`` / ``_orig_mod.`` when *every* key carries it (a saved DDP or compiled wrapper)."""
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> torch.nn.Module:
    check_state_dict(model, state, source=source)
    reference = model.state_dict()
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()})
    return model.eval()


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


def convert_llamagen_vq(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official VQ state dict -> ours: same names, minus ``quantize.codebook_used`` and loss modules."""
    state = _strip_wrapper_prefixes(state)
    return {
        k: v for k, v in state.items() if k not in VQ_DROPPED_KEYS and not k.startswith(VQ_DROPPED_PREFIXES)
    }


def load_llamagen_vq(
    path_or_state: str | Path | dict[str, torch.Tensor],
    config: VQConfig | str = "VQ-16",
    use_ema: bool = False,
) -> VQTokenizer:
    """A ``VQTokenizer`` (eval mode, fp32) from an official LlamaGen VQ checkpoint or its state dict.

    Args:
        config: a ``VQConfig`` or a LlamaGen name (``"VQ-16"``, ``"VQ-8"``; 256 px).
    """
    if isinstance(config, str):
        config = llamagen_vq_config(config)
    state, source = _state_from(path_or_state, use_ema)
    return _load_into(VQTokenizer(config), convert_llamagen_vq(state), source)


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


def convert_llamagen_gpt(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official c2i GPT state dict -> ``ImageGenerator`` names, minus recomputed buffers."""
    state = _strip_wrapper_prefixes(state)
    if any(k.startswith("cls_embedding.cap_proj.") or k == "cls_embedding.uncond_embedding" for k in state):
        raise ValueError(
            "this is a LlamaGen text-to-image (t2i) checkpoint (it has cls_embedding.cap_proj / "
            "uncond_embedding); only class-to-image (c2i) checkpoints convert to ImageGenerator"
        )
    return {_gpt_key(k): v for k, v in state.items() if k not in GPT_DROPPED_KEYS and ".kv_cache." not in k}


def load_llamagen_gpt(
    path_or_state: str | Path | dict[str, torch.Tensor],
    config: GeneratorConfig | str,
    use_ema: bool = False,
) -> ImageGenerator:
    """A ``ImageGenerator`` (eval mode, fp32) from an official LlamaGen c2i checkpoint or state dict.

    Args:
        config: a ``GeneratorConfig`` or a LlamaGen name such as ``"GPT-B"`` (256 px, ds16, 1000 classes).
    """
    if isinstance(config, str):
        config = llamagen_gpt_config(config)
    state, source = _state_from(path_or_state, use_ema)
    return _load_into(ImageGenerator(config), convert_llamagen_gpt(state), source)


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
    generator = load_llamagen_gpt(gpt_checkpoint, gpt_model)
    generator.save_pretrained(out_dir / "generator", dtype=dtype)
    return out_dir

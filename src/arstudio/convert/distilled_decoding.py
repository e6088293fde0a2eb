"""Distilled Decoding's released LlamaGen models (``microsoft/distilled_decoding``: ``LlamaGen-DD/llamagen-B.pt``,
``llamagen-L.pt``) -> ``DDGenerator``, the ``dd1`` model of ``llamagen-b-256`` / ``llamagen-l-256``.

Facts used here, from DD's LlamaGen fork (``autoregressive/models/dd.py``, ``autoregressive/sample/
eval_fewstep.py``, ``eval_combine_sample.py``, ``README.md``):

* ``DDTransformer`` is LlamaGen's GPT (same ``layers.*``, ``norm``, ``output``, ``cls_embedding``, zeroed prefix
  RoPE) with ``tok_embeddings`` a Linear(8 -> dim) over codebook vectors, ``n_d_embed`` (2, dim) added to every
  row of [condition; tokens] (flag 1 for the condition and the known tokens, 0 for noise: ``arange(N + 1) <= t``)
  and ``final_layer_conti`` (PixArt's FinalLayer: LayerNorm without affine, ``scale_shift_table`` (2, dim) plus
  the class embedding as shift/scale, Linear(dim -> 8)) reading the hidden states *before* the final RMSNorm.
* The samplers run with ``--ema``: the weights are the checkpoint's ``"ema"`` entry (``"model"`` if absent).
* Few-step sampling (``eval_fewstep.py``): positions < ``split_t`` take the codebook vector of the logits' argmax,
  the rest the regressed vector as is; ``--t_list 0`` (one step) or ``0,80`` (two: keep 80 tokens, the same noise
  after them). ``split_t`` is 80 for B and 130 for L.
* Teacher-involved (``eval_combine_sample.py``, L only): one DD step, keep ``teacher_start_t`` tokens (60, 40 or
  0), the teacher GPT-L 256 samples to token 80 (CFG 2.0, top-k 8000), one DD step from 80 with ``split_t`` 180
  (220 for start 0). Our ``dd1_hybrid`` runs this with the teacher on DD1's flow map over the same noise (the
  teacher's distribution, drawn deterministically) instead of independent draws.
* No CFG at DD inference (class dropout 0): the teacher's guidance is distilled in.

Parity against DD's code on random weights: ``benchmarks/parity_dd.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from arstudio.convert.checkpoint import load_official_checkpoint, materialise, shapes_of
from arstudio.convert.llamagen import (
    GPT_DROPPED_KEYS,
    LLAMAGEN_GPT_SIZES,
    describe_llamagen_state,
    llamagen_gpt_config,
    unwrapped_keys,
)
from arstudio.generators.distilled import DDConfig, DDGenerator
from arstudio.generators.image import GeneratorConfig

DD_REPO = "microsoft/distilled_decoding"
TWO_STEP_START = 80  # --t_list 0,80 for both sizes
# LlamaGen size -> (file in DD_REPO, split_t of the few-step sampler, split_t of the teacher-involved one; 0: none)
LLAMAGEN_DD: dict[str, tuple[str, int, int]] = {
    "GPT-B": ("LlamaGen-DD/llamagen-B.pt", 80, 0),
    "GPT-L": ("LlamaGen-DD/llamagen-L.pt", 130, 180),
}

# Our DDGenerator key -> DD's, for the parts whose names differ (the trunk is renamed as for the c2i GPT)
RENAMED = {
    "flag_embedding.weight": "n_d_embed.weight",
    "vector_head.output.weight": "final_layer_conti.linear.weight",
    "vector_head.output.bias": "final_layer_conti.linear.bias",
    "vector_head.scale_shift_table": "final_layer_conti.scale_shift_table",
}


def _published_splits(config: GeneratorConfig) -> tuple[int, int] | None:
    """(few-step split_t, teacher-involved split_t) of DD's release for this teacher's size; None if unpublished."""
    cfg = config.backbone
    for name, (n_layer, _, dim) in LLAMAGEN_GPT_SIZES.items():
        if (n_layer, dim, cfg.grid_size) == (cfg.n_layer, cfg.dim, 16) and name in LLAMAGEN_DD:
            return LLAMAGEN_DD[name][1:]
    return None


def llamagen_dd_config(
    teacher: GeneratorConfig | str = "GPT-B",
    image_size: int = 256,
    token_dim: int = 8,
    logits_tokens: int | None = None,
    two_step_start: int | None = None,
    hybrid_logits_tokens: int | None = None,
) -> DDConfig:
    """The ``DDConfig`` of DD's release for a LlamaGen c2i teacher (a config, or a name such as "GPT-L"): its
    trunk, DD's vector head and prefix flag, and the README's ``split_t`` (80 / 130, teacher-involved 180 for L)
    and two-step start (80) unless given. Sizes DD did not publish (e.g. a tiny test model) default like
    ``DDConfig.for_teacher``: both at 5/16 of the tokens."""
    if isinstance(teacher, str):
        teacher = llamagen_gpt_config(teacher, image_size=image_size)
    if teacher.condition != "class":
        raise ValueError("Distilled Decoding released class-to-image models only (no text-to-image DD model)")
    fallback = max(1, 5 * teacher.backbone.grid_size**2 // 16)
    split, hybrid = _published_splits(teacher) or (fallback, 0)
    start = TWO_STEP_START if _published_splits(teacher) else fallback
    return DDConfig(
        vocab_size=teacher.vocab_size,
        num_classes=teacher.num_classes,
        token_dim=token_dim,
        backbone=dataclasses.replace(teacher.backbone, dropout=0.0),
        condition="class",
        class_dropout_prob=0.0,
        initializer_range=teacher.initializer_range,
        logits_tokens=split if logits_tokens is None else logits_tokens,
        two_step_start=start if two_step_start is None else two_step_start,
        method="dd1",
        vector_head="pixart",
        flag_prefix=True,
        hybrid_logits_tokens=hybrid if hybrid_logits_tokens is None else hybrid_logits_tokens,
    )


def _dd_key(key: str) -> str:
    if key.startswith(("layers.", "norm.")):
        return "backbone." + key
    if key.startswith("output."):
        return "head." + key
    return {theirs: ours for ours, theirs in RENAMED.items()}.get(key, key)


def dd_keys(keys: Iterable[str]) -> dict[str, str]:
    """Our ``DDGenerator`` key -> the key in DD's checkpoint, minus recomputed buffers (RoPE, caches); a key
    of another model keeps its name and fails the key check by name."""
    return {
        _dd_key(clean): saved
        for clean, saved in unwrapped_keys(keys).items()
        if clean not in GPT_DROPPED_KEYS and ".kv_cache." not in clean
    }


def _describe(config: DDConfig) -> str:
    return f"a Distilled Decoding (DD) model ({config.backbone.n_layer} layers, dim {config.backbone.dim})"


def load_llamagen_dd(
    path_or_state: str | Path | Mapping[str, torch.Tensor],
    config: DDConfig | str = "GPT-B",
    use_ema: bool | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> DDGenerator:
    """A ``DDGenerator`` (eval mode; fp32 unless ``dtype``) from DD's released ``llamagen-{B,L}.pt`` or its state
    dict, in bounded memory (see ``convert.checkpoint``).

    Args:
        config: a ``DDConfig`` or the teacher's LlamaGen name ("GPT-B", "GPT-L"; 256 px).
        use_ema: None (default): the checkpoint's ``"ema"`` weights when it has them, as DD's samplers load them.
    Raises:
        ValueError: the file holds another model (a LlamaGen GPT, a VQ) or size, or is corrupt (one line each).
    """
    if isinstance(config, str):
        config = llamagen_dd_config(config)
    if isinstance(path_or_state, Mapping):
        state, source = path_or_state, "state dict"
    else:
        state, source = load_official_checkpoint(path_or_state, use_ema=use_ema), repr(str(path_or_state))
    found = describe_llamagen_state(shapes_of(state))
    if not found.startswith(_describe(config)):
        raise ValueError(f"{source} holds {found}; expected {_describe(config)} from {DD_REPO}")
    return materialise(lambda: DDGenerator(config), state, dd_keys(state), source, dtype, device)

"""LANTERN's published EAGLE drafters for LlamaGen t2i (``jadohu/llamagen_drafter`` for stage I, 256 px;
``jadohu/llamagen2_drafter`` for stage II, 512 px) -> our ``Drafter``, for ``decoding="speculative"`` / ``"lantern"``.

Facts used here, from LANTERN's code (``models/drafters/cnets_llamagen.py``, ``models/ea_model_llamagen.py``,
``data/configs/llamagen_t2i_config.json``):

* The drafter (``Model``) is EAGLE-1's: ``fc`` = Linear(2H -> H, bias) over [token embedding; target hidden state],
  then ONE Llama decoder layer (``layers.0``: separate q/k/v/o projections, no biases, SwiGLU ``mlp`` with
  gate/up/down, ``post_attention_layernorm`` eps 1e-6) and no final norm; its output goes straight to the target's
  ``lm_head``. Layer 0 has no ``input_layernorm`` (EAGLE skips the attention pre-norm of its first layer).
* ``embed_tokens`` is a frozen copy of the target's token embedding, saved with the drafter. It is not kept
  (our drafter reads the target's), only checked against the target and its row 0 kept: LANTERN feeds the drafter
  ``input_ids = [0] * 120 + image tokens`` shifted by one, so the 119 caption positions before the last read token
  0's embedding (our ``prefix_embedding``).
* RoPE: LlamaGen's 2D table with ``cls_token_num = 119`` zero rows (the target has 120): drafter position j uses the
  target's rotation for j + 1, i.e. a drafter prefix one shorter than the target's.
* Files: ``config.json`` + ``pytorch_model.bin`` (``model.safetensors`` if that fails), a flat state dict.

Parity of the draft logits against ``cnets_llamagen.Model`` on random weights: ``benchmarks/parity_lantern_drafter.py``.
"""

from __future__ import annotations

import dataclasses
import json
from collections import ChainMap
from collections.abc import Mapping
from pathlib import Path

import torch

from arstudio.convert.checkpoint import load_official_checkpoint, materialise, shapes_of
from arstudio.convert.llamagen import unwrapped_keys
from arstudio.generators.drafter import Drafter, DrafterConfig
from arstudio.generators.image import GeneratorConfig

WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")  # in LANTERN's order of trying
EAGLE_NORM_EPS = 1e-6

# Our Drafter key -> EAGLE's (layer 0); "<...>" keys are computed from the file (see load_lantern_drafter)
RENAMED = {
    "fc.weight": "fc.weight",
    "fc.bias": "fc.bias",
    "backbone.layers.0.attention.wqkv.weight": "<qkv>",
    "backbone.layers.0.attention.wo.weight": "layers.0.self_attn.o_proj.weight",
    "backbone.layers.0.feed_forward.w1.weight": "layers.0.mlp.gate_proj.weight",
    "backbone.layers.0.feed_forward.w3.weight": "layers.0.mlp.up_proj.weight",
    "backbone.layers.0.feed_forward.w2.weight": "layers.0.mlp.down_proj.weight",
    "backbone.layers.0.ffn_norm.weight": "layers.0.post_attention_layernorm.weight",
    "backbone.layers.0.attention_norm.weight": "<ones>",  # the pass-through slots keep an unused weight
    "backbone.norm.weight": "<ones>",
    "prefix_embedding": "<token 0>",
}
QKV = tuple(f"layers.0.self_attn.{x}_proj.weight" for x in "qkv")
KNOWN = {*RENAMED.values(), *QKV, "embed_tokens.weight"}


def lantern_drafter_config(target: GeneratorConfig) -> DrafterConfig:
    """The ``DrafterConfig`` of LANTERN's drafter for a LlamaGen t2i target: one block of the target's width,
    EAGLE's norms, a prefix one shorter (RoPE), token 0's embedding on the prefix."""
    backbone = dataclasses.replace(
        target.backbone,
        n_layer=1,
        norm_eps=EAGLE_NORM_EPS,
        dropout=0.0,
        prefix_len=target.backbone.prefix_len - 1,
    )
    return DrafterConfig(backbone=backbone, input_norm=False, output_norm=False, prefix_embedding=True)


def _weights_file(path: Path) -> Path:
    if not path.is_dir():
        return path
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    found = sorted(p.name for p in path.iterdir())[:10]
    raise FileNotFoundError(
        f"{str(path)!r} holds {found or 'nothing'}; expected a LANTERN drafter: config.json + "
        f"one of {list(WEIGHT_FILES)}"
    )


def describe_drafter_state(shapes: Mapping[str, torch.Size]) -> str:
    """'an EAGLE drafter (1 layer, hidden 1280, vocab 16384)' or what the file holds instead."""
    fc = shapes.get("fc.weight")
    if fc is None or len(fc) != 2 or fc[1] != 2 * fc[0]:
        return (
            f"no EAGLE drafter (no fc over [embedding; hidden]; first keys: {', '.join(sorted(shapes)[:4])})"
        )
    layers = len({k.split(".")[1] for k in shapes if k.startswith("layers.")})
    vocab = shapes.get("embed_tokens.weight", (0,))[0]
    return f"an EAGLE drafter ({layers} layer{'s' * (layers != 1)}, hidden {fc[0]}, vocab {vocab})"


def load_lantern_drafter(
    path_or_state: str | Path | Mapping[str, torch.Tensor],
    target,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Drafter:
    """A ``Drafter`` (eval mode, paired with ``target``: fingerprinted) from a LANTERN drafter folder, its weights
    file or its state dict.

    Raises:
        ValueError: another model or size, a drafter trained for another target (its embedding copy differs from
            the target's), or a corrupt file; one line each naming the file.
    """
    from arstudio.generators.drafter import target_fingerprint

    if isinstance(path_or_state, Mapping):
        state, source = dict(path_or_state), "state dict"
    else:
        file = _weights_file(Path(path_or_state))
        state, source = load_official_checkpoint(file), repr(str(file))
        _check_config_json(file.parent / "config.json", target, source)
    state = {clean: state[saved] for clean, saved in unwrapped_keys(state).items()}
    cfg = target.config.backbone
    expected = f"an EAGLE drafter (1 layer, hidden {cfg.dim}, vocab {target.config.vocab_size})"
    found = describe_drafter_state(shapes_of(state))
    if found != expected:
        raise ValueError(f"{source} holds {found}; expected {expected} (LANTERN's drafter for this target)")
    embed = state["embed_tokens.weight"].detach()
    theirs, ours = embed.float(), target.tok_embeddings.weight.detach().float().to(embed.device)
    gap = (theirs - ours).abs().max().item()
    if not gap <= 1e-3 * max(1.0, ours.abs().max().item()):  # fp16 copies allowed; NaN refused too
        raise ValueError(
            f"{source} was trained for another target: its copy of the token embedding differs from this "
            f"generator's by up to {gap:.3g}; expected the drafter of this preset's generator (LANTERN publishes "
            "llamagen_drafter for stage I, llamagen2_drafter for stage II)"
        )
    stray = sorted(set(state) - KNOWN)
    if stray:
        raise ValueError(f"{source} holds keys an EAGLE drafter does not have: {stray[:6]}")
    computed = {
        "<qkv>": torch.cat([state[k].detach() for k in QKV]),
        "<ones>": torch.ones(cfg.dim),
        "<token 0>": embed[0],
    }
    config = dataclasses.replace(
        lantern_drafter_config(target.config), target_fingerprint=target_fingerprint(target)
    )
    return materialise(lambda: Drafter(config), ChainMap(computed, state), RENAMED, source, dtype, device)


def _check_config_json(path: Path, target, source: str) -> None:
    if not path.is_file():
        return
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{str(path)!r} is not a readable JSON config ({err})") from err
    cfg = target.config.backbone
    found = (config.get("num_hidden_layers"), config.get("hidden_size"), config.get("num_attention_heads"))
    if found != (1, cfg.dim, cfg.n_head):
        raise ValueError(
            f"{str(path)!r} describes a drafter with (layers, hidden, heads) = {found}; expected (1, {cfg.dim}, "
            f"{cfg.n_head}) for {source}"
        )

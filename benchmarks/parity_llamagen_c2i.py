"""Parity of the LlamaGen c2i converter at every published size against LlamaGen's own code, on random weights.

    python -m benchmarks.parity_llamagen_c2i --llamagen-src /path/to/LlamaGen [--model GPT-XL] [--layers N]

``--llamagen-src`` is a checkout of https://github.com/FoundationVision/LlamaGen (``autoregressive/models/gpt.py``
and ``generate.py`` are imported from it; nothing of it is copied here). Per model:

1. LlamaGen's ``Transformer`` (its ``ModelArgs`` with the size's layers, heads and dim; 384 px = 24x24 tokens,
   vocab 16384, 1000 classes) with its own seeded random init (the zero-initialised output layer re-drawn with
   std 0.02, else every logit is 0).
2. Its ``state_dict()`` saved in the official layout: ``{"model": ...}`` as DDP training saves B/L/XL, a flat
   dict as FSDP's consolidated files for XXL/3B (``--from-fsdp``), fp32.
3. That file loaded with ``arstudio.convert.load_llamagen_gpt`` into the preset's config (the loader under test,
   bounded-memory path included).
4. Full-sequence logits on the same random tokens and labels (one of them the null class), fp32: max abs diff
   (tolerance 1e-4); then greedy decoding (top-k 1) with CFG through both samplers (LlamaGen's ``generate``, our
   ``sample_autoregressive``) for ``--check-tokens`` tokens: identical ids expected.

``--layers`` keeps the size's width, heads and head dim (GPT-3B: 100, not a power of two) but fewer blocks, so
XXL and 3B fit this machine's memory twice over (two fp32 copies of 3B are 25 GB); the blocks are identical, so
depth adds nothing the check would see. The default is the full depth for B/L/XL and 4 blocks for XXL/3B.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from arstudio.convert import LLAMAGEN_GPT_SIZES, llamagen_gpt_config, load_llamagen_gpt
from benchmarks.bench_llamagen_speed import import_llamagen, run_ours, run_theirs
from benchmarks.common import finish, header

FSDP_SIZES = ("GPT-XXL", "GPT-3B")  # released as FSDP consolidated (flat) state dicts


def build_theirs(src: Path, name: str, layers: int, grid: int):
    from autoregressive.models.gpt import ModelArgs, Transformer  # importable once import_llamagen ran

    _, n_head, dim = LLAMAGEN_GPT_SIZES[name]
    torch.manual_seed(0)
    args = ModelArgs(
        n_layer=layers,
        n_head=n_head,
        dim=dim,
        vocab_size=16384,
        block_size=grid * grid,
        num_classes=1000,
        cls_token_num=1,
        model_type="c2i",
    )
    model = Transformer(args).eval()
    torch.nn.init.normal_(model.output.weight, std=0.02)
    return model


def full_logits_theirs(model, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """LlamaGen's eval forward over [class, tokens[:-1]]: logits (B, N, vocab), row i predicting token i."""
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    logits, _ = model(tokens[:, :-1], labels, input_pos=positions)
    return logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llamagen-src", type=Path, required=True)
    parser.add_argument(
        "--model", default="GPT-XL", choices=["GPT-B", "GPT-L", "GPT-XL", "GPT-XXL", "GPT-3B"]
    )
    parser.add_argument("--layers", type=int, default=None, help="blocks (default: all; 4 for XXL/3B)")
    parser.add_argument("--image-size", type=int, default=384, choices=[256, 384])
    parser.add_argument("--check-tokens", type=int, default=16, help="greedy tokens compared (0: skip)")
    parser.add_argument("--cfg", type=float, default=1.75)
    args = parser.parse_args()
    full_layers = LLAMAGEN_GPT_SIZES[args.model][0]
    layers = args.layers or (4 if args.model in FSDP_SIZES else full_layers)
    grid = args.image_size // 16
    _, generate = import_llamagen(args.llamagen_src.resolve())
    info = header(f"parity_llamagen_c2i_{args.model}")
    theirs = build_theirs(args.llamagen_src, args.model, layers, grid)
    config = llamagen_gpt_config(args.model, image_size=args.image_size)
    config = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, n_layer=layers))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"c2i_{args.model.removeprefix('GPT-')}_{args.image_size}.pt"
        weights = theirs.state_dict()
        torch.save(weights if args.model in FSDP_SIZES else {"model": weights, "steps": 0}, path)
        start = time.perf_counter()
        ours = load_llamagen_gpt(path, config)
        load_s = time.perf_counter() - start
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 16384, (2, grid * grid), generator=generator)
    labels = torch.tensor([207, 1000])  # a class and the null class
    with torch.no_grad():
        diff = (full_logits_theirs(theirs, tokens, labels) - ours(tokens, labels)).abs().max().item()
        row = {
            "layers": layers,
            "full_layers": full_layers,
            "tokens": grid * grid,
            "load_s": round(load_s, 1),
            "full_sequence_max_abs_diff": diff,
        }
        print(
            f"{args.model} ({layers}/{full_layers} blocks, {grid}x{grid} tokens): full-sequence logits max abs "
            f"diff {diff:.3g} (tolerance 1e-4)"
        )
        if args.check_tokens:
            k = args.check_tokens
            a = run_ours(ours, torch.tensor([207, 3]), args.cfg, top_k=1, max_tokens=k)
            b = run_theirs(generate, theirs, torch.tensor([207, 3]), args.cfg, k, top_k=1).long()
            row["greedy_tokens"] = k
            row["greedy_identical"] = bool((a == b).all())
            print(
                f"greedy with CFG {args.cfg}, {k} tokens x 2 images: {'identical' if row['greedy_identical'] else 'DIFFERENT'}"
            )
    finish(info, {"model": args.model, "llamagen_src": str(args.llamagen_src), "result": row})


if __name__ == "__main__":
    main()

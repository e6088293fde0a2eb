"""Decoding speed against LlamaGen's reference sampler, side by side in one run: same GPT config, same
random weights, CPU, fp32, batch 1 and 16, CFG with a doubled batch in both, top-k 0, temperature 1.

    python -m benchmarks.bench_llamagen_speed --llamagen-src /path/to/LlamaGen [--model GPT-B] [--tokens 256]

``--llamagen-src`` is a checkout of https://github.com/FoundationVision/LlamaGen (only
``autoregressive/models/{gpt,generate}.py`` and ``utils/drop_path.py`` are imported from it); nothing of it
is copied into this repository. The default is the real ``llamagen-b-256`` setting: GPT-B at 256 tokens
(16x16), vocab 16384, 1000 classes, CFG 2.0 (its default), one timed run per sampler and batch size: about
5 minutes on 1 thread of this repo's 2-core CPU machine, most of it batch 16. ``--tokens 64`` (8x8) takes
about a minute; ``--repeats 3`` gives medians.

Per batch size it reports tokens/s of ``arstudio.decoding.sample_autoregressive`` and of LlamaGen's
``generate`` (tokens per image, the CFG twin not counted, median of ``--repeats`` runs, the two taking turns)
and their ratio. For batch 1 it also reports the step time (seconds per token) against the memory-bandwidth
bound: (bytes of the weights read per step + bytes of the KV cache read per step) / measured copy
bandwidth. Weights read per step are every matrix except the two embedding tables (a step reads one row
of those); KV bytes are our sampler's (keys and values of the positions written so far, mean over steps,
both CFG rows). Bandwidth is ``dst.copy_(src)`` on 256 MiB tensors, counted as bytes read + written, best of
5 (with ``--threads`` threads, like the decoding runs). The bound only means something when the weights do
not fit in the last-level cache (GPT-B fp32: ~0.4 GB of matrices).

How LlamaGen's sampler is run: ``generate(model, labels, max_new_tokens=N, cfg_scale=s, cfg_interval=-1,
temperature=1.0, top_k=0, top_p=1.0)`` on its own ``Transformer`` (``GPT_models[name]``) in eval mode. CPU
shims, all applied from this script, none to LlamaGen's files: its source folder goes first on
``sys.path`` (it imports ``utils.drop_path`` as a top-level module); ``torch.compile`` is not used (as in
its ``sample_c2i.py`` without ``--compile``); its ``with torch.backends.cuda.sdp_kernel(...)`` per step is a
no-op on CPU (its deprecation warning is silenced), and is replaced by a null context only if a torch
build lacks it. Same weights: its random init (output layer re-drawn with std 0.02, as LlamaGen zero-inits
it) is loaded into our ``ImageGenerator`` with ``arstudio.convert.load_llamagen_gpt``. As a check that both run the same model, greedy decoding
(top-k 1) of ``--check-tokens`` tokens must give the same tokens in both.

The numbers depend on the machine's load: the CPU pressure at start and end is logged.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from arstudio.convert import LLAMAGEN_GPT_SIZES, llamagen_gpt_config, load_llamagen_gpt
from arstudio.decoding.autoregressive import sample_autoregressive
from arstudio.decoding.logits import SamplingParams
from benchmarks.common import cpu_pressure, finish, header


def import_llamagen(src: Path):
    """LlamaGen's ``GPT_models`` and ``generate`` from a source checkout (shims: see the module doc)."""
    if not (src / "autoregressive" / "models" / "generate.py").is_file():
        raise SystemExit(
            f"--llamagen-src {str(src)!r} is not a LlamaGen checkout (no autoregressive/models/generate.py); "
            "get one with: git clone https://github.com/FoundationVision/LlamaGen"
        )
    sys.path.insert(0, str(src))
    if not hasattr(torch.backends.cuda, "sdp_kernel"):
        torch.backends.cuda.sdp_kernel = lambda **kwargs: contextlib.nullcontext()
    warnings.filterwarnings("ignore", message=".*sdp_kernel.*", category=FutureWarning)  # once per step
    from autoregressive.models.generate import generate
    from autoregressive.models.gpt import GPT_models

    return GPT_models, generate


def build_models(gpt_models, name: str, grid: int, vocab: int, classes: int):
    """LlamaGen's Transformer with a seeded random init, and our ImageGenerator with the same weights."""
    torch.manual_seed(0)
    theirs = gpt_models[name](
        vocab_size=vocab, block_size=grid * grid, num_classes=classes, cls_token_num=1, model_type="c2i"
    ).eval()
    torch.nn.init.normal_(theirs.output.weight, std=0.02)  # LlamaGen zero-inits it: uniform logits
    config = llamagen_gpt_config(name, image_size=grid * 16, vocab_size=vocab, num_classes=classes)
    ours = load_llamagen_gpt(theirs.state_dict(), config).eval()
    return theirs, ours


def run_ours(model, labels, cfg: float, top_k: int = 0, max_tokens: int | None = None) -> torch.Tensor:
    gens = [torch.Generator().manual_seed(i) for i in range(labels.shape[0])]
    stop = None if max_tokens is None else (lambda i, n, t: False if i + 1 >= max_tokens else None)
    params = SamplingParams(guidance_scale=cfg, temperature=1.0, top_k=top_k, top_p=1.0)
    return sample_autoregressive(model, labels, gens, params, callback=stop).tokens


def run_theirs(generate, model, labels, cfg: float, tokens: int, top_k: int = 0) -> torch.Tensor:
    return generate(
        model, labels, tokens, cfg_scale=cfg, cfg_interval=-1, temperature=1.0, top_k=top_k, top_p=1.0
    )


def copy_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Bytes read + written per second by ``dst.copy_(src)`` on ``mib`` MiB tensors (best of ``repeats``)."""
    src = torch.randn(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def bytes_per_step(model, rows: int) -> tuple[int, int]:
    """(matrix weight bytes, mean KV-cache bytes) one cached decoding step of ``rows`` sequences reads."""
    skip = {"tok_embeddings.weight", "cls_embedding.embedding_table.weight"}
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n not in skip)
    cfg = model.config.backbone
    steps = model.seq_len - 1  # decoding steps after the prefill; step i reads prefix + i + 1 positions
    mean_len = cfg.prefix_len + (steps + 1) / 2
    element = next(model.parameters()).element_size()
    kv = 2 * cfg.n_layer * rows * cfg.kv_heads * cfg.head_dim * mean_len * element
    return weights, int(kv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llamagen-src", type=Path, required=True, help="a LlamaGen source checkout")
    parser.add_argument("--model", default="GPT-B", choices=list(LLAMAGEN_GPT_SIZES))
    parser.add_argument("--tokens", type=int, default=256, help="tokens per image, a square (default 256)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--cfg", type=float, default=2.0, help="CFG scale for both (> 1: doubled batch)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--check-tokens", type=int, default=32, help="greedy agreement check length (0: off)")
    args = parser.parse_args()
    grid = math.isqrt(args.tokens)
    if grid * grid != args.tokens:
        parser.error(f"--tokens {args.tokens} is not a square (the model's grid is square)")
    if args.cfg <= 1.0:
        parser.error("--cfg must be > 1: LlamaGen guides only then, and both must run the doubled batch")
    torch.set_num_threads(args.threads)
    gpt_models, generate = import_llamagen(args.llamagen_src.resolve())
    info = header("llamagen_speed")
    theirs, ours = build_models(gpt_models, args.model, grid, args.vocab, args.num_classes)
    n = args.tokens
    setting = (
        f"{args.model}, {n} tokens ({grid}x{grid}), vocab {args.vocab}, cfg {args.cfg}, top-k 0, "
        f"temperature 1, fp32, {args.threads} thread(s)"
    )
    print(f"# {setting}; {sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M parameters")

    results: dict = {"setting": setting}
    with torch.no_grad():
        if args.check_tokens:
            labels = torch.tensor([7])
            k = min(args.check_tokens, n)
            a = run_ours(ours, labels, args.cfg, top_k=1, max_tokens=k)
            b = run_theirs(generate, theirs, labels, args.cfg, k, top_k=1).long()
            same = (a == b).all(dim=0)
            first = int((~same).nonzero()[0]) if not same.all() else None
            results["greedy_check"] = {"tokens": k, "identical": first is None, "first_mismatch": first}
            print(
                f"greedy check, {k} tokens: {'identical' if first is None else f'first mismatch at {first}'}"
            )

        for batch in args.batches:
            labels = torch.arange(batch) % args.num_classes
            runs = {
                "arstudio": lambda: run_ours(ours, labels, args.cfg),  # noqa: B023
                "llamagen": lambda: run_theirs(generate, theirs, labels, args.cfg, n),  # noqa: B023
            }
            warm = min(8, n)  # first calls allocate and pick kernels
            run_ours(ours, labels, args.cfg, max_tokens=warm)
            run_theirs(generate, theirs, labels, args.cfg, warm)
            times = {name: [] for name in runs}
            for r in range(args.repeats):
                for name in runs if r % 2 == 0 else reversed(runs):  # take turns: load drifts over time
                    start = time.perf_counter()
                    runs[name]()
                    times[name].append(time.perf_counter() - start)
            seconds = {name: statistics.median(t) for name, t in times.items()}
            tok_s = {name: batch * n / s for name, s in seconds.items()}
            ratio = tok_s["arstudio"] / tok_s["llamagen"]
            row = {
                "arstudio_tok_s": round(tok_s["arstudio"], 2),
                "llamagen_tok_s": round(tok_s["llamagen"], 2),
                "speedup": round(ratio, 2),
                "runs_s": {k: [round(x, 2) for x in v] for k, v in times.items()},
                "cpu_pressure": cpu_pressure(),
            }
            print(
                f"batch {batch:3d}: arstudio {tok_s['arstudio']:8.1f} tok/s   llamagen {tok_s['llamagen']:8.1f} "
                f"tok/s   x{ratio:.2f}   (runs: {row['runs_s']})"
            )
            if batch == 1:
                bandwidth = copy_bandwidth()
                weight_b, kv_b = bytes_per_step(ours, rows=2)
                bound = (weight_b + kv_b) / bandwidth
                steps = {name: s / n for name, s in seconds.items()}
                row["bandwidth_bound"] = {
                    "copy_bandwidth_gb_s": round(bandwidth / 1e9, 2),
                    "weight_mb_per_step": round(weight_b / 1e6, 1),
                    "kv_mb_per_step": round(kv_b / 1e6, 1),
                    "bound_ms": round(bound * 1e3, 2),
                    "arstudio_step_ms": round(steps["arstudio"] * 1e3, 2),
                    "llamagen_step_ms": round(steps["llamagen"] * 1e3, 2),
                    "arstudio_step_over_bound": round(steps["arstudio"] / bound, 2),
                    "llamagen_step_over_bound": round(steps["llamagen"] / bound, 2),
                }
                print(
                    f"batch 1 step: arstudio {steps['arstudio'] * 1e3:.1f} ms, llamagen "
                    f"{steps['llamagen'] * 1e3:.1f} ms; bound {bound * 1e3:.1f} ms = ({weight_b / 1e6:.0f} MB "
                    f"weights + {kv_b / 1e6:.1f} MB KV) / {bandwidth / 1e9:.1f} GB/s copy bandwidth; "
                    f"arstudio step / bound = {steps['arstudio'] / bound:.2f}"
                )
            results[f"batch {batch}"] = row
    finish(info, {"results": results, "repeats": args.repeats, "llamagen_src": str(args.llamagen_src)})


if __name__ == "__main__":
    main()

"""Loading time and peak memory of the anchors' real-size generators (LlamaGen's c2i GPTs, MAR's mar_base / large
/ huge) from an official-layout checkpoint, in bf16 on the CPU: the path ``load_pipeline("llamagen-3b-384",
dtype=torch.bfloat16)`` (or "mar-huge") takes for the generator.

    python -m benchmarks.bench_anchor_loading [--sizes GPT-XL GPT-XXL GPT-3B mar_base] [--dtype bf16] [--convert]

MAR's files are ``main_mar.py``'s ``{"model": ..., "model_ema": ...}`` (two full fp32 copies, as released); the
loader reads the EMA copy (the pattern below is in the EMA weights only) and checks it with one encoder-decoder
pass and one head call.

Per size, three fresh processes (so one's memory never counts in another's):

1. **write**: a synthetic checkpoint in the official layout (``{"model": state_dict}``, LlamaGen's key names and
   shapes, fp32 as the released DDP/FSDP files) with ``torch.save``. The tensors are zeros backed by sparse
   scratch files (``torch.from_file``), so writing a 12 GB checkpoint needs no 12 GB of RAM; the norm weights
   hold a known pattern that the load step checks.
2. **load**: ``arstudio.convert.load_llamagen_gpt(path, preset config, dtype=bf16)``: the file is mapped, the
   model built with its parameters on the meta device and each tensor cast and assigned on its own. Reports
   seconds, the peak of *anonymous* memory (RssAnon, sampled every 10 ms: what the process owns, the number
   that must stay near one bf16 copy of the model), the peak resident set (VmHWM, which also counts pages of
   the mapped file the kernel can drop), and the bf16 model's own bytes. Then it checks the pattern, that no
   tensor is left on meta, and runs one prefill (finite logits).
3. with ``--convert``: ``convert_llamagen_to_pretrained`` into our layout in bf16 (the ``download=True`` path),
   weights streamed to disk: the same two numbers.

The checkpoint is written to ``--workdir`` (default: a temporary folder, deleted afterwards; GPT-3B needs
12.4 GB of disk) and is probably still in the page cache when it is loaded: times are warm-cache times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from arstudio.convert import LLAMAGEN_GPT_SIZES, llamagen_gpt_config, load_llamagen_gpt
from arstudio.convert.mar import MAR_SIZES, load_mar, mar_config
from arstudio.convert.mar import official_shapes as mar_shapes
from benchmarks.common import finish, header

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def official_shapes(name: str, vocab: int = 16384, classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """LlamaGen's c2i ``Transformer.state_dict()`` key -> shape (gpt.py; FeedForward rounds 8 dim / 3 up to 256)."""
    n_layer, _, dim = LLAMAGEN_GPT_SIZES[name]
    ffn = -(-int(2 * 4 * dim / 3) // 256) * 256
    shapes = {
        "cls_embedding.embedding_table.weight": (classes + 1, dim),
        "tok_embeddings.weight": (vocab, dim),
    }
    for i in range(n_layer):
        shapes |= {
            f"layers.{i}.attention.wqkv.weight": (3 * dim, dim),
            f"layers.{i}.attention.wo.weight": (dim, dim),
            f"layers.{i}.feed_forward.w1.weight": (ffn, dim),
            f"layers.{i}.feed_forward.w3.weight": (ffn, dim),
            f"layers.{i}.feed_forward.w2.weight": (dim, ffn),
            f"layers.{i}.attention_norm.weight": (dim,),
            f"layers.{i}.ffn_norm.weight": (dim,),
        }
    return shapes | {"norm.weight": (dim,), "output.weight": (vocab, dim)}


PATTERN_KEY = {"llamagen": "norm.weight", "mar": "encoder_norm.weight"}


def family(name: str) -> str:
    return "mar" if name in MAR_SIZES else "llamagen"


def pattern(dim: int) -> torch.Tensor:
    return 1 + torch.arange(dim, dtype=torch.float32) / 64  # compared after the same cast as the loader


def _sparse_state(shapes: dict, scratch: Path, tag: str, marked: str | None) -> dict[str, torch.Tensor]:
    """Zeros backed by sparse scratch files (no disk or memory until written); ``marked`` holds the pattern."""
    state = {}
    for index, (key, shape) in enumerate(shapes.items()):
        numel = 1
        for n in shape:
            numel *= n
        file = scratch / f"{tag}{index}"
        with open(file, "wb") as handle:
            handle.truncate(numel * 4)
        state[key] = torch.from_file(str(file), shared=True, size=numel, dtype=torch.float32).view(shape)
        if key == marked:
            state[key].copy_(pattern(shape[0]))
    return state


def write_checkpoint(name: str, path: Path) -> dict:
    scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix="scratch-"))
    try:
        if family(name) == "mar":  # the EMA copy carries the pattern: loading the other copy fails the check
            shapes = {k: tuple(v) for k, v in mar_shapes(mar_config(name)).items()}
            payload = {
                "model": _sparse_state(shapes, scratch, "model", None),
                "model_ema": _sparse_state(shapes, scratch, "ema", PATTERN_KEY["mar"]),
            }
        else:
            payload = {"model": _sparse_state(official_shapes(name), scratch, "", PATTERN_KEY["llamagen"])}
        start = time.perf_counter()
        torch.save(payload, path)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"write_s": round(seconds, 1), "file_gb": round(path.stat().st_size / 1e9, 2)}


class MemorySampler:
    """Peak RssAnon (anonymous memory this process owns) sampled every 10 ms in a thread."""

    def __init__(self):
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self.status("RssAnon"))
            time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, self.status("RssAnon"))


def _load_llamagen(name: str, path: Path, dtype: torch.dtype):
    config = llamagen_gpt_config(name, image_size=384)
    return load_llamagen_gpt(path, config, dtype=dtype), config.backbone.dim


def _run_llamagen(model) -> None:
    with torch.no_grad():
        model.setup_cache(1)
        logits = model.prefill(torch.tensor([207]))
    assert logits.shape == (1, 16384) and bool(torch.isfinite(logits).all())


def _load_mar(name: str, path: Path, dtype: torch.dtype):
    config = mar_config(name)
    return load_mar(path, config, dtype=dtype), config.encoder_dim


def _run_mar(model) -> None:
    """One encoder-decoder pass (nothing known yet) and one head call on its output."""
    c = model.config
    with torch.no_grad():
        tokens = torch.zeros(1, c.seq_len, c.token_dim, dtype=model.z_proj.weight.dtype)
        z = model(tokens, torch.zeros(1, 0, dtype=torch.long), model.class_embedding(torch.tensor([207])))
        out = model.head(tokens[0], torch.full((c.seq_len,), 999), z[0])
    assert out.shape == (c.seq_len, 2 * c.token_dim) and bool(torch.isfinite(out).all())


LOADERS = {"llamagen": (_load_llamagen, _run_llamagen), "mar": (_load_mar, _run_mar)}


def load_checkpoint(name: str, path: Path, dtype: torch.dtype) -> dict:
    load, run = LOADERS[family(name)]
    baseline = MemorySampler.status("RssAnon")
    with MemorySampler() as memory:
        start = time.perf_counter()
        model, dim = load(name, path, dtype)
        seconds = time.perf_counter() - start
    tensors = [*model.parameters(), *model.buffers()]
    assert not any(t.is_meta for t in tensors), "a tensor was left on the meta device"
    marked = model.state_dict()["backbone.norm.weight" if family(name) == "llamagen" else PATTERN_KEY["mar"]]
    assert torch.equal(marked, pattern(dim).to(dtype)), "weights not loaded (or not the EMA copy)"
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    run(model)
    return {
        "load_s": round(seconds, 1),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "model_gb": round(model_bytes / 1e9, 2),
        "peak_anon_gb": round((memory.peak_kb - baseline) * 1024 / 1e9, 2),
        "peak_rss_gb": round(MemorySampler.status("VmHWM") * 1024 / 1e9, 2),
    }


def _convert_llamagen(name: str, path: Path, dtype: torch.dtype, out: Path) -> None:
    from arstudio.convert import convert_llamagen_to_pretrained
    from arstudio.convert.checkpoint import write_safetensors
    from arstudio.convert.llamagen import llamagen_vq_config
    from arstudio.tokenizers.vq import VQTokenizer

    vq = path.with_name("vq.safetensors")  # a random VQ-16 (72M) standing in for vq_ds16_c2i.pt
    write_safetensors(VQTokenizer(llamagen_vq_config("VQ-16", 384)).state_dict(), vq)
    convert_llamagen_to_pretrained(
        vq,
        path,
        out,
        gpt_model=llamagen_gpt_config(name, image_size=384),
        vq_model=llamagen_vq_config("VQ-16", 384),
        dtype=dtype,
    )


def _convert_mar(name: str, path: Path, dtype: torch.dtype, out: Path) -> None:
    from arstudio.convert.checkpoint import write_safetensors
    from arstudio.convert.kl import MAR_KL16
    from arstudio.convert.mar import convert_mar_to_pretrained
    from arstudio.tokenizers.kl import KLTokenizer

    # a random KL-16 (66M, diffusers names) standing in for kl16.ckpt
    vae = path.with_name("kl16.safetensors")
    state = KLTokenizer(MAR_KL16).state_dict()
    write_safetensors({k.removeprefix("vae."): v for k, v in state.items()}, vae)
    convert_mar_to_pretrained(vae, path, out, mar_config(name), MAR_KL16, dtype=dtype)


def convert_checkpoint(name: str, path: Path, dtype: torch.dtype) -> dict:
    convert = _convert_mar if family(name) == "mar" else _convert_llamagen
    out = path.with_name("converted")
    baseline = MemorySampler.status("RssAnon")
    with MemorySampler() as memory:
        start = time.perf_counter()
        convert(name, path, dtype, out)
        seconds = time.perf_counter() - start
    size = (out / "generator" / "model.safetensors").stat().st_size
    shutil.rmtree(out)
    return {
        "convert_s": round(seconds, 1),
        "converted_gb": round(size / 1e9, 2),
        "convert_peak_anon_gb": round((memory.peak_kb - baseline) * 1024 / 1e9, 2),
    }


def child(step: str, name: str, path: Path, dtype: str) -> dict:
    """Run one step in a fresh process; its JSON result is the last line of its output."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_anchor_loading",
        "--step",
        step,
        "--sizes",
        name,
        "--dtype",
        dtype,
        "--path",
        str(path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode:
        raise SystemExit(f"{step} {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["GPT-XL"],
        choices=["GPT-B", "GPT-L", "GPT-XL", "GPT-XXL", "GPT-3B", *MAR_SIZES],
    )
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    parser.add_argument("--convert", action="store_true", help="also time the conversion to our layout")
    parser.add_argument("--workdir", type=Path, default=None, help="where the synthetic checkpoints go")
    parser.add_argument("--step", choices=["write", "load", "convert"], help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:  # a child process
        steps = {
            "write": lambda: write_checkpoint(args.sizes[0], args.path),
            "load": lambda: load_checkpoint(args.sizes[0], args.path, DTYPES[args.dtype]),
            "convert": lambda: convert_checkpoint(args.sizes[0], args.path, DTYPES[args.dtype]),
        }
        print(json.dumps(steps[args.step]()))
        return
    # MAR's rows go to their own file, so a MAR run leaves LlamaGen's recorded numbers in place
    mar_only = all(family(name) == "mar" for name in args.sizes)
    info = header("anchor_loading_mar" if mar_only else "anchor_loading")
    workdir = Path(tempfile.mkdtemp(prefix="arstudio-loading-", dir=args.workdir))
    results = {}
    try:
        for name in args.sizes:
            path = workdir / (
                "checkpoint-last.pth" if family(name) == "mar" else f"c2i_{name.removeprefix('GPT-')}_384.pt"
            )
            row = child("write", name, path, args.dtype) | child("load", name, path, args.dtype)
            if args.convert:
                row |= child("convert", name, path, args.dtype)
            path.unlink()
            results[name] = row
            print(
                f"{name}: {row['params_m']}M params, file {row['file_gb']} GB (written in {row['write_s']} s); "
                f"load to {args.dtype}: {row['load_s']} s, peak anonymous memory {row['peak_anon_gb']} GB for a "
                f"{row['model_gb']} GB model (peak RSS incl. mapped file pages {row['peak_rss_gb']} GB)"
                + (
                    f"; convert: {row['convert_s']} s, peak anonymous {row['convert_peak_anon_gb']} GB"
                    if args.convert
                    else ""
                ),
                flush=True,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    finish(info, {"dtype": args.dtype, "sizes": results})


if __name__ == "__main__":
    main()

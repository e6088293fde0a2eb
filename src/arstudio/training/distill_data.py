"""DD1's training set: (noise, tokens) pairs made by the teacher alone through the flow map (no images).

Each chunk of ``chunk`` pairs draws its labels and noise from its own seeded generator, so a resumed run
makes exactly the pairs an uninterrupted one would have; the table is rewritten after every few chunks.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from arstudio.decoding.distilled import teacher_flow_tokens
from arstudio.decoding.flow_map import DEFAULT_FLOW_STEPS
from arstudio.decoding.logits import SamplingParams
from arstudio.io import atomic_write_bytes, load_safetensors

PAIRS_FILE = "dd1_pairs.safetensors"


def teacher_sampling(pipe) -> SamplingParams:
    """The teacher distribution DD distils: the preset's default sampling (see decoding/distilled.py)."""
    return SamplingParams.from_defaults(pipe.preset.defaults)


def _chunk_pairs(pipe, seed: int, index: int, count: int, flow_steps: int):
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    teacher = pipe.generator
    labels = torch.randint(0, teacher.config.num_classes, (count,), generator=generator)
    codebook = pipe.tokenizer.codebook_vectors().detach().float()
    # Rounded to fp16 before use: the stored noise is then exactly the noise the tokens were made from.
    noise = torch.randn(count, teacher.seq_len, codebook.shape[1], generator=generator).half().float()
    tokens = teacher_flow_tokens(
        teacher, labels, noise, codebook, teacher_sampling(pipe), flow_steps=flow_steps
    ).tokens
    return noise, tokens, labels


@torch.no_grad()
def load_or_make_pairs(
    out_dir: Path,
    pipe,
    num_pairs: int,
    seed: int = 0,
    chunk: int = 256,
    flow_steps: int = DEFAULT_FLOW_STEPS,
    save_every_chunks: int = 2,
) -> dict:
    """{"noise" (M, N, d) float32, "tokens" (M, N) int64, "cond" (M,) int64}, made once and cached."""
    from safetensors.torch import save

    if pipe.generator.config.condition != "class":
        raise ValueError("DD pair generation supports class-conditional teachers (shapes-c2i) so far")
    if getattr(pipe.generator, "control_encoder", None) is not None:
        raise ValueError(
            f"{pipe.preset.name!r} has a control encoder: control presets decode with 'ar' only, so a DD model "
            "distilled from it could never be loaded; distil its base preset (e.g. shapes-c2i) instead"
        )
    path = Path(out_dir) / PAIRS_FILE
    table = {"noise": [], "tokens": [], "cond": []}
    done = 0
    if path.is_file():
        stored = load_safetensors(path)
        table = {k: [v] for k, v in stored.items()}
        done = stored["tokens"].shape[0]
    chunks = -(-num_pairs // chunk)
    bar = tqdm(range(done // chunk, chunks), desc="dd1 pairs", initial=done // chunk, total=chunks)
    for index in bar:
        count = min(chunk, num_pairs - index * chunk)
        noise, tokens, labels = _chunk_pairs(pipe, seed, index, count, flow_steps)
        table["noise"].append(noise.half())
        table["tokens"].append(tokens.to(torch.int16))
        table["cond"].append(labels)
        if (index + 1) % save_every_chunks == 0 or index + 1 == chunks:
            merged = {k: torch.cat(v).contiguous() for k, v in table.items()}
            atomic_write_bytes(path, save(merged))
            table = {k: [v] for k, v in merged.items()}
    merged = {k: torch.cat(v)[:num_pairs] for k, v in table.items()}
    return {
        "noise": merged["noise"].float(),
        "tokens": merged["tokens"].long(),
        "cond": merged["cond"].long(),
    }

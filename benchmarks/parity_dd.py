"""Parity of the Distilled Decoding converter and samplers against DD's released code, on random weights.

    python -m benchmarks.parity_dd --dd-src /path/to/distilled_decoding [--model GPT-B GPT-L] [--batch 2]

``--dd-src`` is a checkout of https://github.com/microsoft/distilled_decoding (its ``LlamaGen/`` fork: ``dd.py``,
``sample/eval_fewstep.py`` and ``eval_combine_sample.py`` are imported from it; nothing of it is copied here).
Per model (DD-B, DD-L at 256 px, full depth):

1. DD's ``DDTransformer`` with its own seeded random init (the zero-initialised logits layer re-drawn with std
   0.02) over a random l2-normalised 16384 x 8 codebook.
2. Saved as the released files are read: ``{"model": <other weights>, "ema": <these>}`` (the samplers run with
   ``--ema``; the decoy "model" entry proves the converter takes "ema").
3. Loaded with ``arstudio.convert.distilled_decoding.load_llamagen_dd`` (the preset's config: split_t 80 / 130).
4. Compared on the same noise and labels, fp32:
   - one forward at t=0 and at t=80 (logits and regressed vectors, max abs diff; tolerance 1e-4);
   - ``eval_fewstep.py``'s one-step (``--t_list 0``) and two-step (``--t_list 0,80``) loops, run with DD's own
     ``perturb_data`` / ``final_predict`` / ``get_final_x_BLC``, against ``decoding.distilled.sample_distilled``:
     the vectors sent to the VQ decoder (max abs diff) and the token ids (identical expected);
   - the last step of ``eval_combine_sample.py``'s teacher-involved sampler (given the teacher's first 80
     tokens, the same noise after them, ``split_t`` 180 for L) against our hybrid's last step. The teacher's own
     part is LlamaGen's AR sampling (its parity: benchmarks/parity_llamagen_c2i.py); DD's script draws it with
     independent random numbers, ours with DD1's flow map on the same noise, so the two are equal in law only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from arstudio.convert.distilled_decoding import (
    LLAMAGEN_DD,
    TWO_STEP_START,
    llamagen_dd_config,
    load_llamagen_dd,
)
from arstudio.decoding.distilled import _continue, sample_distilled
from benchmarks.common import finish, header


def import_dd(src: Path):
    """DD's ``GPT_models`` and the two sampling scripts' modules, from a checkout (repository root or its
    LlamaGen/). Shims: torchvision is not needed (the scripts import save_image only to write PNGs), and the
    scripts' import-time global changes (Linear/LayerNorm without reset_parameters, TF32) are undone."""
    root = src / "LlamaGen" if (src / "LlamaGen").is_dir() else src
    if not (root / "autoregressive" / "models" / "dd.py").is_file():
        raise SystemExit(
            f"--dd-src {str(src)!r} is not a Distilled Decoding checkout (no LlamaGen/autoregressive/models/dd.py); "
            "get one with: git clone https://github.com/microsoft/distilled_decoding"
        )
    sys.path[:0] = [str(root), str(root / "autoregressive")]
    if "torchvision" not in sys.modules:
        utils = types.ModuleType("torchvision.utils")
        utils.save_image = None
        sys.modules |= {"torchvision": types.ModuleType("torchvision"), "torchvision.utils": utils}
    saved = torch.nn.Linear.reset_parameters, torch.nn.LayerNorm.reset_parameters
    precision = torch.get_float32_matmul_precision()
    from autoregressive.models.dd import GPT_models
    from autoregressive.sample import eval_combine_sample, eval_fewstep

    torch.nn.Linear.reset_parameters, torch.nn.LayerNorm.reset_parameters = saved
    torch.set_float32_matmul_precision(precision)
    return GPT_models, eval_fewstep, eval_combine_sample


def their_steps(model, script, noise, labels, codebook, t_list, split, start=None):
    """``eval_fewstep.py``'s loop over ``t_list`` (their functions, their order); ``start``: the data to begin
    from instead of the noise (the teacher-involved sampler's last step)."""
    x = noise if start is None else start
    for t_ar in t_list:
        t = torch.zeros([noise.shape[0]]) + t_ar
        x_t = script.perturb_data(x, t, noise)
        gt_idx = (codebook[:, None, None, :] - x_t).square().sum(dim=-1).argmin(dim=0)
        results = model.final_predict(x_BLC=x_t, cond_idx=labels, timestep=t, idx=gt_idx)
        x = model.get_final_x_BLC(results, split)
    return x


def nearest(x, codebook):
    return (codebook[:, None, None, :] - x).square().sum(dim=-1).argmin(dim=0)


def check_model(name: str, gpt_models, scripts, batch: int) -> dict:
    fewstep, combine = scripts
    _, split, hybrid_split = LLAMAGEN_DD[name]
    torch.manual_seed(0)
    codebook = F.normalize(torch.randn(16384, 8), dim=-1)
    theirs = gpt_models[name](
        vocab_size=16384,
        block_size=256,
        num_classes=1000,
        cls_token_num=1,
        model_type="c2i",
        codebook_dim=8,
        codebook=codebook,
    ).eval()
    torch.nn.init.normal_(theirs.output.weight, std=0.02)  # DD zero-inits it: uniform logits
    decoy = {k: v + 1 for k, v in theirs.state_dict().items()}
    config = llamagen_dd_config(name)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"llamagen-{name.removeprefix('GPT-')}.pt"
        torch.save({"model": decoy, "ema": theirs.state_dict(), "steps": 0}, path)
        began = time.perf_counter()
        ours = load_llamagen_dd(path, config)
        load_s = time.perf_counter() - began
    g = torch.Generator().manual_seed(1)
    noise = torch.randn((batch, 256, 8), generator=g)
    labels = torch.tensor([207, 3, 980, 1][:batch])
    row = {"params_m": round(sum(p.numel() for p in ours.parameters()) / 1e6, 1), "load_s": round(load_s, 1)}
    with torch.no_grad():
        for t in (0, TWO_STEP_START):
            x_t = fewstep.perturb_data(
                codebook[torch.randint(0, 16384, (batch, 256), generator=g)], torch.zeros(batch) + t, noise
            )
            their_vectors, their_logits = theirs(x_t, labels, torch.zeros(batch) + t)
            our_logits, our_vectors = ours(x_t, t, labels)
            row[f"forward_t{t}_logits_max_abs_diff"] = (their_logits - our_logits).abs().max().item()
            row[f"forward_t{t}_vectors_max_abs_diff"] = (their_vectors - our_vectors).abs().max().item()
        for steps, t_list in ((1, [0]), (2, [0, TWO_STEP_START])):
            x_theirs = their_steps(theirs, fewstep, noise, labels, codebook, t_list, split)
            result = sample_distilled(ours, labels, noise, codebook, steps=steps)
            row[f"{steps}step_vectors_max_abs_diff"] = (x_theirs - result.vectors).abs().max().item()
            row[f"{steps}step_ids_identical"] = bool(torch.equal(nearest(x_theirs, codebook), result.tokens))
        if hybrid_split:
            teacher_ids = torch.randint(0, 16384, (batch, TWO_STEP_START), generator=g)
            # eval_combine_sample.py: x = codebook[teacher ids], the noise after them, one step from t=80
            start = torch.cat([codebook[teacher_ids], noise[:, TWO_STEP_START:]], dim=1)
            x_theirs = their_steps(
                theirs, combine, noise, labels, codebook, [TWO_STEP_START], hybrid_split, start
            )
            result = _continue(ours, labels, noise, codebook, teacher_ids, config.hybrid_logits_tokens)
            row["teacher_involved_last_step_vectors_max_abs_diff"] = (
                (x_theirs - result.vectors).abs().max().item()
            )
            row["teacher_involved_last_step_split"] = hybrid_split
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dd-src", type=Path, required=True)
    parser.add_argument("--model", nargs="+", default=list(LLAMAGEN_DD), choices=list(LLAMAGEN_DD))
    parser.add_argument("--batch", type=int, default=2, choices=[1, 2, 3, 4])
    args = parser.parse_args()
    torch.set_num_threads(1)
    gpt_models, *scripts = import_dd(args.dd_src.resolve())
    info = header("parity_dd")
    rows = {}
    for name in args.model:
        rows[name] = row = check_model(name, gpt_models, scripts, args.batch)
        worst = max(v for k, v in row.items() if k.endswith("max_abs_diff"))
        same = all(v for k, v in row.items() if k.endswith("identical"))
        print(
            f"DD-{name.removeprefix('GPT-')} ({row['params_m']}M params): worst max abs diff {worst:.3g} "
            f"(tolerance 1e-4), token ids {'identical' if same else 'DIFFERENT'}"
        )
        for key, value in row.items():
            print(f"  {key}: {value}")
    finish(info, {"dd_src": str(args.dd_src), "batch": args.batch, "results": rows})


if __name__ == "__main__":
    main()

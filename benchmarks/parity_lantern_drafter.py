"""Parity of the LANTERN drafter converter against LANTERN's ``cnets_llamagen.Model``, on random weights.

    python -m benchmarks.parity_lantern_drafter --lantern-src /path/to/LANTERN [--image-size 256] [--tokens 24]

``--lantern-src`` is a checkout of https://github.com/jadohu/LANTERN (``models/drafters/cnets_llamagen.py``,
``models/configs/configs.py`` and ``data/configs/llamagen_t2i_config.json`` are imported/read from it; nothing of it
is copied here). Steps:

1. A LlamaGen t2i target of XL width (``llamagen_t2i_config``; 2 blocks: the drafter only reads the target's
   hidden states, embedding and head) with seeded random weights.
2. LANTERN's drafter ``Model`` built from its t2i config (``--image-size 512``: its ``t2i2`` layout) with a seeded
   random init (RMSNorm weights re-drawn so the norms are visible), ``embed_tokens`` the target's embedding as
   LANTERN's ``load_emb`` copies it; saved as the published folder: ``config.json`` + ``pytorch_model.bin``.
3. That folder loaded with ``arstudio.convert.lantern.load_lantern_drafter``.
4. The same random target hidden states and token ids (``[0] * 120 + image tokens``, shifted by one, as
   ``topK_genrate`` feeds them) through LANTERN's forward and ours, draft logits = the target's head over each:
   max abs diff (tolerance 1e-4, fp32) and identical argmax ids. Ours both ways: the training forward, and the
   decoding path (``HiddenStateDrafting``'s inputs: the caption embeddings at prefix positions, the static cache,
   the prefix as one chunk then one token per step).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import types
from pathlib import Path

import torch

from arstudio.convert.lantern import load_lantern_drafter
from arstudio.convert.llamagen_t2i import LlamaGenT2IGenerator, llamagen_t2i_config
from benchmarks.common import finish, header


def import_lantern(src: Path):
    """``cnets_llamagen.Model`` and ``EConfig`` from a checkout. Shim: ``models/__init__.py`` imports every base
    model (Lumina-mGPT's needs an older transformers), so ``models`` is made a bare namespace first."""
    if not (src / "models" / "drafters" / "cnets_llamagen.py").is_file():
        raise SystemExit(
            f"--lantern-src {str(src)!r} is not a LANTERN checkout (no models/drafters/cnets_llamagen.py); get one "
            "with: git clone https://github.com/jadohu/LANTERN"
        )
    sys.path.insert(0, str(src))
    package = types.ModuleType("models")
    package.__path__ = [str(src / "models")]
    sys.modules["models"] = package
    from models.configs.configs import EConfig
    from models.drafters.cnets_llamagen import Model

    return Model, EConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lantern-src", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=256, choices=[256, 512])
    parser.add_argument("--tokens", type=int, default=24, help="image tokens after the 120 caption positions")
    args = parser.parse_args()
    torch.set_num_threads(1)
    src = args.lantern_src.resolve()
    model_class, econfig = import_lantern(src)
    info = header(f"parity_lantern_drafter_{args.image_size}")

    config = llamagen_t2i_config(args.image_size)
    config = dataclasses.replace(
        config, backbone=dataclasses.replace(config.backbone, n_layer=2, dropout=0.0)
    )
    torch.manual_seed(0)
    target = LlamaGenT2IGenerator(config).eval()
    torch.nn.init.normal_(target.head.output.weight, std=0.02)

    lantern_config = json.loads((src / "data" / "configs" / "llamagen_t2i_config.json").read_text())
    lantern_config["input_type"] = "t2i" if args.image_size == 256 else "t2i2"
    torch.manual_seed(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "llamagen_drafter"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(lantern_config))
        drafter_config = econfig.from_pretrained(str(folder / "config.json"))
        drafter_config.rope_scaling = None  # newer transformers fill in a default dict; the file says null
        theirs = model_class(drafter_config, bias=True).eval()
        with torch.no_grad():
            theirs.embed_tokens.weight.copy_(target.tok_embeddings.weight)
            theirs.layers[0].post_attention_layernorm.weight.normal_(1.0, 0.1)
        torch.save(theirs.state_dict(), folder / "pytorch_model.bin")
        ours = load_lantern_drafter(folder, target).eval()

    prefix, length = config.backbone.prefix_len, config.backbone.prefix_len + args.tokens
    g = torch.Generator().manual_seed(2)
    image_tokens = torch.randint(0, config.vocab_size, (1, args.tokens), generator=g)
    ids = torch.cat([torch.zeros(1, prefix, dtype=torch.long), image_tokens], dim=1)  # LANTERN's input_ids
    hidden = torch.randn((1, length - 1, config.backbone.dim), generator=g)  # target states f_0 .. f_{L-2}
    captions = torch.randn((1, prefix, config.text_dim), generator=g)
    row = {"image_size": args.image_size, "positions": length - 1}
    with torch.no_grad():
        their_out = theirs(hidden, input_ids=ids[:, 1:])  # row j: (f_j, token at j + 1) -> f_{j+1}
        their_logits = target.head(their_out)
        forward_logits = target.head(ours(target.tok_embeddings(ids[:, 1:]), hidden))
        # the decoding path: HiddenStateDrafting feeds the caption embeddings at prefix positions (start), then
        # one (token, f) pair per step against the static cache
        caption_rows = target.cls_embedding(captions)
        next_embeddings = torch.cat(
            [caption_rows[:, 1:], target.tok_embeddings(ids[:, prefix : prefix + 1])], 1
        )
        ours.setup_cache(1, dtype=torch.float32)
        steps = [ours.step(next_embeddings, hidden[:, :prefix], torch.arange(prefix))]
        for j in range(prefix, length - 1):
            steps.append(
                ours.step(
                    target.tok_embeddings(ids[:, j + 1 : j + 2]), hidden[:, j : j + 1], torch.tensor([j])
                )
            )
        step_logits = target.head(torch.cat(steps, dim=1))
    for name, logits in (("forward", forward_logits), ("cached_steps", step_logits)):
        row[f"{name}_draft_logits_max_abs_diff"] = (logits - their_logits).abs().max().item()
        row[f"{name}_draft_ids_identical"] = bool(torch.equal(logits.argmax(-1), their_logits.argmax(-1)))
    worst = max(v for k, v in row.items() if k.endswith("max_abs_diff"))
    same = all(v for k, v in row.items() if k.endswith("identical"))
    print(
        f"LANTERN drafter ({args.image_size} px layout, {length - 1} positions): draft logits max abs diff "
        f"{worst:.3g} (tolerance 1e-4), argmax ids {'identical' if same else 'DIFFERENT'}"
    )
    for key, value in row.items():
        print(f"  {key}: {value}")
    finish(info, {"lantern_src": str(args.lantern_src), "result": row})


if __name__ == "__main__":
    main()

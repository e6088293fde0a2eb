"""LlamaGen text-to-image: the checkpoint converter on a state dict with the official key names and shapes, the
caption padding mask, and the FLAN-T5 text side on a tiny randomly initialised ``T5EncoderModel``.

Numerical parity against LlamaGen's own code: benchmarks/parity_llamagen_t2i.py (needs a LlamaGen checkout).
"""

import pytest
import torch

from arstudio.convert.llamagen import load_llamagen_gpt
from arstudio.convert.llamagen_t2i import (
    FlanT5TextEncoder,
    LlamaGenT2IGenerator,
    left_pad,
    llamagen_t2i_config,
    load_llamagen_t2i,
)
from arstudio.decoding.autoregressive import sample_autoregressive
from arstudio.decoding.logits import SamplingParams
from tests.test_convert_llamagen import DIM, GRID, VOCAB, official_gpt_state, save

TEXT_LEN, TEXT_DIM = 6, 16
CONFIG = llamagen_t2i_config(image_size=GRID * 16, text_len=TEXT_LEN, text_dim=TEXT_DIM, vocab_size=VOCAB)


def tiny_config():
    import dataclasses

    backbone = dataclasses.replace(CONFIG.backbone, dim=DIM, n_layer=2, n_head=4)
    return dataclasses.replace(CONFIG, backbone=backbone)


def official_t2i_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A LlamaGen t2i ``Transformer.state_dict()``: the c2i one with a CaptionEmbedder instead of the class table."""
    g = torch.Generator().manual_seed(seed + 7)
    state = official_gpt_state(seed)
    del state["cls_embedding.embedding_table.weight"]
    return state | {
        "cls_embedding.cap_proj.fc1.weight": torch.randn((DIM, TEXT_DIM), generator=g) * 0.2,
        "cls_embedding.cap_proj.fc2.weight": torch.randn((DIM, DIM), generator=g) * 0.2,
        "cls_embedding.uncond_embedding": torch.randn((TEXT_LEN, TEXT_DIM), generator=g) / TEXT_DIM**0.5,
    }


def captions(lengths, seed=0) -> torch.Tensor:
    """Left-padded caption states: zeros first, ``n`` real states last."""
    g = torch.Generator().manual_seed(seed)
    states = torch.zeros(len(lengths), TEXT_LEN, TEXT_DIM)
    for row, n in enumerate(lengths):
        states[row, TEXT_LEN - n :] = torch.randn((n, TEXT_DIM), generator=g)
    return states


def test_t2i_checkpoint_round_trip(tmp_path):
    official = official_t2i_state()
    model = load_llamagen_t2i(save(tmp_path, {"model": official}, "t2i_XL_stage1_256.pt"), tiny_config())
    assert isinstance(model, LlamaGenT2IGenerator) and not model.training
    ours = model.state_dict()
    assert torch.equal(ours["cls_embedding.cap_proj.0.weight"], official["cls_embedding.cap_proj.fc1.weight"])
    assert torch.equal(ours["cls_embedding.cap_proj.2.weight"], official["cls_embedding.cap_proj.fc2.weight"])
    assert not ours["cls_embedding.cap_proj.0.bias"].any() and not ours["cls_embedding.cap_proj.2.bias"].any()
    assert torch.equal(ours["cls_embedding.uncond_embedding"], official["cls_embedding.uncond_embedding"])
    assert torch.equal(ours["backbone.layers.1.ffn_norm.weight"], official["layers.1.ffn_norm.weight"])


def test_real_t2i_shapes_map_onto_the_config():
    """GPT-XL t2i on the meta device: LlamaGen's key names and shapes load into llamagen_t2i_config(256 / 512)."""
    from arstudio.convert.checkpoint import parameters_on_meta
    from arstudio.convert.llamagen_t2i import llamagen_t2i_keys
    from arstudio.io import check_state_dict
    from tests.test_convert_llamagen import meta_state, official_gpt_shapes

    shapes = official_gpt_shapes(36, 1280)
    del shapes["cls_embedding.embedding_table.weight"]
    shapes |= {
        "cls_embedding.cap_proj.fc1.weight": (1280, 2048),
        "cls_embedding.cap_proj.fc2.weight": (1280, 1280),
        "cls_embedding.uncond_embedding": (120, 2048),
    }
    state = meta_state(shapes)
    for size, grid in ((256, 16), (512, 32)):
        config = llamagen_t2i_config(size)
        assert (config.backbone.prefix_len, config.text_dim, config.backbone.grid_size) == (120, 2048, grid)
        with parameters_on_meta():
            model = LlamaGenT2IGenerator(config)
        keys = llamagen_t2i_keys(state)
        stand_in = {o: (state[t] if t else torch.empty(1280, device="meta")) for o, t in keys.items()}
        check_state_dict(model, stand_in, source="t2i_XL")
        trunk = (
            sum(v.numel() for v in state.values()) - 2048 * 1280 - 1280 * 1280 - 120 * 2048
        )  # c2i minus classes
        caption = 2048 * 1280 + 1280 * 1280 + 2 * 1280 + 120 * 2048  # cap_proj (+ our zero biases), uncond
        assert sum(p.numel() for p in model.parameters()) == trunk + caption and round(trunk / 1e6) == 773


def test_c2i_and_t2i_files_are_refused_by_the_other_loader(tmp_path):
    t2i = save(tmp_path, {"model": official_t2i_state()}, "t2i_XL_stage1_256.pt")
    with pytest.raises(ValueError, match=r"t2i_XL_stage1_256\.pt' holds a LlamaGen .*text-to-image model"):
        load_llamagen_gpt(t2i, "GPT-XL")
    c2i = save(tmp_path, {"model": official_gpt_state()}, "c2i_B_256.pt")
    with pytest.raises(
        ValueError,
        match=r"c2i_B_256\.pt' holds a LlamaGen .*class-to-image model .*; expected a "
        r"LlamaGen GPT text-to-image model \(2 layers, dim 32, 6 x 16 text\)",
    ):
        load_llamagen_t2i(c2i, tiny_config())


def test_padded_caption_positions_change_nothing():
    """A padded (zero, masked) position must not matter: the same caption with more padding in front gives the
    same logits, and with padding *unmasked* (a plain ImageGenerator) it would not."""
    model = load_llamagen_t2i(official_t2i_state(), tiny_config())
    cond = captions([3, 3])
    tokens = torch.randint(0, VOCAB, (2, GRID * GRID), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(tokens, cond)
        assert (logits[0] - logits[1]).abs().max() > 1e-3  # different captions
        other = cond.clone()
        other[:, :2] = 0  # already padding: no change
        assert torch.equal(model(tokens, other), logits)
        plain = torch.nn.Module.__new__(type(model).__mro__[1])  # the same weights without the mask
        plain.__dict__ = model.__dict__
        assert (plain(tokens, cond) - logits).abs().max() > 1e-3


def test_cached_decoding_matches_the_full_forward_and_null_rows_take_their_caption_mask():
    model = load_llamagen_t2i(official_t2i_state(), tiny_config())
    cond = captions([2, 5])
    null = model.cls_embedding.null(2)
    valid = model.caption_valid(torch.cat([cond, null]))
    assert valid.tolist()[2:] == valid.tolist()[:2] and valid[0].tolist() == [False] * 4 + [True] * 2
    assert model.caption_valid(null).all()  # a null batch alone: nothing to pair with
    tokens = torch.randint(0, VOCAB, (4, GRID * GRID), generator=torch.Generator().manual_seed(1))
    rows = torch.cat([cond, null])
    with torch.no_grad():
        full = model(tokens, rows)  # the doubled CFG batch, as one teacher-forced pass
        model.setup_cache(4)
        steps = [model.prefill(rows)]
        for i in range(GRID * GRID - 1):
            steps.append(model.step(tokens[:, i : i + 1], torch.tensor([TEXT_LEN + i]))[:, 0])
    assert (torch.stack(steps, dim=1) - full).abs().max() < 1e-4


def test_sampling_with_cfg_runs_through_the_shared_decoder():
    model = load_llamagen_t2i(official_t2i_state(), tiny_config())
    params = SamplingParams(guidance_scale=3.0, temperature=1.0, top_k=4, top_p=1.0)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    out = sample_autoregressive(model, captions([2, 6]), gens, params).tokens
    assert out.shape == (2, GRID * GRID) and out.min() >= 0 and out.max() < VOCAB


class WordTokenizer:
    """The call T5's tokenizer gets, on a fixed word list (no sentencepiece files offline); </s> = 1 ends a text."""

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


def tiny_t5(dim=TEXT_DIM):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=16,
        d_model=dim,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
    )  # FLAN-T5's FFN
    return T5EncoderModel(config)


def save_tiny_t5(folder, dim=TEXT_DIM):
    """A tiny random ``T5EncoderModel`` and a word-level fast tokenizer saved as a Hugging Face folder (what
    ``hf download google/flan-t5-xl --local-dir`` gives, in miniature): loadable offline by the real code path."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = WordTokenizer.words + ["<unk>"]
    table = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    table.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    table.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=table, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(folder)
    tiny_t5(dim).save_pretrained(folder)
    return folder


def test_flan_t5_states_are_left_padded_and_zeroed_like_llamagen():
    encoder = FlanT5TextEncoder(tiny_t5(), WordTokenizer(), max_tokens=TEXT_LEN)
    states = encoder(["A red cat", "  the   blue dog on a mat  "])
    assert states.shape == (2, TEXT_LEN, TEXT_DIM) and encoder.dim == TEXT_DIM
    # "a red cat" + </s> = 4 real tokens: 2 zero rows, then the 4 states in order
    assert not states[0, :2].any() and states[0, 2:].abs().sum(dim=-1).gt(0).all()
    assert states[1].abs().sum(dim=-1).gt(0).all()  # 6 words + </s> = 7 > 6: truncated, nothing padded
    direct = encoder.model(input_ids=torch.tensor([[2, 3, 4, 1]]))["last_hidden_state"]
    assert (states[0, 2:] - direct[0]).abs().max() < 1e-5  # a real token's state ignores the padding
    with pytest.raises(ValueError, match="prompt is empty"):
        encoder([" "])


def test_left_pad_is_a_per_row_roll():
    states = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1) + 1
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert left_pad(states, mask)[..., 0].tolist() == [[0, 0, 1, 2], [5, 6, 7, 8]]


def test_flan_t5_is_never_downloaded_unasked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(
        FileNotFoundError, match=r"'google/flan-t5-xl' .* not on this machine .*download=True"
    ):
        FlanT5TextEncoder.from_pretrained()


def test_flan_t5_from_a_local_folder_is_the_same_encoder(tmp_path):
    """``load_flan_t5`` takes ``<folder>/flan-t5-xl/`` (here a tiny T5 saved by transformers) before the Hugging
    Face cache, and its states are the in-memory encoder's."""
    from arstudio.convert.llamagen_t2i import load_flan_t5

    save_tiny_t5(tmp_path / "flan-t5-xl")
    encoder = load_flan_t5(TEXT_LEN, folders=[tmp_path / "elsewhere", tmp_path])
    direct = FlanT5TextEncoder(tiny_t5(), WordTokenizer(), max_tokens=TEXT_LEN)
    prompts = ["A red cat", "the blue dog"]
    assert (encoder(prompts) - direct(prompts)).abs().max() < 1e-6
    assert load_flan_t5(TEXT_LEN, folders=[tmp_path], dtype=torch.float16).model.dtype == torch.bfloat16

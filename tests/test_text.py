import pytest
import torch

from arstudio.generators.backbone import BackboneConfig
from arstudio.generators.conditioning import TextConditioning
from arstudio.generators.image import GeneratorConfig, ImageGenerator
from arstudio.generators.text_encoders import (
    MiniLMTextEncoder,
    TinyTextEncoder,
    load_text_encoder,
    split_phrases,
)
from arstudio.tokenizers.vq import VQConfig
from arstudio.training.generator import train_generator
from arstudio.training.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def minilm():
    return MiniLMTextEncoder(max_tokens=24)


def test_minilm_gives_contextual_token_states_offline(minilm):
    states = minilm(["a large red circle at the top left", "a small blue square"])
    assert states.shape == (2, 24, 384)
    # Same word, different context: MiniLM's states differ (the tiny encoder's would not).
    red_a = minilm(["a red circle"])[0, 2]
    red_b = minilm(["a red square"])[0, 2]
    assert not torch.allclose(red_a, red_b, atol=1e-3)
    assert torch.equal(minilm(["a red circle"]), minilm(["a red circle"]))


def test_minilm_refuses_over_long_prompts_instead_of_truncating(minilm):
    with pytest.raises(ValueError, match=r"prompt is \d+ tokens long .* at most 24 fit"):
        minilm(["a large red circle at the top left " * 4])


def test_minilm_phrase_slots_keep_each_object_to_itself(minilm):
    phrased = MiniLMTextEncoder(max_tokens=24, phrases=2)
    a, b, c = "a large red circle at the top left", "a small blue square", "a small green triangle"
    states = phrased([f"{a} and {b}", f"{a} and {c}", a])
    assert states.shape == (3, 24, 384)
    # Each phrase is encoded alone in its 12-token slot: changing the second object leaves the first slot
    # exactly as it was, and the first slot is the phrase's own encoding ...
    assert torch.allclose(states[0, :12], states[1, :12], atol=1e-5)
    assert torch.allclose(states[0, :12], minilm._encode([a], 12, "phrase")[0], atol=1e-5)
    assert not torch.allclose(states[0, 12:], states[1, 12:], atol=1e-3)
    assert torch.allclose(states[2, 12:], minilm._encode([""], 12, "phrase")[0], atol=1e-5)  # no 2nd object
    # ... while as one sentence every token state, the first object's too, hears about the second one.
    whole = minilm([f"{a} and {b}", f"{a} and {c}"])
    assert not torch.allclose(whole[0, 1:9], whole[1, 1:9], atol=1e-3)


def test_remembered_phrases_match_fresh_encodings_and_skip_the_encoder(minilm, monkeypatch):
    phrased = MiniLMTextEncoder(max_tokens=24, phrases=2)
    prompts = ["a large red circle at the top left and a small blue square", "a small blue square"]
    first = phrased(prompts)
    fresh = MiniLMTextEncoder(max_tokens=24, phrases=2)(prompts)  # a new encoder remembers nothing
    assert torch.allclose(first, fresh, atol=1e-5)
    encoded = []
    original = phrased._encode
    monkeypatch.setattr(phrased, "_encode", lambda texts, *a: encoded.append(texts) or original(texts, *a))
    again = phrased(prompts[::-1] + ["a small blue square and a small green triangle"])
    assert encoded == [["a small green triangle"]]  # only the phrase it had not seen
    assert torch.equal(again[0], first[1]) and torch.equal(again[1], first[0])
    phrased.CACHE_SIZE = 1  # more distinct phrases than it may remember: still right, memory bounded
    assert torch.allclose(
        phrased(["a red circle and a cyan diamond"])[0, 12:],
        minilm._encode(["a cyan diamond"], 12, "phrase")[0],
        atol=1e-5,
    )
    assert len(phrased._memory) <= 1
    phrased.to(torch.float64)  # moving the encoder forgets states of the old dtype/device
    assert phrased(["a small blue square"]).dtype == torch.float64


def test_phrase_splitting_and_its_errors():
    assert split_phrases("a red circle at the top and a blue square, a cyan diamond") == [
        "a red circle at the top",
        "a blue square",
        "a cyan diamond",
    ]
    assert split_phrases("Sand AND band") == ["Sand", "band"]  # whole words only, any case
    assert split_phrases(" , ") == [","]
    tiny = TinyTextEncoder(max_tokens=12, phrases=2)
    two = tiny(["a red circle and a blue square", "a blue square and a red circle"])
    assert torch.equal(two[0, :6], two[1, 6:]) and torch.equal(two[0, 6:], two[1, :6])  # one slot each
    with pytest.raises(ValueError, match=r"prompt has 3 phrases .* at most 2, one per object"):
        tiny(["a red circle, a blue square and a green triangle"])
    with pytest.raises(ValueError, match=r"phrase has 7 words; at most 6 fit"):
        tiny(["a large red circle at the top"])
    with pytest.raises(ValueError, match=r"phrases=5 must be 0 or divide max_tokens=12"):
        TinyTextEncoder(max_tokens=12, phrases=5)
    with pytest.raises(ValueError, match=r"text_phrases=2 needs a text condition"):
        GeneratorConfig(text_phrases=2)
    with pytest.raises(ValueError, match=r"text_phrases=4 needs a text condition whose 6 prefix tokens"):
        GeneratorConfig(
            condition="text",
            text_dim=8,
            text_phrases=4,
            backbone=BackboneConfig(dim=32, n_layer=1, n_head=4, grid_size=4, prefix_len=6),
        )


def test_tiny_encoder_and_factory():
    encoder = load_text_encoder("tiny", max_tokens=6)
    states = encoder(["a red circle", "zebra"])
    assert states.shape == (2, 6, 32)
    assert torch.equal(states[0, 3:], states[1, 1:4])  # padding is the same "<pad>" vector everywhere
    assert not torch.equal(states[1, 0], encoder(["a"])[0, 0])  # unknown words map to "<unk>", not "a"
    with pytest.raises(ValueError, match="unknown text encoder 'bert'"):
        load_text_encoder("bert", 6)
    assert isinstance(load_text_encoder("tiny", 6), TinyTextEncoder)


def test_text_conditioning_null_dropout_and_shape_checks():
    module = TextConditioning(text_dim=8, text_len=5, dim=16, dropout_prob=0.5)
    states = torch.randn(400, 5, 8)
    dropped = module.drop(states, torch.Generator().manual_seed(0))
    is_null = (dropped == module.uncond_embedding.detach()).all(dim=(1, 2))
    assert 0.4 < is_null.float().mean() < 0.6
    assert torch.equal(dropped[~is_null], states[~is_null])
    assert module(states).shape == (400, 5, 16)
    assert torch.equal(module.null(3)[1], module.uncond_embedding.detach())
    with pytest.raises(ValueError, match=r"text states must be \(B, 5, 8\)"):
        module(torch.zeros(2, 4, 8))


def test_text_generator_config_checks():
    with pytest.raises(ValueError, match="text_dim > 0"):
        GeneratorConfig(condition="text")
    with pytest.raises(ValueError, match="condition='image'"):
        GeneratorConfig(condition="image")
    with pytest.raises(ValueError, match="one prefix token"):
        GeneratorConfig(backbone=BackboneConfig(prefix_len=3))


def test_text_generator_trains_and_reloads(tmp_path):
    vq_config = VQConfig(
        resolution=32,
        ch=8,
        ch_mult=(1, 2, 2),
        z_channels=8,
        codebook_size=16,
        codebook_embed_dim=4,
        norm_groups=4,
        decoder_res_blocks=1,
    )
    config = GeneratorConfig(
        vocab_size=16,
        condition="text",
        text_dim=32,
        backbone=BackboneConfig(dim=32, n_layer=1, n_head=4, grid_size=8, prefix_len=20),
    )
    train_tokenizer(tmp_path / "vq", vq_config, steps=1, batch_size=2, photo_fraction=0.0, text_fraction=0.5)
    encoder = load_text_encoder("tiny", max_tokens=20)
    model = train_generator(
        tmp_path / "gen", tmp_path / "vq", config, steps=3, batch_size=8, num_images=16, text_encoder=encoder
    )
    again = ImageGenerator.from_pretrained(tmp_path / "gen")
    states = encoder(["a large red circle at the top left"])
    tokens = torch.zeros(1, 64, dtype=torch.long)
    assert torch.equal(model(tokens, states), again(tokens, states))
    with pytest.raises(ValueError, match="needs a text_encoder"):
        train_generator(tmp_path / "gen2", tmp_path / "vq", config, steps=1, batch_size=2, num_images=4)

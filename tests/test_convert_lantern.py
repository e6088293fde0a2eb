"""LANTERN's published EAGLE drafters: the converter on state dicts with the official key names and shapes (written
from LANTERN's ``cnets_llamagen.py``, not built from our modules), refusals, and speculative / LANTERN decoding of a
t2i hub preset that finds the drafter folder beside its files.

Numerical parity against LANTERN's own code: benchmarks/parity_lantern_drafter.py (needs a LANTERN checkout).
"""

import json

import pytest
import torch

from arstudio import presets
from arstudio.convert import hub
from arstudio.convert.lantern import load_lantern_drafter
from arstudio.convert.llamagen_t2i import load_llamagen_t2i
from arstudio.generators.drafter import Drafter, PassThroughNorm
from arstudio.pipelines.loading import load_pipeline
from arstudio.presets import HubFile, HubWeights, Preset
from tests.test_convert_llamagen import DIM, FFN, VQ_CFG, official_vq_state
from tests.test_convert_llamagen_t2i import official_t2i_state, save_tiny_t5, tiny_config


def target():
    return load_llamagen_t2i(official_t2i_state(), tiny_config())


def official_drafter_state(embed: torch.Tensor, seed: int = 0, layers: int = 1) -> dict[str, torch.Tensor]:
    """EAGLE-1's ``Model.state_dict()`` (LANTERN's ``cnets_llamagen``): embed_tokens, fc with bias, layer 0 without
    input_layernorm."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(shape, generator=g) * 0.2

    state = {"embed_tokens.weight": embed.clone(), "fc.weight": rand(DIM, 2 * DIM), "fc.bias": rand(DIM)}
    for i in range(layers):
        state |= {f"layers.{i}.self_attn.{x}_proj.weight": rand(DIM, DIM) for x in "qkvo"}
        state |= {
            f"layers.{i}.mlp.gate_proj.weight": rand(FFN, DIM),
            f"layers.{i}.mlp.up_proj.weight": rand(FFN, DIM),
            f"layers.{i}.mlp.down_proj.weight": rand(DIM, FFN),
            f"layers.{i}.post_attention_layernorm.weight": 1 + rand(DIM),
        }
        if i:
            state[f"layers.{i}.input_layernorm.weight"] = 1 + rand(DIM)
    return state


def save_drafter(folder, state, heads=4):
    folder.mkdir(parents=True, exist_ok=True)
    config = {"num_hidden_layers": 1, "hidden_size": DIM, "num_attention_heads": heads, "rms_norm_eps": 1e-6}
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_drafter_folder_converts_to_eagles_layout(tmp_path):
    gen = target()
    official = official_drafter_state(gen.tok_embeddings.weight)
    drafter = load_lantern_drafter(save_drafter(tmp_path / "d", official), gen)
    assert isinstance(drafter, Drafter) and not drafter.training
    ours = drafter.state_dict()
    qkv = torch.cat([official[f"layers.0.self_attn.{x}_proj.weight"] for x in "qkv"])
    assert torch.equal(ours["backbone.layers.0.attention.wqkv.weight"], qkv)
    assert torch.equal(
        ours["backbone.layers.0.feed_forward.w1.weight"], official["layers.0.mlp.gate_proj.weight"]
    )
    assert torch.equal(ours["prefix_embedding"], official["embed_tokens.weight"][0])
    assert isinstance(drafter.backbone.norm, PassThroughNorm)
    assert isinstance(drafter.backbone.layers[0].attention_norm, PassThroughNorm)
    # RoPE: LANTERN's 119 zero rows for a 120-row caption prefix; EAGLE's norm eps
    assert (
        drafter.config.backbone.prefix_len == gen.prefix_len - 1 and drafter.config.backbone.norm_eps == 1e-6
    )
    drafter.check_target(gen)  # fingerprinted for this target
    # prefix positions read token 0's embedding whatever they are given
    hidden = torch.randn(1, gen.prefix_len + 2, DIM)
    a = drafter(torch.randn(1, gen.prefix_len + 2, DIM), hidden)
    b = drafter(gen.tok_embeddings(torch.zeros(1, gen.prefix_len + 2, dtype=torch.long)), hidden)
    assert torch.equal(a[:, : gen.prefix_len - 1], b[:, : gen.prefix_len - 1])


def test_wrong_drafters_are_refused_in_one_line(tmp_path):
    gen = target()
    two = official_drafter_state(gen.tok_embeddings.weight, layers=2)
    with pytest.raises(ValueError) as err:
        load_lantern_drafter(two, gen)
    assert str(err.value) == (
        "state dict holds an EAGLE drafter (2 layers, hidden 32, vocab 32); expected an EAGLE drafter (1 layer, "
        "hidden 32, vocab 32) (LANTERN's drafter for this target)"
    )
    other = official_drafter_state(gen.tok_embeddings.weight + 0.5)
    with pytest.raises(
        ValueError, match="trained for another target: its copy of the token embedding differs"
    ):
        load_lantern_drafter(other, gen)
    folder = save_drafter(tmp_path / "d", official_drafter_state(gen.tok_embeddings.weight), heads=8)
    with pytest.raises(
        ValueError, match=r"config.json' describes a drafter .* \(1, 32, 8\); expected \(1, 32, 4\)"
    ):
        load_lantern_drafter(folder, gen)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="expected a LANTERN drafter: config.json"):
        load_lantern_drafter(tmp_path / "empty", gen)


@pytest.fixture
def lantern_hub(tmp_path, monkeypatch):
    """A tiny t2i hub preset (FLAN-T5 text side) with a LANTERN drafter extra, and a folder of its files."""
    monkeypatch.delenv(hub.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv(hub.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "official"
    folder.mkdir()
    torch.save({"model": official_vq_state(1)}, folder / "vq.pt")
    torch.save({"model": official_t2i_state()}, folder / "t2i.pt")
    save_tiny_t5(folder / "flan-t5-xl")
    save_drafter(folder / "tiny_drafter", official_drafter_state(target().tok_embeddings.weight))
    extra = HubFile(
        "drafter",
        "example/drafter",
        "pytorch_model.bin",
        folder="tiny_drafter",
        alternatives=("model.safetensors",),
    )
    weights = HubWeights(
        repo_id="example/t2i",
        tokenizer_file="vq.pt",
        generator_file="t2i.pt",
        converter="llamagen-t2i",
        extras=(extra,),
    )
    preset = Preset(
        name="test-tiny-hub-lantern",
        description="",
        task="text-to-image",
        tokenizer=VQ_CFG,
        generator=tiny_config(),
        hub=weights,
        text_encoder="flan-t5-xl",
        defaults={"guidance_scale": 3.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0},
    )
    monkeypatch.setitem(presets._REGISTRY, preset.name, preset)
    return folder


def test_t2i_preset_decodes_with_lanterns_drafter(lantern_hub):
    pipe = load_pipeline("test-tiny-hub-lantern", device="cpu", weights=lantern_hub)
    assert {"speculative", "lantern"} <= set(pipe.decoding_strategies)
    prompts = ["a red cat", "the blue dog on the mat"]

    def run(**kwargs):
        return pipe(prompt=prompts, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs)

    # greedy: exact speculative decoding gives the AR tokens whatever the drafter proposes
    greedy = run(decoding="ar", top_k=1).tokens
    assert torch.equal(run(decoding="speculative", top_k=1).tokens, greedy)
    lantern = run(decoding="lantern")
    assert lantern.tokens.shape == greedy.shape and len(lantern.images) == 2

    (lantern_hub / "tiny_drafter" / "pytorch_model.bin").rename(lantern_hub / "tiny_drafter" / "model.bin")
    assert (
        "lantern"
        not in load_pipeline("test-tiny-hub-lantern", device="cpu", weights=lantern_hub).decoding_strategies
    )


def test_real_t2i_presets_name_lanterns_drafters():
    for res, repo in ((256, "jadohu/llamagen_drafter"), (512, "jadohu/llamagen2_drafter")):
        (extra,) = presets.get_preset(f"llamagen-t2i-xl-{res}").hub.extras
        assert (extra.component, extra.repo_id, extra.folder) == ("drafter", repo, repo.split("/")[1])

"""Distilled Decoding's released LlamaGen models: the converter on state dicts with the official key names and
shapes (written from DD's ``dd.py``, not built from our modules), refusals, and the ``dd1`` strategies of a hub
preset that finds the file beside its weights.

Numerical parity against DD's own code: benchmarks/parity_dd.py (needs a distilled_decoding checkout).
"""

import shutil

import pytest
import torch

from arstudio import presets
from arstudio.convert import hub
from arstudio.convert.distilled_decoding import dd_keys, llamagen_dd_config, load_llamagen_dd
from arstudio.generators.distilled import DDGenerator, PixArtVectorHead
from arstudio.pipelines.loading import load_pipeline
from arstudio.presets import HubFile, HubWeights, Preset
from tests.test_convert_llamagen import (
    CLASSES,
    DIM,
    GPT_CFG,
    VQ_CFG,
    official_gpt_shapes,
    official_gpt_state,
    official_vq_state,
)

TOKEN_DIM = VQ_CFG.codebook_embed_dim  # 4 here; 8 in the release


def official_dd_state(seed: int = 0, token_dim: int = TOKEN_DIM) -> dict[str, torch.Tensor]:
    """A ``DDTransformer.state_dict()``: the c2i GPT's, with tok_embeddings a Linear(d -> dim), the flag table
    ``n_d_embed`` and PixArt's ``final_layer_conti``."""
    g = torch.Generator().manual_seed(seed + 11)
    state = official_gpt_state(seed)
    state["tok_embeddings.weight"] = torch.randn((DIM, token_dim), generator=g) * 0.2
    return state | {
        "tok_embeddings.bias": torch.randn(DIM, generator=g) * 0.2,
        "n_d_embed.weight": torch.randn((2, DIM), generator=g) * 0.2,
        "final_layer_conti.linear.weight": torch.randn((token_dim, DIM), generator=g) * 0.2,
        "final_layer_conti.linear.bias": torch.randn(token_dim, generator=g) * 0.2,
        "final_layer_conti.scale_shift_table": torch.randn((2, DIM), generator=g) / DIM**0.5,
    }


def official_dd_shapes(n_layer: int, dim: int) -> dict:
    shapes = official_gpt_shapes(n_layer, dim)
    return shapes | {
        "tok_embeddings.weight": (dim, 8),
        "tok_embeddings.bias": (dim,),
        "n_d_embed.weight": (2, dim),
        "final_layer_conti.linear.weight": (8, dim),
        "final_layer_conti.linear.bias": (8,),
        "final_layer_conti.scale_shift_table": (2, dim),
    }


def tiny_config():
    return llamagen_dd_config(GPT_CFG, token_dim=TOKEN_DIM)


def test_ema_weights_are_loaded_and_renamed(tmp_path):
    official = official_dd_state()
    path = tmp_path / "llamagen-B.pt"
    torch.save({"model": official_dd_state(seed=5), "ema": official, "steps": 3}, path)
    model = load_llamagen_dd(path, tiny_config())
    assert isinstance(model, DDGenerator) and isinstance(model.vector_head, PixArtVectorHead)
    ours = model.state_dict()
    for mine, theirs in {
        "flag_embedding.weight": "n_d_embed.weight",
        "vector_head.scale_shift_table": "final_layer_conti.scale_shift_table",
        "vector_head.output.weight": "final_layer_conti.linear.weight",
        "tok_embeddings.bias": "tok_embeddings.bias",
        "head.output.weight": "output.weight",
        "backbone.layers.1.attention.wqkv.weight": "layers.1.attention.wqkv.weight",
    }.items():
        assert torch.equal(ours[mine], official[theirs]), mine
    torch.save({"model": official}, path)  # no "ema": the "model" entry
    assert torch.equal(
        load_llamagen_dd(path, tiny_config()).state_dict()["flag_embedding.weight"],
        official["n_d_embed.weight"],
    )


def test_release_details_change_the_outputs():
    """The prefix flag and the pre-norm PixArt head are what DD's release does; each changes the outputs (so
    parity, benchmarks/parity_dd.py: 0.0, checks them)."""
    import dataclasses

    model = load_llamagen_dd(official_dd_state(), tiny_config())
    state = torch.randn(2, 16, TOKEN_DIM)
    logits, vectors = model(state, 3, torch.tensor([0, CLASSES]))
    model.config = dataclasses.replace(model.config, flag_prefix=False)
    other_logits, other_vectors = model(state, 3, torch.tensor([0, CLASSES]))
    assert (logits - other_logits).abs().max() > 1e-3 and (vectors - other_vectors).abs().max() > 1e-3
    early, late = model(state, 3, torch.tensor([0, 1]), split=True, logits_tokens=10)
    assert early.shape == (2, 10, 32) and late.shape == (2, 6, TOKEN_DIM)


@pytest.mark.parametrize("name, n_layer, dim, params_m", [("GPT-B", 12, 768, 98.3), ("GPT-L", 24, 1024, 326)])
def test_released_shapes_map_onto_the_configs(name, n_layer, dim, params_m):
    from arstudio.convert.checkpoint import parameters_on_meta
    from arstudio.convert.llamagen import describe_llamagen_state
    from arstudio.io import check_state_dict

    shapes = official_dd_shapes(n_layer, dim)
    assert describe_llamagen_state(shapes).startswith(f"a Distilled Decoding (DD) model ({n_layer} layers")
    config = llamagen_dd_config(name)
    assert (config.logits_tokens, config.two_step_start) == ({"GPT-B": 80, "GPT-L": 130}[name], 80)
    with parameters_on_meta():
        model = DDGenerator(config)
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    check_state_dict(model, {ours: state[theirs] for ours, theirs in dd_keys(state).items()}, source=name)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, rel=0.01)  # DD's paper


def test_another_model_or_size_is_refused_in_one_line():
    b = {k: torch.empty(v, device="meta") for k, v in official_dd_shapes(12, 768).items()}
    with pytest.raises(ValueError) as err:
        load_llamagen_dd(b, "GPT-L")
    assert str(err.value) == (
        "state dict holds a Distilled Decoding (DD) model (12 layers, dim 768), not an AR GPT; expected a "
        "Distilled Decoding (DD) model (24 layers, dim 1024) from microsoft/distilled_decoding"
    )
    gpt = {k: torch.empty(v, device="meta") for k, v in official_gpt_shapes(12, 768).items()}
    with pytest.raises(
        ValueError, match=r"holds a LlamaGen GPT-B class-to-image model .*; expected a Distill"
    ):
        load_llamagen_dd(gpt, "GPT-B")
    with pytest.raises(ValueError, match="class-to-image models only"):
        from tests.test_convert_llamagen_t2i import tiny_config as t2i_config

        llamagen_dd_config(t2i_config())


@pytest.fixture
def dd_hub(tmp_path, monkeypatch):
    """A tiny c2i hub preset with a DD extra, and a folder with its official files."""
    monkeypatch.delenv(hub.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv(hub.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "official"
    (folder / "DD").mkdir(parents=True)
    torch.save({"model": official_vq_state(1)}, folder / "vq.pt")
    torch.save({"model": official_gpt_state(2)}, folder / "c2i.pt")
    torch.save({"ema": official_dd_state(3)}, folder / "DD" / "dd-tiny.pt")
    weights = HubWeights(
        repo_id="example/tiny",
        tokenizer_file="vq.pt",
        generator_file="c2i.pt",
        extras=(HubFile("dd1", "example/dd", "DD/dd-tiny.pt"),),
    )
    preset = Preset(
        name="test-tiny-hub-dd",
        description="",
        task="class-to-image",
        tokenizer=VQ_CFG,
        generator=GPT_CFG,
        hub=weights,
        defaults={"guidance_scale": 2.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0},
    )
    monkeypatch.setitem(presets._REGISTRY, preset.name, preset)
    return folder


def test_dd_file_beside_the_weights_gives_the_dd1_strategies(dd_hub):
    from arstudio.decoding.distilled import sample_distilled

    pipe = load_pipeline("test-tiny-hub-dd", device="cpu", weights=dd_hub)
    assert {"dd1", "dd1_hybrid"} <= set(pipe.decoding_strategies)
    model = pipe.distilled["dd1"]
    assert model.config.flag_prefix and model.config.vector_head == "pixart"
    labels, noise = (
        torch.tensor([1, 4]),
        torch.randn(2, 16, TOKEN_DIM, generator=torch.Generator().manual_seed(0)),
    )
    for steps in (1, 2):
        out = pipe(
            class_labels=[1, 4], decoding="dd1", num_inference_steps=steps, latents=noise, output_type="np"
        )
        direct = sample_distilled(
            model, labels, noise, pipe.tokenizer.codebook_vectors().detach(), steps=steps
        )
        assert torch.equal(out.tokens.flatten(1), direct.tokens)
    hybrid = pipe(
        class_labels=[1],
        decoding="dd1_hybrid",
        dd_hybrid_start=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    assert hybrid.tokens.shape == (1, 4, 4)

    # The same file under its base name works too; without it, no dd1 strategy (and nothing else changes).
    shutil.move(dd_hub / "DD" / "dd-tiny.pt", dd_hub / "dd-tiny.pt")
    assert "dd1" in load_pipeline("test-tiny-hub-dd", device="cpu", weights=dd_hub).decoding_strategies
    (dd_hub / "dd-tiny.pt").unlink()
    assert "dd1" not in load_pipeline("test-tiny-hub-dd", device="cpu", weights=dd_hub).decoding_strategies


def test_a_wrong_dd_file_names_itself(dd_hub):
    torch.save({"model": official_gpt_state(0)}, dd_hub / "DD" / "dd-tiny.pt")  # an AR GPT under DD's name
    with pytest.raises(
        ValueError, match=r"dd-tiny.pt' holds a LlamaGen GPT .*class-to-image model .*; expected a Distilled"
    ):
        load_pipeline("test-tiny-hub-dd", device="cpu", weights=dd_hub)


def test_real_presets_name_the_released_files():
    for size in ("b", "l"):
        (extra,) = presets.get_preset(f"llamagen-{size}-256").hub.extras
        assert (extra.component, extra.repo_id, extra.filename) == (
            "dd1",
            "microsoft/distilled_decoding",
            f"LlamaGen-DD/llamagen-{size.upper()}.pt",
        )
    assert presets.get_preset("llamagen-b-384").hub.extras == ()


def test_download_fetches_the_dd_file_and_the_converted_cache_keeps_it(dd_hub, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, *, revision=None, local_files_only=False, **kwargs):
        calls.append((repo_id, filename, local_files_only))
        return str(dd_hub / filename)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    source = hub.download_and_convert(presets.get_preset("test-tiny-hub-dd"))
    assert ("example/dd", "DD/dd-tiny.pt", False) in calls
    assert source.extras["dd1"] == hub.converted_dir(presets.get_preset("test-tiny-hub-dd")) / "dd-tiny.pt"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "dd1" in load_pipeline("test-tiny-hub-dd", device="cpu").decoding_strategies

"""MAR (LTH14/mar): the converter on state dicts with the official key names and shapes (written from MAR's
``models/mar.py`` / ``models/diffloss.py`` and ``main_mar.py``'s checkpoint layout, not built from our modules),
refusals, the masked-order sampler and its strategy, the tiny preset end to end, and hub loading offline.

Numerical parity against MAR's own code: benchmarks/parity_mar.py (needs a snapshot of LTH14/mar).
"""

import argparse
import dataclasses
import logging
import math

import pytest
import torch

import arstudio
from arstudio import presets
from arstudio.checks import trusted_values
from arstudio.convert import hub
from arstudio.convert.checkpoint import parameters_on_meta
from arstudio.convert.mar import (
    convert_mar_to_pretrained,
    describe_mar_state,
    load_mar,
    mar_config,
    mar_keys,
)
from arstudio.decoding.logits import SamplingParams
from arstudio.decoding.mar import guidance_at, mask_schedule, sample_mar
from arstudio.decoding.mar_head import LearnedRangeSchedule, respaced_timesteps
from arstudio.generators.mar import MARConfig, MARGenerator
from arstudio.io import check_state_dict
from arstudio.presets import HubFile, HubWeights
from arstudio.tokenizers.kl import KLTokenizer
from tests.test_engine import host_reads

TINY = presets.get_preset("test-tiny-mar").generator  # width 32, 1 + 1 blocks, head 2 x 32, 4x4 tokens of 4


def official_mar_shapes(c: MARConfig) -> dict[str, tuple]:
    """MAR's state dict (key -> shape) for a config: MAR.__init__ with timm's Block and DiffLoss's
    SimpleMLPAdaLN (out_channels = 2 x token dim: the learned variance)."""
    length, w = c.buffer_size + c.grid_size**2, c.head_width
    shapes = {
        "class_emb.weight": (c.num_classes, c.encoder_dim),
        "fake_latent": (1, c.encoder_dim),
        "z_proj.weight": (c.encoder_dim, c.token_dim),
        "z_proj.bias": (c.encoder_dim,),
        "z_proj_ln.weight": (c.encoder_dim,),
        "z_proj_ln.bias": (c.encoder_dim,),
        "encoder_pos_embed_learned": (1, length, c.encoder_dim),
        "encoder_norm.weight": (c.encoder_dim,),
        "encoder_norm.bias": (c.encoder_dim,),
        "decoder_embed.weight": (c.decoder_dim, c.encoder_dim),
        "decoder_embed.bias": (c.decoder_dim,),
        "mask_token": (1, 1, c.decoder_dim),
        "decoder_pos_embed_learned": (1, length, c.decoder_dim),
        "decoder_norm.weight": (c.decoder_dim,),
        "decoder_norm.bias": (c.decoder_dim,),
        "diffusion_pos_embed_learned": (1, c.grid_size**2, c.decoder_dim),
        "diffloss.net.time_embed.mlp.0.weight": (w, 256),
        "diffloss.net.time_embed.mlp.0.bias": (w,),
        "diffloss.net.time_embed.mlp.2.weight": (w, w),
        "diffloss.net.time_embed.mlp.2.bias": (w,),
        "diffloss.net.cond_embed.weight": (w, c.decoder_dim),
        "diffloss.net.cond_embed.bias": (w,),
        "diffloss.net.input_proj.weight": (w, c.token_dim),
        "diffloss.net.input_proj.bias": (w,),
        "diffloss.net.final_layer.linear.weight": (2 * c.token_dim, w),
        "diffloss.net.final_layer.linear.bias": (2 * c.token_dim,),
        "diffloss.net.final_layer.adaLN_modulation.1.weight": (2 * w, w),
        "diffloss.net.final_layer.adaLN_modulation.1.bias": (2 * w,),
    }
    for part, dim, depth in (
        ("encoder", c.encoder_dim, c.encoder_depth),
        ("decoder", c.decoder_dim, c.decoder_depth),
    ):
        hidden = int(dim * c.mlp_ratio)
        for i in range(depth):
            p = f"{part}_blocks.{i}."
            shapes |= {
                p + "norm1.weight": (dim,),
                p + "norm1.bias": (dim,),
                p + "attn.qkv.weight": (3 * dim, dim),
                p + "attn.qkv.bias": (3 * dim,),
                p + "attn.proj.weight": (dim, dim),
                p + "attn.proj.bias": (dim,),
                p + "norm2.weight": (dim,),
                p + "norm2.bias": (dim,),
                p + "mlp.fc1.weight": (hidden, dim),
                p + "mlp.fc1.bias": (hidden,),
                p + "mlp.fc2.weight": (dim, hidden),
                p + "mlp.fc2.bias": (dim,),
            }
    for i in range(c.head_depth):
        p = f"diffloss.net.res_blocks.{i}."
        shapes |= {
            p + "in_ln.weight": (w,),
            p + "in_ln.bias": (w,),
            p + "mlp.0.weight": (w, w),
            p + "mlp.0.bias": (w,),
            p + "mlp.2.weight": (w, w),
            p + "mlp.2.bias": (w,),
            p + "adaLN_modulation.1.weight": (3 * w, w),
            p + "adaLN_modulation.1.bias": (3 * w,),
        }
    return shapes


def official_state(config: MARConfig = TINY, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.2 for k, shape in official_mar_shapes(config).items()}


def save_checkpoint(path, model=None, ema=None, **extra):
    """``main_mar.py``'s ``misc.save_model`` layout."""
    args = argparse.Namespace(model="mar_base", diffloss_d=6, diffloss_w=1024, num_iter=64)
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]}
    payload = {
        "model": model,
        "model_ema": ema,
        "optimizer": optimizer,
        "epoch": 799,
        "scaler": {},
        "args": args,
    }
    torch.save({k: v for k, v in (payload | extra).items() if v is not None or k == "model_ema"}, path)
    return path


# ---- the converter ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,params_m", [("mar_base", 208), ("mar_large", 479), ("mar_huge", 943)])
def test_real_size_checkpoints_map_onto_the_preset_configs(size, params_m):
    config = mar_config(size)
    shapes = official_mar_shapes(config)
    assert describe_mar_state({k: torch.Size(v) for k, v in shapes.items()}).startswith(f"MAR ({size}:")
    with parameters_on_meta():
        model = MARGenerator(config)
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    check_state_dict(model, {ours: state[theirs] for ours, theirs in mar_keys(config).items()}, source=size)
    assert set(mar_keys(config).values()) == set(shapes)  # every official weight is read
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, rel=0.005)
    assert presets.get_preset(f"mar-{size.split('_')[1]}").generator == config


def test_the_ema_weights_load_as_mars_evaluation_uses_them(tmp_path, caplog):
    model, ema = official_state(seed=0), official_state(seed=1)
    path = save_checkpoint(tmp_path / "checkpoint-last.pth", model, ema)
    loaded = load_mar(path, TINY)
    assert torch.equal(loaded.head.net.output.weight, ema["diffloss.net.final_layer.linear.weight"])
    assert torch.equal(loaded.encoder_blocks[0].attn.qkv.bias, ema["encoder_blocks.0.attn.qkv.bias"])
    assert torch.equal(
        loaded.head.net.blocks[1].modulation[1].weight,
        ema["diffloss.net.res_blocks.1.adaLN_modulation.1.weight"],
    )
    # without EMA weights: the model's, said out loud; a flat state dict loads as it is
    with caplog.at_level(logging.WARNING):
        only_model = load_mar(save_checkpoint(tmp_path / "no_ema.pth", model, None), TINY)
    assert "has no 'model_ema' weights" in caplog.text
    assert torch.equal(only_model.fake_latent, model["fake_latent"])
    torch.save(ema, tmp_path / "flat.pth")
    assert torch.equal(load_mar(tmp_path / "flat.pth", TINY).mask_token, ema["mask_token"])
    bf16 = load_mar(path, TINY, dtype=torch.bfloat16)
    assert bf16.z_proj.weight.dtype == torch.bfloat16 and not any(p.is_meta for p in bf16.parameters())


def test_another_size_or_model_is_refused_in_one_line(tmp_path):
    wider = dataclasses.replace(TINY, encoder_dim=64, decoder_dim=64)
    path = save_checkpoint(tmp_path / "checkpoint-last.pth", ema=official_state(wider))
    with pytest.raises(ValueError) as err:
        load_mar(path, TINY)
    message = str(err.value)
    assert (
        "\n" not in message
        and "checkpoint-last.pth' holds MAR (an unofficial size: width 64, 1+1 blocks" in message
    )
    assert "expected MAR (an unofficial size: width 32, 1+1 blocks, head 2x32)" in message
    base = {k: torch.empty(v, device="meta") for k, v in official_mar_shapes(mar_config("mar_base")).items()}
    with pytest.raises(
        ValueError,
        match=r"holds MAR \(mar_base: width 768, 12\+12 blocks, head 6x1024\); expected MAR \(mar_large",
    ):
        from arstudio.convert.checkpoint import shapes_of
        from arstudio.convert.mar import check_mar_kind

        check_mar_kind(shapes_of(base), mar_config("mar_large"), "'mar_large/checkpoint-last.pth'")
    from tests.test_convert_llamagen import official_gpt_state

    gpt = save_checkpoint(tmp_path / "c2i_B_256.pt", ema=official_gpt_state())
    with pytest.raises(
        ValueError, match=r"c2i_B_256\.pt' holds no MAR model \(no class_emb / diffloss\.net weights"
    ):
        load_mar(gpt, TINY)


def test_bad_files_are_named_in_one_line(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint-last.pth", ema=official_state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ValueError, match=r"checkpoint-last\.pth' is truncated or corrupt .*download it again$"
    ):
        load_mar(path, TINY)

    class Payload:  # anything beyond tensors and argparse namespaces must not be built
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"model_ema": official_state(), "evil": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil\.pth' holds Python objects .* refuses to unpickle"):
        load_mar(tmp_path / "evil.pth", TINY)
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match=r"no MAR weights found in .*empty\.pth': it holds \['epoch'\]"):
        load_mar(tmp_path / "empty.pth", TINY)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mar(tmp_path / "missing.pth", TINY)


# ---- the model and the sampler ----------------------------------------------------------------------------


def test_gathered_encoding_equals_encoding_every_token_then_dropping_the_masked():
    """MAR's reference forward: every token through z_proj with the class in the buffer, positions added,
    LayerNorm, masked rows dropped (boolean mask, position order); the decoder fills mask tokens back in."""
    torch.manual_seed(0)
    model = load_mar_state_dict(official_state(seed=3))
    b, n, d = 2, TINY.seq_len, TINY.token_dim
    tokens, labels = torch.randn(b, n, d), torch.tensor([3, 7])
    known = torch.stack([torch.randperm(n)[:5].sort().values for _ in range(b)])
    mask = torch.ones(b, n, dtype=torch.bool).scatter(1, known, False)  # True: unknown
    cond = model.class_embedding(labels)
    with torch.no_grad():
        ours = model(tokens, known, cond)
        x = model.z_proj(tokens)
        x = torch.cat([cond[:, None].expand(b, TINY.buffer_size, -1), x], 1) + model.encoder_pos_embed_learned
        keep = torch.cat([torch.zeros(b, TINY.buffer_size, dtype=torch.bool), mask], 1)
        x = model.z_proj_ln(x)[~keep].view(b, -1, TINY.encoder_dim)
        for block in model.encoder_blocks:
            x = block(x)
        x = model.decoder_embed(model.encoder_norm(x))
        full = model.mask_token.repeat(b, keep.shape[1], 1)
        full[~keep] = x.reshape(-1, TINY.decoder_dim)
        x = full + model.decoder_pos_embed_learned
        for block in model.decoder_blocks:
            x = block(x)
        reference = model.decoder_norm(x)[:, TINY.buffer_size :] + model.diffusion_pos_embed_learned
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def load_mar_state_dict(state):
    from arstudio.convert.mar import official_key

    model = MARGenerator(TINY)
    model.load_state_dict({k: state[official_key(k)] for k in model.state_dict()})
    return model.eval()


def test_mask_schedule_is_mars_cosine_schedule():
    plan = mask_schedule(256, 64)
    assert sum(it.predicted for it in plan) == 256 and plan[-1].masked_after == 0
    assert plan[0].masked == 256 and plan[0].predicted == 1  # floor(256 cos(pi / 128)) = 255 stay masked
    for step, it in enumerate(plan[:-1]):
        assert it.masked_after == max(
            1, min(it.masked - 1, math.floor(256 * math.cos(math.pi / 2 * (step + 1) / 64)))
        )
    assert (
        plan[-1].mask_len == 1
    )  # MAR's mask_len stays >= 1 at the last step: its linear guidance never hits s
    more_than_tokens = mask_schedule(16, 40)
    assert sum(it.predicted for it in more_than_tokens) == 16 and 0 in {
        it.predicted for it in more_than_tokens
    }
    assert guidance_at(3.0, 1.0, 16, 16) == 1.0 and guidance_at(3.0, 0.0, 16, 16) == 3.0
    assert guidance_at(3.0, 1.0, 4, 16) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="num_iter=0 must be an integer >= 1"):
        mask_schedule(16, 0)


def test_respacing_is_improved_ddpms():
    kept = respaced_timesteps(1000, 100)
    assert len(kept) == 100 and kept[:3] == [0, 10, 20] and kept[-1] == 999
    assert respaced_timesteps(1000, 1000) == list(range(1000))
    schedule = LearnedRangeSchedule(1000, 100)
    cols = schedule.columns
    assert (cols["min_log"] <= cols["max_log"] + 1e-12).all()  # posterior variance <= beta
    with pytest.raises(
        ValueError, match=r"num_inference_steps=1001 is not allowed: use an integer in \[1, 1000\]"
    ):
        respaced_timesteps(1000, 1001)


@pytest.fixture(scope="module")
def pipe():
    pipe = arstudio.load_pipeline("test-tiny-mar", device="cpu")
    torch.manual_seed(0)  # the random head's zero-initialised modulations would hide the class and guidance
    for param in pipe.generator.head.parameters():
        if not param.any():
            torch.nn.init.normal_(param, std=0.3)
    return pipe


def _seeds(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_sampler_is_per_image_deterministic_and_reads_nothing_back(pipe):
    model, params = pipe.generator, SamplingParams(guidance_scale=3.0)
    labels = torch.tensor([1, 2])
    both = sample_mar(model, labels, _seeds(1, 2), params, num_iter=5, num_inference_steps=6)
    again = sample_mar(model, labels, _seeds(1, 2), params, num_iter=5, num_inference_steps=6)
    alone = sample_mar(model, labels[1:], _seeds(2), params, num_iter=5, num_inference_steps=6)
    assert torch.equal(both.tokens, again.tokens) and both.tokens.shape == (2, 16, 4)
    # batched matmuls round differently, and the first reverse step multiplies that by 1 / sqrt(abar_T) ~ 2e4
    torch.testing.assert_close(both.tokens[1:], alone.tokens, atol=1e-3, rtol=1e-3)
    assert both.stats["forwards"] == 5 and both.tokens.abs().sum(-1).gt(0).all()  # every token decided
    with trusted_values():
        reads = host_reads(
            lambda: sample_mar(model, labels, _seeds(1, 2), params, num_iter=5, num_inference_steps=6)
        )
    assert reads == 0


def test_pipeline_ar_is_mar_at_its_default_knobs_and_the_knobs_act(pipe):
    assert pipe.decoding_strategies == ("ar", "continuous_speculative", "mar")
    run = dict(class_labels=[0, 5], generator=_seeds(3, 4), output_type="np")
    ar = pipe(**run)
    assert len(ar.images) == 2 and ar.images[0].shape == (16, 16, 3)
    assert ar.metadata[0]["decoding"] == "ar" and ar.stats["num_iter"] == 64
    mar = pipe(**{**run, "generator": _seeds(3, 4)}, decoding="mar")
    assert torch.equal(ar.tokens, mar.tokens) and mar.metadata[0]["num_iter"] == 64
    fewer = pipe(**{**run, "generator": _seeds(3, 4)}, decoding="mar", num_iter=4)
    constant = pipe(**{**run, "generator": _seeds(3, 4)}, decoding="mar", cfg_ramp=0.0)
    steps = pipe(**{**run, "generator": _seeds(3, 4)}, num_inference_steps=3)
    for other in (fewer, constant, steps):
        assert not torch.equal(other.tokens, ar.tokens)
    assert fewer.stats["forwards"] == 4 and steps.metadata[0]["num_inference_steps"] == 3


def test_settings_mar_cannot_apply_are_refused(pipe):
    for setting in ({"top_k": 5}, {"top_p": 0.5}, {"cfg_interval": (0.5, 1.0)}):
        for decoding in ("ar", "mar"):
            with pytest.raises(ValueError, match="cannot apply"):
                pipe(class_labels=[0], decoding=decoding, **setting)
    with pytest.raises(ValueError, match=r"num_iter=0 is out of range"):
        pipe(class_labels=[0], decoding="mar", num_iter=0)
    with pytest.raises(
        ValueError, match=r"num_iter=4 applies to decoding in \[.continuous_speculative., .mar.\]"
    ):
        pipe(class_labels=[0], num_iter=4)
    with pytest.raises(ValueError, match=r"class label 24 is out of range"):
        pipe(class_labels=[24])


def test_callback_sees_the_canvas_and_can_stop(pipe):
    seen = []

    def on_step(p, step, timestep, kwargs):
        seen.append((step, kwargs["latents"].shape, int(kwargs["latents"].abs().sum(-1).gt(0).sum())))
        if step == 2:
            p.interrupt = True
        return kwargs

    out = pipe(class_labels=[0], decoding="mar", num_iter=6, callback_on_step_end=on_step, output_type="np")
    assert [s[0] for s in seen] == [0, 1, 2] and all(s[1] == (1, 16, 4) for s in seen)
    assert seen[0][2] < seen[1][2] < seen[2][2] < 16  # tokens decided so far grow
    assert out.images == [] and out.tokens.shape == (1, seen[2][2], 4)


def test_save_and_reload_gives_the_same_images(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    again = arstudio.ImagePipeline.from_pretrained(tmp_path / "saved")
    run = dict(class_labels=[2], generator=_seeds(9), decoding="mar", num_iter=3, output_type="np")
    assert torch.equal(pipe(**run).tokens, again(**{**run, "generator": _seeds(9)}).tokens)


# ---- hub presets, offline ----------------------------------------------------------------------------------


def test_hub_presets_need_weights_and_say_where_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setenv("ARSTUDIO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ARSTUDIO_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(hub.HubWeightsNotFoundError) as err:
        arstudio.load_pipeline("mar-large", device="cpu")
    message = str(err.value)
    assert "kl16.ckpt + mar_large/checkpoint-last.pth" in message and "jadechoghari/mar" in message
    facts = hub.preset_facts("mar-huge")
    assert facts.needs_weights and facts.grid == 16 and facts.resolution == 256
    assert facts.generator_params / 1e6 == pytest.approx(943, rel=0.005)


@pytest.fixture
def tiny_hub_preset(monkeypatch):
    """test-tiny-mar as a hub preset (the MAR converter on its official file names)."""
    base = presets.get_preset("test-tiny-mar")
    preset = dataclasses.replace(
        base,
        name="test-hub-mar",
        hub=HubWeights("jadechoghari/mar", "kl16.ckpt", "mar_base/checkpoint-last.pth", converter="mar"),
    )
    monkeypatch.setitem(presets._REGISTRY, preset.name, preset)
    return preset


def test_a_folder_of_official_files_loads_offline_and_converts_once(tiny_hub_preset, tmp_path, monkeypatch):
    monkeypatch.setenv("ARSTUDIO_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "official"
    (folder / "mar_base").mkdir(parents=True)
    vae = KLTokenizer(tiny_hub_preset.tokenizer)
    torch.save(
        {"model": {k.removeprefix("vae."): v for k, v in vae.state_dict().items()}}, folder / "kl16.ckpt"
    )
    save_checkpoint(
        folder / "mar_base" / "checkpoint-last.pth", official_state(seed=0), official_state(seed=1)
    )
    pipe = arstudio.load_pipeline(tiny_hub_preset.name, device="cpu", weights=folder)
    assert isinstance(pipe.generator, MARGenerator) and isinstance(
        pipe.generator.head.net.output, torch.nn.Linear
    )
    run = dict(class_labels=[4], generator=_seeds(5), num_inference_steps=4, output_type="np")
    first = pipe(**run)
    converted = convert_mar_to_pretrained(
        folder / "kl16.ckpt",
        folder / "mar_base" / "checkpoint-last.pth",
        tmp_path / "converted",
        TINY,
        tiny_hub_preset.tokenizer,
    )
    again = arstudio.load_pipeline(tiny_hub_preset.name, device="cpu", weights=converted)
    assert torch.equal(first.tokens, again(**{**run, "generator": _seeds(5)}).tokens)


# ---- CSpD's pair: a smaller MAR drafting --------------------------------------------------------------------


def test_mar_presets_offer_continuous_speculative_in_cspds_setting(pipe):
    assert pipe.decoding_strategies == ("ar", "continuous_speculative", "mar")
    out = pipe(
        class_labels=[3, 4],
        generator=_seeds(1, 2),
        decoding="continuous_speculative",
        num_iter=12,
        draft_tokens=8,
    )
    stats = out.stats
    assert out.tokens.shape == (2, 4, 4, 4) and len(out.images) == 2
    assert out.metadata[0]["draft_tokens"] == 8 and out.metadata[0]["num_iter"] == 12
    assert stats["prefilled_iterations"] == 2 and stats["draft_forwards"] >= 8  # ceil(0.15 x 12); then rounds
    assert stats["forwards"] < 12  # fewer target passes than iterations
    with pytest.raises(ValueError, match="cannot apply"):
        pipe(class_labels=[0], decoding="continuous_speculative", cfg_interval=(0.5, 1.0))
    raster = arstudio.load_pipeline("test-tiny-continuous", device="cpu")  # num_iter is MAR's alone
    assert "num_iter" not in raster(class_labels=[0], decoding="continuous_speculative").metadata[0]
    with pytest.raises(ValueError, match=r"num_iter=8 applies to MAR presets; preset 'test-tiny-continuous'"):
        raster(class_labels=[0], decoding="continuous_speculative", num_iter=8)


def test_mar_presets_default_to_cspds_eight_draft_iterations(pipe):
    """The published setting comes from the preset; a call's own value still wins."""
    assert arstudio.get_preset("mar-large").knob_defaults == {"continuous_speculative": {"draft_tokens": 8}}
    preset = pipe.preset
    pipe.preset = dataclasses.replace(preset, knob_defaults=arstudio.get_preset("mar-large").knob_defaults)
    try:
        call = {"class_labels": [3], "decoding": "continuous_speculative", "num_iter": 12}
        assert pipe(**call, generator=_seeds(1)).metadata[0]["draft_tokens"] == 8
        assert pipe(**call, generator=_seeds(1), draft_tokens=2).metadata[0]["draft_tokens"] == 2
    finally:
        pipe.preset = preset


def test_an_identical_draft_is_always_accepted_and_reads_once_per_round(pipe):
    from arstudio.decoding.mar_cspd import MARSpeculation, sample_mar_speculative

    model, params = pipe.generator, SamplingParams(guidance_scale=3.0)
    labels = torch.tensor([1, 2])
    one = MARSpeculation(draft_iterations=1, prefill=0.0)

    def run(draft, spec):
        return sample_mar_speculative(model, draft, labels, _seeds(1, 2), params, 8, 6, spec)

    same = run(model, one)
    assert same.stats["acceptance_rate"] == 1.0 and same.stats["residual_rounds"] == 0
    assert torch.equal(same.tokens, run(model, one).tokens) and same.tokens.abs().sum(-1).gt(0).all()
    other = pipe.drafter  # another random MAR of the same size: its trajectories score low under the target
    exact = run(other, MARSpeculation(draft_iterations=4))
    relaxed = run(other, MARSpeculation(draft_iterations=4, inner_temperature=1000.0))
    assert exact.stats["acceptance_rate"] <= relaxed.stats["acceptance_rate"]
    rounds = exact.stats["forwards"] - exact.stats["prefilled_iterations"]
    with trusted_values():
        reads = host_reads(lambda: run(other, MARSpeculation(draft_iterations=4)))
    assert reads == rounds + 1  # one per round (any residual?), one for the acceptance count after the loop
    with pytest.raises(
        ValueError, match=r"the MAR draft does not fit the target \(token_dim: target 4, draft 8"
    ):
        run(MARGenerator(dataclasses.replace(TINY, token_dim=8)), one)


def test_a_hub_mar_finds_its_published_draft_beside_its_files(tmp_path, monkeypatch):
    """mar-large's layout: MAR-B's checkpoint in mar_base/ beside mar_large/ (the draft's config is MAR-B's:
    the tiny stand-in's here)."""
    base = presets.get_preset("test-tiny-mar")
    draft = HubFile("drafter", "jadechoghari/mar", "mar_base/checkpoint-last.pth")
    preset = dataclasses.replace(
        base,
        name="test-hub-mar-large",
        hub=HubWeights(
            "jadechoghari/mar", "kl16.ckpt", "mar_large/checkpoint-last.pth", converter="mar", extras=(draft,)
        ),
    )
    monkeypatch.setitem(presets._REGISTRY, preset.name, preset)
    monkeypatch.setattr(hub, "mar_config", lambda size: TINY)
    folder = tmp_path / "official"
    for size in ("mar_base", "mar_large"):
        (folder / size).mkdir(parents=True)
    vae = KLTokenizer(preset.tokenizer)
    torch.save(
        {"model": {k.removeprefix("vae."): v for k, v in vae.state_dict().items()}}, folder / "kl16.ckpt"
    )
    save_checkpoint(folder / "mar_large" / "checkpoint-last.pth", ema=official_state(seed=1))
    without = arstudio.load_pipeline(preset.name, device="cpu", weights=folder)
    assert "continuous_speculative" not in without.decoding_strategies
    save_checkpoint(folder / "mar_base" / "checkpoint-last.pth", ema=official_state(seed=2))
    pipe = arstudio.load_pipeline(preset.name, device="cpu", weights=folder)
    assert "continuous_speculative" in pipe.decoding_strategies
    assert torch.equal(pipe.drafter.fake_latent, official_state(seed=2)["fake_latent"])
    out = pipe(
        class_labels=[1], decoding="continuous_speculative", draft_tokens=4, num_iter=6, num_inference_steps=4
    )
    assert out.tokens.shape == (1, 4, 4, 4) and out.stats["draft_forwards"] >= 4


def test_compiling_leaves_mar_eager():
    """MAR's passes and head calls change shape every iteration: nothing is compiled (compile=True works)."""
    pipe = arstudio.load_pipeline("test-tiny-mar", device="cpu", compile=True, decoding_models=False)
    assert not pipe.compilation.enabled
    assert pipe(class_labels=[0], decoding="mar", num_iter=2, output_type="np").tokens.shape == (1, 4, 4, 4)


def test_mar_trajectory_densities_carry_each_steps_learned_variance(pipe):
    from arstudio.decoding.mar_cspd import MARTrajectories
    from arstudio.decoding.mar_head import reverse_step

    head, tau, scale = pipe.generator.head, 0.8, 2.5
    traj = MARTrajectories(head, 6, tau, guided=True)
    g = torch.Generator().manual_seed(0)
    z, z_u = torch.randn(3, 32, generator=g), torch.randn(3, 32, generator=g)
    rows = traj.pack(z, z_u, scale)
    noise = torch.randn(traj.steps, 3, 4, generator=g)
    with torch.no_grad():
        xs = traj.sample(rows, noise)
        expected, sigma_terms = torch.zeros(3), torch.zeros(3)
        for k in range(traj.steps):  # log N(x_{k+1}; mean_k, (sigma_k tau)^2), shared constants left out
            mean, log_var = reverse_step(head, xs[k], traj.steps - 1 - k, traj.schedule, z, z_u, scale)
            if k + 1 < traj.steps:
                torch.testing.assert_close(xs[k + 1], mean + torch.exp(0.5 * log_var) * noise[k + 1] * tau)
                expected += (-(noise[k + 1] ** 2) / 2 - log_var / 2).sum(1)
                sigma_terms += (-log_var / 2).sum(1)
            else:  # the last step adds no noise and carries no density
                torch.testing.assert_close(xs[k + 1], mean)
        own = traj.own_log_density(noise, xs, rows)
    # float32: (x - mean) / sigma at the late steps (sigma ~ 1e-3) carries rounding of the batched recomputation
    # (~0.05 here); the log-sigma terms (~22 each) must be there
    assert sigma_terms.abs().min() > 5
    torch.testing.assert_close(own, expected, rtol=0, atol=0.25)

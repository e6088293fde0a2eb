"""Continuous tokens: heads, TokenBridge quantiser, continuous sampler, pipeline and bad inputs."""

import pytest
import torch

from arstudio.decoding.continuous import ddpm_sample, euler_sample, sample_continuous
from arstudio.decoding.logits import SamplingParams
from arstudio.generators.backbone import BackboneConfig
from arstudio.generators.continuous import ContinuousGeneratorConfig, ContinuousImageGenerator
from arstudio.generators.heads import DiffusionHead, DimensionwiseHead, FlowHead
from arstudio.tokenizers.bridge import BridgeQuantizer, gaussian_bins

BACKBONE = BackboneConfig(dim=32, n_layer=2, n_head=4, n_kv_head=2, grid_size=3, prefix_len=1)


def tiny_generator(head: str, seed: int = 0, device="cpu", **options) -> ContinuousImageGenerator:
    config = ContinuousGeneratorConfig(
        token_dim=4, head=head, head_width=32, head_depth=2, levels=8, backbone=BACKBONE, **options
    )
    torch.manual_seed(seed)
    model = ContinuousImageGenerator(config).eval()
    for param in model.head.parameters():  # zero-initialised outputs would make every sample trivial
        torch.nn.init.normal_(param, std=0.2)
    return model.to(device)


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("head", ["diffusion", "flow", "bridge"])
def test_kv_cached_sampling_equals_full_recompute(head, device):
    model = tiny_generator(head, device=device)
    labels = torch.tensor([3, 7], device=device)
    params = SamplingParams(guidance_scale=2.5, temperature=0.9)
    cached = sample_continuous(model, labels, gens(0, 1), params, num_inference_steps=4)
    full = sample_continuous(model, labels, gens(0, 1), params, num_inference_steps=4, use_cache=False)
    assert cached.tokens.shape == (2, 9, 4)
    assert cached.tokens.dtype == (torch.long if head == "bridge" else torch.float32)
    torch.testing.assert_close(cached.tokens.float(), full.tokens.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("head", ["diffusion", "flow"])
def test_an_image_depends_only_on_its_own_generator(head, device):
    model = tiny_generator(head, device=device)
    labels = torch.tensor([3, 7], device=device)
    pair = sample_continuous(model, labels, gens(0, 1), num_inference_steps=3).tokens
    alone = sample_continuous(model, labels[:1], gens(0), num_inference_steps=3).tokens
    torch.testing.assert_close(pair[:1], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(pair[0], pair[1])


@pytest.mark.parametrize("cls", [DiffusionHead, FlowHead])
def test_head_loss_and_sampling_are_deterministic(cls, device):
    torch.manual_seed(0)
    head = cls(4, 16, 32, 2).to(device)
    target, z = torch.randn(6, 4, device=device), torch.randn(6, 16, device=device)
    loss = head.loss(target, z, torch.Generator().manual_seed(5))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert loss == head.loss(target, z, torch.Generator().manual_seed(5))
    loss.backward()
    assert all(p.grad is not None for p in head.parameters())
    draw = ddpm_sample if cls is DiffusionHead else euler_sample
    extra = (5.0,) if cls is DiffusionHead else ()
    a = draw(head, z[:2], gens(1, 2), 6, 1.0, *extra)
    assert a.shape == (2, 4)
    assert torch.equal(a, draw(head, z[:2], gens(1, 2), 6, 1.0, *extra))
    assert not torch.equal(a, draw(head, z[:2], gens(3, 2), 6, 1.0, *extra))


def test_diffusion_head_in_bfloat16_keeps_a_float64_schedule_and_samples(device):
    torch.manual_seed(0)
    head = DiffusionHead(4, 16, 32, 2).to(device, torch.bfloat16)
    assert head.alphas_cumprod.dtype == torch.float64 and head.alphas_cumprod.device.type == device.type
    assert float(head.alphas_cumprod[0]) < 1  # in bf16 it rounds to 1, and the reverse step divides by 1 - 1
    z = torch.randn(2, 16, device=device, dtype=torch.bfloat16)
    assert torch.isfinite(ddpm_sample(head, z, gens(1, 2), 6, 1.0, 5.0).float()).all()


def test_diffusion_head_samples_both_modes_where_regression_collapses():
    """p(x) = 1/2 N(+c, 0.1^2) + 1/2 N(-c, 0.1^2) in 2-D, c = (1.5, 1.5): the head must find both modes."""
    torch.manual_seed(0)
    data_gen = torch.Generator().manual_seed(0)
    centre = torch.tensor([1.5, 1.5])
    head = DiffusionHead(2, 8, 64, 2, num_timesteps=200, batch_mul=1)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    z = torch.zeros(256, 8)
    for _ in range(500):
        signs = torch.randint(0, 2, (256, 1), generator=data_gen) * 2 - 1
        x = signs * centre + 0.1 * torch.randn(256, 2, generator=data_gen)
        loss = head.loss(x, z, data_gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        samples = ddpm_sample(head.eval(), torch.zeros(200, 8), gens(*range(200)), 50, 1.0, 5.0)
    near_plus = ((samples - centre).norm(dim=1) < 0.5).float().mean()
    near_minus = ((samples + centre).norm(dim=1) < 0.5).float().mean()
    assert near_plus > 0.3 and near_minus > 0.3 and near_plus + near_minus > 0.85
    # The MSE-optimal point prediction is the mean, (0, 0): in neither mode.
    assert (torch.zeros(2) - centre).norm() > 2


def test_bridge_round_trip_error_is_bounded():
    torch.manual_seed(0)
    latents = torch.randn(4000, 3) * torch.tensor([0.5, 2.0, 1.0]) + torch.tensor([1.0, -1.0, 0.0])
    previous = float("inf")
    for levels, bound in ((4, 0.15), (16, 0.03), (64, 0.006)):  # equal-probability bins of a normal
        quantizer = BridgeQuantizer(3, levels).fit(latents)
        ids = quantizer.quantize(latents)
        assert ids.dtype == torch.long and int(ids.min()) >= 0 and int(ids.max()) < levels
        relative = ((quantizer.dequantize(ids) - latents) ** 2).mean(0) / latents.var(0)
        assert (relative < bound).all() and relative.max() < previous / 3, (levels, relative)
        previous = float(relative.max())
        # equal-probability bins: every level is used about equally often
        counts = torch.bincount(ids[:, 0], minlength=levels).float()
        assert counts.min() > 0.5 * counts.mean()


def test_lloyd_bins_beat_equal_probability_bins_on_a_spike_with_tails():
    """Shapes latents are a background spike plus object tails: MSE-optimal bins give the tails more levels."""
    torch.manual_seed(0)
    latents = torch.cat([0.05 * torch.randn(6000, 2), 3 * torch.randn(1500, 2)])
    errors = {}
    for method in ("empirical", "lloyd"):
        quantizer = BridgeQuantizer(2, 16).fit(latents, method)
        assert (quantizer.edges.diff(dim=1) > 0).all()  # sorted, distinct edges
        ids = quantizer.quantize(latents)
        assert int(ids.min()) >= 0 and int(ids.max()) < 16
        errors[method] = float(((quantizer.dequantize(ids) - latents) ** 2).mean())
    assert errors["lloyd"] < errors["empirical"] / 5, errors
    with pytest.raises(
        ValueError, match=r"method='kmeans' is unknown; allowed: \('empirical', 'gaussian', 'lloyd'\)"
    ):
        BridgeQuantizer(2, 16).fit(latents, "kmeans")


def test_bridge_warm_start_keeps_the_trunk_function_of_the_same_latent():
    """A bridge generator warm-started from a diffusion run embeds level ids exactly as the diffusion run
    embedded their de-quantised latents, so its backbone states match; the head keeps its own init."""
    from arstudio.training.generator import warm_start_bridge_trunk

    source, bridge = tiny_generator("diffusion", seed=1), tiny_generator("bridge", seed=2)
    torch.manual_seed(3)
    quantizer = BridgeQuantizer(4, 8).fit(torch.randn(2000, 4) * torch.tensor([0.5, 2, 1, 3]) + 0.7)
    bridge.bin_values.copy_(quantizer.values)
    head_before = {k: v.clone() for k, v in bridge.head.state_dict().items()}
    warm_start_bridge_trunk(bridge, source.state_dict(), quantizer, "diffusion run")
    ids = torch.randint(0, 8, (2, 9, 4), generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([3, 5])
    with torch.no_grad():
        expected = source(quantizer.dequantize(ids), labels)
        assert torch.allclose(bridge(ids, labels), expected, atol=1e-5)
    assert all(torch.equal(v, bridge.head.state_dict()[k]) for k, v in head_before.items())
    other = ContinuousImageGenerator(
        ContinuousGeneratorConfig(
            token_dim=4,
            head="diffusion",
            backbone=BackboneConfig(dim=16, n_layer=1, n_head=2, grid_size=3, prefix_len=1),
        )
    )
    with pytest.raises(ValueError, match="missing or misshapen"):
        warm_start_bridge_trunk(bridge, other.state_dict(), quantizer, "small run")


def test_gaussian_bins_are_ordered_and_symmetric():
    edges, values = gaussian_bins(8)
    assert torch.all(edges[1:] > edges[:-1]) and torch.all(values[1:] > values[:-1])
    torch.testing.assert_close(values, -values.flip(0))


@pytest.mark.parametrize("arch", ["mlp", "transformer"])
def test_dimensionwise_head_teacher_forcing_matches_its_sampling_steps(arch, device):
    torch.manual_seed(0)
    head = DimensionwiseHead(token_dim=5, cond_dim=16, width=32, depth=2, levels=8, arch=arch).to(device)
    ids, z = torch.randint(0, 8, (3, 5), device=device), torch.randn(3, 16, device=device)
    logits = head(ids, z)
    assert logits.shape == (3, 5, 8)
    for j in range(5):
        torch.testing.assert_close(head.next_logits(ids[:, :j], z), logits[:, j])
    assert head.loss(ids, z).ndim == 0


def test_transformer_bridge_head_is_causal_over_dimensions():
    torch.manual_seed(0)
    head = DimensionwiseHead(token_dim=5, cond_dim=16, width=32, depth=2, levels=8, arch="transformer")
    for p in head.parameters():  # zero-initialised level embeddings / outputs would hide any leak
        torch.nn.init.normal_(p, std=0.3)
    ids, z = torch.randint(0, 8, (3, 5)), torch.randn(3, 16)
    changed = ids.clone()
    changed[:, 2] = (ids[:, 2] + 1) % 8
    before, after = head(ids, z), head(changed, z)
    torch.testing.assert_close(before[:, :3], after[:, :3])  # rows 0..2 never see dimension 2
    assert not torch.allclose(before[:, 3:], after[:, 3:])


def test_transformer_bridge_head_round_trips_through_save_and_load(tmp_path, device):
    model = tiny_generator("bridge", device=device, head_arch="transformer", head_heads=2)
    model.save_pretrained(tmp_path)
    loaded = ContinuousImageGenerator.from_pretrained(tmp_path).to(device)
    assert loaded.config == model.config
    ids, labels = torch.randint(0, 8, (2, 9, 4), device=device), torch.tensor([1, 2], device=device)
    torch.testing.assert_close(
        loaded.head(ids[:, 0], loaded(ids, labels)[:, 0]), model.head(ids[:, 0], model(ids, labels)[:, 0])
    )


def test_old_bridge_configs_load_as_the_mlp_head(tmp_path):
    import json

    model = tiny_generator("bridge")
    model.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    for key in ("head_arch", "head_heads"):  # configs written before these options existed
        raw.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    loaded = ContinuousImageGenerator.from_pretrained(tmp_path)
    assert loaded.config.head_arch == "mlp"
    assert loaded.config == model.config


# ---- bad inputs --------------------------------------------------------------------------------


def test_generators_refuse_the_other_kind_of_token():
    from arstudio.generators.image import GeneratorConfig, ImageGenerator

    discrete = ImageGenerator(GeneratorConfig(vocab_size=16, backbone=BACKBONE))
    with pytest.raises(ValueError, match="integer token ids, got torch.float32"):
        discrete(torch.randn(1, 9), torch.tensor([0]))
    with pytest.raises(ValueError, match="takes float latents, got torch.int64"):
        tiny_generator("diffusion")(torch.zeros(1, 9, 4, dtype=torch.long), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"tokens must be \(B, N, 4\).*\(1, 9, 6\)"):
        tiny_generator("flow")(torch.randn(1, 9, 6), torch.tensor([0]))
    with pytest.raises(ValueError, match="integer level ids"):
        tiny_generator("bridge")(torch.randn(1, 9, 4), torch.tensor([0]))


def test_bad_configs_and_steps_are_named():
    with pytest.raises(
        ValueError, match=r"head='mse' is unknown; allowed: \('diffusion', 'flow', 'bridge'\)"
    ):
        ContinuousGeneratorConfig(head="mse")
    with pytest.raises(ValueError, match="levels=1 is not allowed"):
        ContinuousGeneratorConfig(head="bridge", levels=1)
    with pytest.raises(ValueError, match="levels=1 is not allowed"):
        BridgeQuantizer(4, 1)
    with pytest.raises(
        ValueError,
        match=r"head_arch='rnn' is not allowed for a bridge head; allowed: \('mlp', 'transformer'\)",
    ):
        ContinuousGeneratorConfig(head="bridge", head_arch="rnn")
    with pytest.raises(ValueError, match="head_arch='transformer' is not allowed for a diffusion head"):
        ContinuousGeneratorConfig(head="diffusion", head_arch="transformer")
    for heads in (0, 3, 2.0, True):
        with pytest.raises(ValueError, match=f"head_heads={heads!r} is not allowed.*head_width=32"):
            ContinuousGeneratorConfig(head="bridge", head_arch="transformer", head_width=32, head_heads=heads)
    with pytest.raises(ValueError, match="arch='rnn' is unknown"):
        DimensionwiseHead(token_dim=5, cond_dim=16, width=32, depth=2, levels=8, arch="rnn")
    model = tiny_generator("diffusion")
    for bad in (0, -3, 2.5, 10_000):
        with pytest.raises(ValueError, match=f"num_inference_steps={bad!r} is not allowed"):
            sample_continuous(model, torch.tensor([0]), gens(0), num_inference_steps=bad)


def test_kl_tokenizer_shapes_and_bad_latents():
    from arstudio.tokenizers.kl import KLConfig, KLTokenizer

    torch.manual_seed(0)
    kl = KLTokenizer(
        KLConfig(resolution=16, block_out_channels=(8, 16, 16), latent_channels=4, norm_num_groups=4)
    )
    latents = kl.encode(torch.zeros(2, 3, 16, 16))
    assert latents.shape == (2, 4, 4, 4)
    assert kl.decode(latents).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="discrete token ids belong to a VQ tokenizer"):
        kl.decode(torch.zeros(2, 4, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"latents must be \(B, 4, 4, 4\); got \(2, 4, 4, 3\)"):
        kl.decode(torch.zeros(2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"images must be a float tensor \(B, 3, 16, 16\)"):
        kl.encode(torch.zeros(2, 3, 32, 32))


# ---- pipeline ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def continuous_pipe(device):
    from arstudio.pipelines.loading import load_pipeline

    return load_pipeline("test-tiny-continuous", device=device)


def test_pipeline_call_names_tokenizer_head_and_steps(continuous_pipe):
    out = continuous_pipe(
        prompt=["red circle", "blue square"],
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=3,
        output_type="np",
    )
    assert len(out.images) == 2 and out.images[0].shape == (16, 16, 3)
    assert out.tokens.shape == (2, 4, 4, 4)
    meta = out.metadata[0]
    assert (meta["tokenizer"], meta["head"], meta["num_inference_steps"]) == ("KLTokenizer", "diffusion", 3)
    assert out.stats["head_steps"] == 3
    again = continuous_pipe(
        class_labels=[0],
        generator=[torch.Generator().manual_seed(out.seeds[0])],
        num_inference_steps=3,
        output_type="np",
    )
    assert (again.images[0] == out.images[0]).all()
    assert continuous_pipe(class_labels=[0], output_type="np").metadata[0]["num_inference_steps"] == 8


def test_pipeline_refuses_bad_steps(continuous_pipe, device):
    from arstudio.pipelines.loading import load_pipeline

    with pytest.raises(ValueError, match="num_inference_steps=0 is not allowed for a diffusion head"):
        continuous_pipe(class_labels=[0], num_inference_steps=0)
    with pytest.raises(ValueError, match="num_inference_steps=4 applies to diffusion/flow heads"):
        load_pipeline("test-tiny-c2i", device=device)(class_labels=[0], num_inference_steps=4)


def test_bridge_pipeline_and_preview(device):
    from arstudio.pipelines.loading import load_pipeline

    pipe = load_pipeline("test-tiny-bridge", device=device)
    out = pipe(class_labels=[1, 2], generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.tokens.shape == (2, 4, 4, 4) and out.tokens.dtype == torch.long
    assert (out.metadata[0]["tokenizer"], out.metadata[0]["head"]) == ("BridgeTokenizer", "bridge")
    previews = pipe.preview(out.tokens.flatten(1, 2)[:, :5])
    assert len(previews) == 2 and previews[0].size == (16, 16)


def test_shipped_continuous_preset_loads_and_generates(device):
    from arstudio.pipelines.loading import load_pipeline

    pipe = load_pipeline("shapes-c2i-continuous", device=device)
    out = pipe(
        class_labels=[0], generator=torch.Generator().manual_seed(0), num_inference_steps=5, output_type="np"
    )
    assert out.images[0].shape == (32, 32, 3) and out.tokens.shape == (1, 8, 8, 8)

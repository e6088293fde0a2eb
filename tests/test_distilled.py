"""Distilled decoding: DD1's flow map (statistical), the DD model and its samplers, DD1/DD2 training, pipeline
strategies and their bad-input errors."""

import copy

import pytest
import torch
import torch.nn.functional as F

import arstudio
from arstudio.decoding.distilled import (
    draw_noise,
    sample_distilled,
    sample_distilled_hybrid,
    teacher_flow_tokens,
)
from arstudio.decoding.flow_map import flow_to_codebook, mixture_posterior_mean
from arstudio.decoding.logits import SamplingParams, classifier_free_guidance, filter_logits
from arstudio.generators.distilled import DDGenerator, straight_through_codes


def chi_square(counts: torch.Tensor, expected: torch.Tensor) -> float:
    keep = expected > 0
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


@pytest.fixture(scope="module")
def pipe(device):
    return arstudio.load_pipeline("test-tiny-c2i", device=device)


def test_flow_map_samples_the_categorical_exactly_and_deterministically(device):
    g = torch.Generator().manual_seed(0)
    codebook = F.normalize(torch.randn(8, 4, generator=g), dim=-1).to(device)
    draws = 4000
    for temperature in (1.0, 0.4):  # a spread and a peaked distribution
        probs = (torch.randn(8, generator=g) * 1.5 / temperature).softmax(-1).to(device)
        noise = torch.randn(draws, 4, generator=g).to(device)
        ids = flow_to_codebook(noise, probs.expand(draws, 8), codebook)
        counts = torch.bincount(ids, minlength=8).double().cpu()
        expected = draws * probs.double().cpu()
        # 7 degrees of freedom: P(chi2 > 24.3) = 0.001 under the null hypothesis "ids ~ probs"
        assert chi_square(counts, expected) < 24.3
        assert torch.equal(ids, flow_to_codebook(noise, probs.expand(draws, 8), codebook))
        wrong = expected.roll(1)  # the test has power: another distribution is rejected
        assert chi_square(counts, wrong) > 100


def test_flow_map_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="codebook must be"):
        flow_to_codebook(torch.zeros(3, 4), torch.ones(3, 8), torch.zeros(8, 5))
    with pytest.raises(ValueError, match="pair up"):
        flow_to_codebook(torch.zeros(3, 4), torch.ones(2, 8), torch.zeros(8, 4))


def test_posterior_mean_is_the_codes_average_at_t0_and_the_nearest_code_near_t1():
    codebook = torch.eye(3)
    log_p = torch.tensor([[0.5, 0.3, 0.2]]).log()
    assert torch.allclose(mixture_posterior_mean(torch.randn(1, 3), 0.0, 1.0, log_p, codebook), log_p.exp())
    near = mixture_posterior_mean(torch.tensor([[0.0, 0.99, 0.0]]), 0.99, 0.01, log_p, codebook)
    assert torch.allclose(near, codebook[1:2], atol=1e-6)


def _teacher_probs(teacher, tokens, labels, params):
    null = teacher.cls_embedding.null(labels.shape[0])
    logits = classifier_free_guidance(teacher(tokens, labels), teacher(tokens, null), params.guidance_scale)
    flat = filter_logits(logits.reshape(-1, logits.shape[-1]), params.temperature, params.top_k, params.top_p)
    return flat.view(logits.shape)


@torch.no_grad()
def test_chained_map_reproduces_the_teachers_per_position_distribution(pipe, device):
    teacher, codebook = pipe.generator, pipe.tokenizer.codebook_vectors()
    params = SamplingParams(guidance_scale=2.0, temperature=0.05)  # sharpened: random logits are flat
    draws = 1500
    labels = torch.full((draws,), 3, device=device)
    noise = torch.randn(draws, teacher.seq_len, codebook.shape[1], generator=torch.Generator().manual_seed(1))
    noise = noise.to(device)
    tokens = teacher_flow_tokens(teacher, labels, noise, codebook, params).tokens
    probs = _teacher_probs(teacher, tokens, labels, params)  # (draws, N, V): p(. | the map's own prefix)
    for position in (0, 1, 7, 15):
        counts = torch.bincount(tokens[:, position], minlength=codebook.shape[0]).double().cpu()
        expected = probs[:, position].double().sum(0).cpu()
        bins = expected > 5  # chi-square needs enough expected counts; pool the rest
        pooled_counts = torch.cat([counts[bins], counts[~bins].sum()[None]])
        pooled_expected = torch.cat([expected[bins], expected[~bins].sum()[None]])
        dof = int(bins.sum())
        assert chi_square(pooled_counts, pooled_expected) < dof + 5 * (2 * dof) ** 0.5, position
    again = teacher_flow_tokens(teacher, labels[:4], noise[:4], codebook, params).tokens
    assert torch.equal(again, tokens[:4])  # deterministic, and independent of the batch


def test_dd_model_from_teacher_copies_the_trunk_and_checks_its_pairing(pipe, tmp_path):
    teacher, tokenizer = pipe.generator, pipe.tokenizer
    model = DDGenerator.from_teacher(teacher, tokenizer)
    assert model.head.output.weight.device == teacher.head.output.weight.device
    assert torch.equal(
        model.backbone.layers[0].attention.wqkv.weight, teacher.backbone.layers[0].attention.wqkv.weight
    )
    assert torch.equal(model.head.output.weight, teacher.head.output.weight)
    # the input projection is the least-squares fit of the teacher's embeddings from the codes
    codes = tokenizer.codebook_vectors()
    fit = model.tok_embeddings(codes)
    assert (fit - teacher.tok_embeddings.weight).norm() < teacher.tok_embeddings.weight.norm()
    model.save_pretrained(tmp_path)
    loaded = DDGenerator.from_pretrained(tmp_path)  # on the CPU: fingerprints do not depend on the device
    loaded.check_pairing(teacher, tokenizer)
    other = arstudio.load_pipeline("test-tiny-t2i") if "test-tiny-t2i" in arstudio.list_presets() else None
    changed = type(teacher)(teacher.config)
    with pytest.raises(ValueError, match="distilled from teacher"):
        loaded.check_pairing(changed, tokenizer)
    with pytest.raises(ValueError, match="distilled from tokenizer"):
        shifted = type(tokenizer)(tokenizer.config)
        loaded.check_pairing(teacher, shifted)
    del other


def test_one_and_two_step_sampling(pipe, device):
    model, codebook = pipe.distilled["dd1"], pipe.tokenizer.codebook_vectors()
    labels = torch.tensor([1, 5], device=device)
    noise = draw_noise([torch.Generator().manual_seed(s) for s in (0, 1)], model.seq_len, 4, device)
    one = sample_distilled(model, labels, noise, codebook, 1)
    assert one.tokens.shape == (2, 16) and one.vectors.shape == (2, 16, 4) and one.stats["forwards"] == 1
    split = model.config.logits_tokens
    assert torch.equal(one.vectors[:, :split], codebook[one.tokens[:, :split]])  # argmax positions are codes
    two = sample_distilled(model, labels, noise, codebook, 2)
    keep = model.config.two_step_start
    assert torch.equal(two.tokens[:, :keep], one.tokens[:, :keep])
    # the second step reads the kept codes followed by the *same* noise
    state = torch.cat([codebook[one.tokens[:, :keep]], noise[:, keep:]], dim=1)
    logits, vectors = model(state, keep, labels)
    assert torch.allclose(two.vectors[:, keep:], vectors[:, keep:]) or split > keep
    with pytest.raises(ValueError, match="num_inference_steps=3"):
        sample_distilled(model, labels, noise, codebook, 3)
    with pytest.raises(ValueError, match=r"noise must be .*\(2, 16, 4\)"):
        sample_distilled(model, labels, noise[:, :8], codebook, 1)


def test_split_heads_compute_only_the_rows_the_sampler_reads(pipe, device):
    model = pipe.distilled["dd1"]
    labels = torch.tensor([3, 6], device=device)
    state = torch.randn(2, model.seq_len, 4, generator=torch.Generator().manual_seed(8)).to(device)
    logits, vectors = model(state, 5, labels)
    early, late = model(state, 5, labels, split=True)
    split = model.config.logits_tokens
    assert early.shape == (2, split, logits.shape[-1]) and late.shape == (2, model.seq_len - split, 4)
    assert torch.allclose(early, logits[:, :split], atol=1e-6)
    assert torch.allclose(late, vectors[:, split:], atol=1e-6)


def test_hybrid_from_zero_is_the_teacher_map_up_to_the_switch(pipe, device):
    model, teacher, codebook = pipe.distilled["dd1"], pipe.generator, pipe.tokenizer.codebook_vectors()
    labels = torch.tensor([2, 2, 7], device=device)
    noise = torch.randn(3, 16, 4, generator=torch.Generator().manual_seed(3)).to(device)
    params = SamplingParams(guidance_scale=2.0)
    switch = model.config.two_step_start
    hybrid = sample_distilled_hybrid(model, teacher, labels, noise, codebook, params, 0)
    exact = teacher_flow_tokens(teacher, labels, noise, codebook, params).tokens
    assert torch.equal(hybrid.tokens[:, :switch], exact[:, :switch])
    assert hybrid.stats["forwards"] == switch + 1  # teacher prefill + switch - 1 steps, + one DD step
    with pytest.raises(ValueError, match="dd_hybrid_start=99"):
        sample_distilled_hybrid(model, teacher, labels, noise, codebook, params, 99)


def test_pipeline_distilled_strategies_and_bad_input(pipe):
    assert pipe.decoding_strategies[-3:] == ("dd1", "dd1_hybrid", "dd2")
    seeds = [torch.Generator().manual_seed(s) for s in (4, 5)]
    out = pipe(class_labels=[0, 9], decoding="dd1", generator=seeds, output_type="np")
    assert out.stats["forwards_per_image"] == 1 and out.metadata[0]["num_inference_steps"] == 1
    noise = draw_noise([torch.Generator().manual_seed(s) for s in (4, 5)], 16, 4)
    again = pipe(class_labels=[0, 9], decoding="dd1", noise=noise, output_type="np")
    assert all((a == b).all() for a, b in zip(out.images, again.images, strict=True))
    two = pipe(class_labels=[0, 9], decoding="dd2", num_inference_steps=2, noise=noise, output_type="np")
    assert two.stats["forwards_per_image"] == 2 and two.metadata[0]["decoding"] == "dd2"
    hybrid = pipe(class_labels=[0], decoding="dd1_hybrid", dd_hybrid_start=2, noise=noise[:1])
    assert hybrid.metadata[0]["dd_hybrid_start"] == 2 and len(hybrid.images) == 1
    with pytest.raises(ValueError, match=r"num_inference_steps=3 is out of range: allowed are \[1, 2\]"):
        pipe(class_labels=[0], decoding="dd1", num_inference_steps=3)
    with pytest.raises(ValueError, match="does not apply to dd1_hybrid"):
        pipe(class_labels=[0], decoding="dd1_hybrid", num_inference_steps=1)
    with pytest.raises(ValueError, match=r"noise must be .*\(1, 16, 4\), got \(1, 16, 3\)"):
        pipe(class_labels=[0], decoding="dd1", noise=torch.zeros(1, 16, 3))
    with pytest.raises(ValueError, match="noise= applies to decoding in"):
        pipe(class_labels=[0], decoding="ar", noise=noise[:1])
    with pytest.raises(ValueError, match="dd_hybrid_start=2 applies to decoding in"):
        pipe(class_labels=[0], decoding="dd1", dd_hybrid_start=2)


def test_straight_through_codes_forward_a_code_and_pass_gradients(device):
    codebook = F.normalize(torch.randn(6, 3, device=device), dim=-1)
    logits = torch.randn(2, 5, 6, device=device, requires_grad=True)
    vectors = straight_through_codes(logits, codebook)
    assert torch.allclose(vectors, codebook[logits.argmax(-1)], atol=1e-6)
    vectors.sum().backward()
    assert logits.grad.abs().sum() > 0


def test_fake_score_starts_as_the_teacher_so_the_first_csd_gradient_is_zero(pipe, device):
    from arstudio.training.distill_dd2 import FakeScore, csd_batch, csd_generator_loss, fake_loss

    teacher, codebook = pipe.generator, pipe.tokenizer.codebook_vectors().detach()
    model = DDGenerator.from_teacher(teacher, pipe.tokenizer)
    fake = FakeScore(teacher.config.backbone.dim, teacher.config.vocab_size, 4).to(device)
    noise, labels = torch.randn(3, 16, 4, device=device), torch.tensor([0, 1, 2], device=device)
    batch = csd_batch(model, teacher, noise, labels, codebook, SamplingParams(guidance_scale=2.0))
    draws = torch.Generator().manual_seed(0)
    loss, grad = csd_generator_loss(fake, batch, codebook, draws)
    assert grad < 1e-6 and loss.item() < 1e-9  # zero up to rounding
    denoising = fake_loss(fake, batch, codebook, draws)
    denoising.backward()
    assert (
        denoising.item() > 0 and fake.correction.output.weight.grad.abs().sum() > 0
    )  # the fake model learns
    torch.optim.SGD(fake.parameters(), lr=1.0).step()
    _, grad_after = csd_generator_loss(fake, batch, codebook, draws)
    assert grad_after > 1e-4  # once it differs from the teacher, the generator gets a gradient


def test_dd1_and_dd2_training_run_and_resume(tmp_path):
    from arstudio.training.distill import train_dd1
    from arstudio.training.distill_dd2 import train_dd2

    run = tmp_path / "dd1"
    first = train_dd1(run, "test-tiny-c2i", steps=2, batch_size=4, num_pairs=6, save_every=1)
    assert (run / "dd1_pairs.safetensors").is_file() and first.config.method == "dd1"
    resumed = train_dd1(run, "test-tiny-c2i", steps=3, batch_size=4, num_pairs=6, save_every=1)
    assert torch.load(run / "train_state.pt", weights_only=True)["step"] == 3 and resumed is not None
    pairs_before = (run / "dd1_pairs.safetensors").read_bytes()
    dd2 = train_dd2(
        tmp_path / "dd2",
        "test-tiny-c2i",
        init=run,
        steps=2,
        batch_size=3,
        num_pairs=8,
        save_every=1,
        guidance_scale=4.0,
        ema_decay=0.5,
    )
    assert dd2.config.method == "dd2"
    average = DDGenerator.from_pretrained(tmp_path / "dd2" / "ema").state_dict()
    assert any(not torch.equal(average[k], v) for k, v in dd2.state_dict().items())
    with pytest.raises(ValueError, match="guidance_scale"):
        train_dd2(tmp_path / "bad", "test-tiny-c2i", steps=1, batch_size=2, guidance_scale=-1.0)
    # DD1's pairs are copied and extended in the DD2 run, never rewritten beside the DD1 weights
    assert (run / "dd1_pairs.safetensors").read_bytes() == pairs_before
    assert (tmp_path / "dd2" / "dd1_pairs.safetensors").is_file()
    assert DDGenerator.from_pretrained(tmp_path / "dd2").config.method == "dd2"


def test_cli_train_distill_dd1(tmp_path):
    from arstudio.cli import main

    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "distill",
                "--method",
                "dd1",
                "--teacher",
                "test-tiny-c2i",
                "--out",
                str(out),
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--pairs",
                "3",
            ]
        )
        == 0
    )
    assert (out / "model.safetensors").is_file()


def test_shipped_dd_models_load_with_shapes_c2i_and_refuse_another_teacher(tmp_path, device):
    import shutil

    from arstudio.presets import WEIGHTS_ROOT

    pipe = arstudio.load_pipeline("shapes-c2i", device=device)
    assert set(pipe.distilled) == {"dd1", "dd2"} and pipe.decoding_strategies[-3:] == (
        "dd1",
        "dd1_hybrid",
        "dd2",
    )
    out = pipe(class_labels=[0], decoding="dd2", generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images[0].shape == (32, 32, 3) and out.stats["forwards_per_image"] == 1
    shipped = WEIGHTS_ROOT / "shapes-c2i"
    for part in ("tokenizer", "dd1"):
        shutil.copytree(shipped / part, tmp_path / part)
    generator = pipe.generator
    with torch.no_grad():
        generator.tok_embeddings.weight[0] += 1.0  # another teacher (e.g. retrained): another fingerprint
    generator.save_pretrained(tmp_path / "generator")
    with pytest.raises(ValueError, match="distilled from teacher"):
        arstudio.load_pipeline("shapes-c2i", device=device, weights=tmp_path)


def test_shipped_dd_models_load_in_half_precision(device):
    """A bf16/fp16 load must still pass the pairing check, on any device."""
    for dtype in (torch.bfloat16, torch.float16):
        pipe = arstudio.load_pipeline("shapes-c2i", device=device, dtype=dtype)
        assert {"dd1", "dd2"} <= set(pipe.decoding_strategies)
        assert pipe.distilled["dd1"].flag_embedding.weight.dtype == dtype


def test_pairing_fingerprints_ignore_device_dtype_and_computed_values(monkeypatch):
    """Fingerprints hash float32 CPU copies of stored parameters: the same after a bf16/fp16 round trip of the
    shipped (float16-stored) models, and blind to how a device computes the normalised codebook (CUDA rounds
    F.normalize differently; simulated here by perturbing the computed vectors)."""
    from arstudio.generators.distilled import codebook_fingerprint
    from arstudio.generators.drafter import target_fingerprint

    pipe = arstudio.load_pipeline("shapes-c2i", device="cpu")
    config = pipe.distilled["dd1"].config
    assert codebook_fingerprint(pipe.tokenizer) == config.tokenizer_fingerprint
    assert (
        target_fingerprint(pipe.generator)
        == config.teacher_fingerprint
        == pipe.drafter.config.target_fingerprint
    )
    for dtype in (torch.bfloat16, torch.float16):
        assert codebook_fingerprint(copy.deepcopy(pipe.tokenizer).to(dtype)) == config.tokenizer_fingerprint
        assert target_fingerprint(copy.deepcopy(pipe.generator).to(dtype)) == config.teacher_fingerprint
    computed = pipe.tokenizer.codebook_vectors
    monkeypatch.setattr(pipe.tokenizer, "codebook_vectors", lambda: computed() * (1 + 1e-3))
    assert codebook_fingerprint(pipe.tokenizer) == config.tokenizer_fingerprint
    with torch.no_grad():  # the hash does see the stored values
        pipe.tokenizer.codebook_parameter()[0, 0] += 0.1
    assert codebook_fingerprint(pipe.tokenizer) != config.tokenizer_fingerprint


def test_one_shot_dd_refuses_sampling_it_cannot_apply(device):
    pipe = arstudio.load_pipeline("test-tiny-c2i", device=device)
    default = pipe.preset.defaults["temperature"]
    out = pipe(
        class_labels=[1], decoding="dd1", temperature=default, generator=torch.Generator().manual_seed(0)
    )
    assert out.metadata[0]["temperature"] == default
    for knob in ({"temperature": default / 2}, {"guidance_scale": 7.0}, {"top_k": 3}):
        with pytest.raises(ValueError, match=f"{next(iter(knob))}=.*cannot apply"):
            pipe(class_labels=[1], decoding="dd2", generator=torch.Generator().manual_seed(0), **knob)
    # what the studio's Decoding lab asks before it runs a one-shot strategy with the Image tab's settings
    settings = {"guidance_scale": 7.0, "temperature": default, "top_k": None, "prompt": "red circle"}
    guidance = pipe.preset.defaults["guidance_scale"]
    assert pipe.sampling_conflicts("dd2", settings) == {"guidance_scale": (7.0, guidance)}
    assert pipe.sampling_conflicts("dd1_hybrid", settings) == {} == pipe.sampling_conflicts("ar", settings)


def test_distillation_refuses_a_control_teacher(tmp_path):
    from arstudio.training.distill import train_dd1

    with pytest.raises(ValueError, match="control encoder"):
        train_dd1(tmp_path / "dd1", "test-tiny-control", steps=1, batch_size=2, num_pairs=2)

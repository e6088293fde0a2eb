"""Continuous speculative decoding (CSpD) on tiny random diffusion-head models: a draft model with its own
trunk, and a draft head on the target's trunk features."""

import copy
from dataclasses import replace

import pytest
import torch

from arstudio.decoding.continuous_speculative import (
    ContinuousSpeculativeParams,
    sample_continuous_speculative,
)
from arstudio.decoding.guidance import guide
from arstudio.decoding.logits import SamplingParams
from arstudio.decoding.random import DeviceRandom
from arstudio.decoding.trajectories import Trajectories, residual_sample
from arstudio.generators.draft_head import DraftHead
from benchmarks.bench_dispatch import DispatchCounter
from tests.test_continuous import gens, tiny_generator

PARAMS = SamplingParams(guidance_scale=2.0, temperature=1.0)
SPEC = ContinuousSpeculativeParams(draft_tokens=3, num_inference_steps=5)
HEAD_SPEC = ContinuousSpeculativeParams(num_inference_steps=5)


def perturbed(model, scale: float, seed: int = 9):
    """A close but different draft: a copy with noise on its head."""
    draft = copy.deepcopy(model)
    with torch.no_grad():
        for param in draft.head.parameters():
            param.add_(scale * torch.randn(param.shape, generator=torch.Generator().manual_seed(seed)))
    return draft


def test_a_draft_model_equal_to_the_target_is_always_accepted():
    target = tiny_generator("diffusion")
    out = sample_continuous_speculative(
        target, copy.deepcopy(target), torch.tensor([1, 4]), gens(0, 1), PARAMS, SPEC
    )
    assert out.tokens.shape == (2, 9, 4) and torch.isfinite(out.tokens).all()
    assert out.stats["acceptance_rate"] == 1.0
    assert out.stats["forwards_per_image"] < 9  # several tokens per target forward


def test_a_different_draft_model_is_sometimes_rejected_and_relaxation_accepts_more():
    target = tiny_generator("diffusion")
    draft = perturbed(target, 0.002)
    labels = torch.arange(6)
    exact = sample_continuous_speculative(target, draft, labels, gens(*range(6)), PARAMS, SPEC)
    assert 0.0 < exact.stats["acceptance_rate"] < 1.0
    again = sample_continuous_speculative(target, draft, labels, gens(*range(6)), PARAMS, SPEC)
    assert torch.equal(exact.tokens, again.tokens)  # seeded: reproducible
    relaxed = sample_continuous_speculative(
        target, draft, labels, gens(*range(6)), PARAMS, replace(SPEC, inner_temperature=50.0)
    )
    assert relaxed.stats["acceptance_rate"] > exact.stats["acceptance_rate"]


def test_a_draft_head_equal_to_the_target_head_is_always_accepted_and_gives_the_target_tokens():
    target = tiny_generator("diffusion")
    draft = DraftHead.from_target(target, depth=target.config.head_depth)
    labels = torch.tensor([1, 4, 7])
    out = sample_continuous_speculative(target, draft, labels, gens(0, 1, 2), PARAMS, HEAD_SPEC)
    assert out.stats["acceptance_rate"] == 1.0 and out.stats["residual_rounds"] == 0
    assert out.stats["prefilled_tokens"] == 2  # ceil(0.15 * 9)
    # The target alone (everything pre-filled) draws the same numbers for the same trajectories.
    alone = sample_continuous_speculative(
        target, draft, labels, gens(0, 1, 2), PARAMS, replace(HEAD_SPEC, prefill=1.0)
    )
    assert alone.stats["prefilled_tokens"] == 9
    torch.testing.assert_close(out.tokens[:, :2], alone.tokens[:, :2])


def test_a_different_draft_head_is_sometimes_rejected_and_relaxation_accepts_more():
    target = tiny_generator("diffusion")
    draft = perturbed(DraftHead.from_target(target, depth=2), 0.01)
    labels = torch.arange(6)
    exact = sample_continuous_speculative(target, draft, labels, gens(*range(6)), PARAMS, HEAD_SPEC)
    assert 0.0 < exact.stats["acceptance_rate"] < 1.0 and exact.stats["residual_rounds"] > 0
    assert len(exact.stats["acceptance_by_token"]) == 9 - 2
    again = sample_continuous_speculative(target, draft, labels, gens(*range(6)), PARAMS, HEAD_SPEC)
    assert torch.equal(exact.tokens, again.tokens)
    relaxed = sample_continuous_speculative(
        target, draft, labels, gens(*range(6)), PARAMS, replace(HEAD_SPEC, inner_temperature=1000.0)
    )
    assert relaxed.stats["acceptance_rate"] > exact.stats["acceptance_rate"]


def test_draft_head_images_do_not_depend_on_their_batch_mates():
    """A residual no image of the batch needs is skipped, its draws too: the draw index stays the same."""
    target = tiny_generator("diffusion")
    draft = perturbed(DraftHead.from_target(target, depth=2), 0.01)
    batch = sample_continuous_speculative(
        target, draft, torch.tensor([3, 5, 0]), gens(7, 8, 9), PARAMS, HEAD_SPEC
    )
    alone = sample_continuous_speculative(target, draft, torch.tensor([5]), gens(8), PARAMS, HEAD_SPEC)
    torch.testing.assert_close(batch.tokens[1], alone.tokens[0], atol=1e-4, rtol=1e-4)


def test_draft_head_sampling_is_exact_with_enough_residual_tries():
    """CSpD with a poor draft head samples the target's distribution: token 2's values over many images
    match the target's own samples (means within 5 standard errors, standard deviations within 10 %)."""
    target = tiny_generator("diffusion")
    draft = perturbed(DraftHead.from_target(target, depth=2), 0.01)
    labels = torch.full((1000,), 3)
    spec = replace(HEAD_SPEC, max_tries=16)
    cspd = sample_continuous_speculative(target, draft, labels, gens(*range(1000)), PARAMS, spec)
    assert 0.2 < cspd.stats["acceptance_rate"] < 0.9
    plain = sample_continuous_speculative(
        target, draft, labels, gens(*range(5000, 6000)), PARAMS, replace(spec, prefill=1.0)
    )
    a, b = cspd.tokens[:, 2], plain.tokens[:, 2]
    standard_error = ((a.var(0) + b.var(0)) / a.shape[0]).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() < 5 * standard_error).all()
    assert ((a.std(0) / b.std(0) - 1).abs() < 0.1).all()


def test_residual_sampling_reads_nothing_back():
    target = tiny_generator("diffusion")
    p = Trajectories(target.head, 5, 1.0, 5.0)
    q = Trajectories(perturbed(target, 0.05).head, 5, 1.0, 5.0)
    z = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    rng = DeviceRandom(gens(0, 1, 2), "cpu")
    with DispatchCounter() as reads:
        token = residual_sample(p, q, z, z, rng, max_tries=4)
    assert (
        reads.tally.total_host_reads == 0 and token.shape == (3, 4) and rng.draws == 5
    )  # 4 proposals + 1 uniform


def test_host_reads_at_most_one_per_round():
    target = tiny_generator("diffusion")
    labels = torch.tensor([0, 5])
    with DispatchCounter() as reads:
        out = sample_continuous_speculative(
            target, perturbed(target, 0.002), labels, gens(0, 1), PARAMS, SPEC
        )
    rounds = out.stats["forwards"] - 1
    assert reads.tally.total_host_reads <= rounds + 3  # + the statistics after the loop and the labels' check
    head = perturbed(DraftHead.from_target(target, depth=2), 0.01)
    with DispatchCounter() as reads:
        out = sample_continuous_speculative(target, head, labels, gens(0, 1), PARAMS, HEAD_SPEC)
    rounds = 9 - out.stats["prefilled_tokens"]
    # + the statistics, the labels' check and the draft head's pairing check (a hash of the target's head)
    assert reads.tally.total_host_reads <= rounds + 4, dict(reads.tally.host_reads)


def test_trajectory_density_prefers_its_own_conditioning_and_the_draw_is_free():
    """A trajectory drawn under z scores higher under z than under an unrelated z' (the acceptance test's
    ingredient); under its own head its density is its noise's."""
    head = tiny_generator("diffusion").head
    steps = Trajectories(head, 6, temperature=0.8, x0_clip=5.0)
    z = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))  # the tiny backbone's width
    other = 3 * torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    noise = steps.noise(DeviceRandom(gens(*range(16)), "cpu"), z)
    xs = steps.sample(z, noise)
    own = steps.log_density(xs, steps.means(xs[:-1], z))
    assert (own > steps.log_density(xs, steps.means(xs[:-1], other))).float().mean() > 0.8
    torch.testing.assert_close(own, Trajectories.own_log_density(noise), rtol=1e-3, atol=1e-3)


def test_trajectories_follow_the_plain_sampler():
    """The draft/residual trajectories run ddpm_sample's arithmetic (here with the same draws)."""
    from arstudio.decoding.continuous import ddpm_sample

    head = tiny_generator("diffusion").head
    z = torch.randn(4, 32, generator=torch.Generator().manual_seed(3))
    steps = Trajectories(head, 6, temperature=0.7, x0_clip=5.0)
    rng = DeviceRandom(gens(*range(4)), "cpu")
    noise = torch.stack([rng.normal((4,)) for _ in range(6)])  # ddpm_sample's draws, one call per step
    plain = ddpm_sample(head, z, DeviceRandom(gens(*range(4)), "cpu"), 6, 0.7, 5.0)
    torch.testing.assert_close(steps.sample(z, noise)[-1], plain, rtol=1e-4, atol=1e-4)


def test_guidance_with_per_image_token_indices_matches_the_shared_index():
    params = SamplingParams(guidance_scale=3.0, cfg_interval=(0.25, 0.75))
    out = torch.randn(
        4, 3, 5, generator=torch.Generator().manual_seed(0)
    )  # [cond; uncond] x 2 images, 3 positions
    index = torch.tensor([[0, 1, 2], [2, 3, 4]])
    mixed = guide(out, 2, params, index, 8)
    for b in range(2):
        for j in range(3):
            one = guide(out[[b, 2 + b], j], 1, params, int(index[b, j]), 8)
            torch.testing.assert_close(mixed[b, j], one[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"draft_tokens": 0}, "draft_tokens=0 must be an integer >= 1"),
        ({"inner_temperature": 0.5}, r"inner_temperature=0.5 must be a number >= 1 \(1 = exact\)"),
        ({"num_inference_steps": 1}, "num_inference_steps=1 must be an integer >= 2"),
        ({"prefill": 1.5}, r"prefill=1.5 must be a fraction in \[0, 1\]"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ContinuousSpeculativeParams(**kwargs)


def test_heads_and_shapes_must_fit():
    target = tiny_generator("diffusion")
    with pytest.raises(ValueError, match="needs diffusion heads; the draft model has a flow head"):
        sample_continuous_speculative(
            target, tiny_generator("flow"), torch.tensor([0]), gens(0), PARAMS, SPEC
        )


def test_a_draft_head_of_another_target_is_refused_in_one_line():
    target, other = tiny_generator("diffusion"), tiny_generator("diffusion", seed=1)
    draft = DraftHead.from_target(other)
    with pytest.raises(
        ValueError,
        match=r"^this CSpD draft head was distilled from target '\w+', but the "
        r"target's fingerprint is '\w+'; distill one",
    ) as err:
        sample_continuous_speculative(target, draft, torch.tensor([0]), gens(0), PARAMS, HEAD_SPEC)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="draft_tokens=3: a draft head reads the target's trunk"):
        sample_continuous_speculative(
            target, DraftHead.from_target(target), torch.tensor([0]), gens(0), PARAMS, SPEC
        )


def test_a_draft_head_round_trips_through_save_pretrained(tmp_path):
    target = tiny_generator("diffusion")
    draft = perturbed(DraftHead.from_target(target, depth=2), 0.01)
    draft.save_pretrained(tmp_path, dtype=torch.float16)
    loaded = DraftHead.from_pretrained(tmp_path)
    loaded.check_target(target)
    assert loaded.config == draft.config


def test_pipeline_continuous_speculative_on_the_tiny_preset():
    import arstudio

    pipe = arstudio.load_pipeline("test-tiny-continuous", device="cpu")
    assert pipe.decoding_strategies == ("ar", "continuous_speculative")
    out = pipe(
        class_labels=[2, 3],
        decoding="continuous_speculative",
        draft_tokens=2,
        cspd_inner_temperature=2.0,
        num_inference_steps=4,
        cfg_interval=(0.2, 1.0),
        generator=torch.Generator().manual_seed(0),
    )
    meta = out.metadata[0]
    assert (
        len(out.images) == 2 and meta["cspd_inner_temperature"] == 2.0 and meta["cfg_interval"] == [0.2, 1.0]
    )
    assert meta["decoding"] == "continuous_speculative" and meta["num_inference_steps"] == 4
    assert {"acceptance_rate", "forwards_per_image"} <= set(out.stats)
    with pytest.raises(ValueError, match=r"cspd_inner_temperature=0.5 is out of range"):
        pipe(class_labels=[0], decoding="continuous_speculative", cspd_inner_temperature=0.5)
    with pytest.raises(ValueError, match="decoding='lantern' is not available"):
        pipe(class_labels=[0], decoding="lantern")


def test_a_narrower_draft_model_works():
    from arstudio.generators.continuous import ContinuousImageGenerator

    target = tiny_generator("diffusion")
    config = target.config
    small = ContinuousImageGenerator(
        replace(config, backbone=replace(config.backbone, dim=16, n_head=2, n_kv_head=1))
    )
    out = sample_continuous_speculative(target, small.eval(), torch.tensor([0, 1]), gens(0, 1), PARAMS, SPEC)
    assert out.tokens.shape == (2, 9, 4) and torch.isfinite(out.tokens).all()

"""Continuous speculative decoding (CSpD) on tiny random diffusion-head models."""

import copy

import pytest
import torch

from arstudio.decoding.continuous_speculative import (
    ContinuousSpeculativeParams,
    DiffusionSteps,
    sample_continuous_speculative,
)
from arstudio.decoding.logits import SamplingParams
from tests.test_continuous import gens, tiny_generator

PARAMS = SamplingParams(guidance_scale=2.0, temperature=1.0)
SPEC = ContinuousSpeculativeParams(draft_tokens=3, num_inference_steps=5)


def test_a_draft_model_equal_to_the_target_is_always_accepted():
    target = tiny_generator("diffusion")
    out = sample_continuous_speculative(
        target, copy.deepcopy(target), torch.tensor([1, 4]), gens(0, 1), PARAMS, SPEC
    )
    assert out.tokens.shape == (2, 9, 4) and torch.isfinite(out.tokens).all()
    assert out.stats["acceptance_rate"] == 1.0
    assert out.stats["forwards_per_image"] < 9  # several tokens per target forward


def test_a_different_draft_is_sometimes_rejected_and_relaxation_accepts_more():
    target = tiny_generator("diffusion")
    draft = copy.deepcopy(target)  # a close but different draft: the target with a perturbed head
    with torch.no_grad():
        for param in draft.head.parameters():
            param.add_(0.002 * torch.randn(param.shape, generator=torch.Generator().manual_seed(9)))
    labels = torch.arange(6)
    exact = sample_continuous_speculative(target, draft, labels, gens(*range(6)), PARAMS, SPEC)
    assert 0.0 < exact.stats["acceptance_rate"] < 1.0
    again = sample_continuous_speculative(target, draft, labels, gens(*range(6)), PARAMS, SPEC)
    assert torch.equal(exact.tokens, again.tokens)  # seeded: reproducible
    relaxed_spec = ContinuousSpeculativeParams(draft_tokens=3, num_inference_steps=5, inner_temperature=50.0)
    relaxed = sample_continuous_speculative(target, draft, labels, gens(*range(6)), PARAMS, relaxed_spec)
    assert relaxed.stats["acceptance_rate"] > exact.stats["acceptance_rate"]


def test_trajectory_density_prefers_its_own_conditioning():
    """A trajectory drawn under z scores higher under z than under an unrelated z' (the acceptance test's
    ingredient), and the schedule reproduces the plain sampler's arithmetic."""
    head = tiny_generator("diffusion").head
    steps = DiffusionSteps(head, 6, temperature=1.0, x0_clip=5.0)
    z = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))  # the tiny backbone's width
    other = 3 * torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    xs = steps.sample(z, gens(*range(16)))
    assert (steps.log_density(xs, z) > steps.log_density(xs, other)).float().mean() > 0.8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"draft_tokens": 0}, "draft_tokens=0 must be an integer >= 1"),
        ({"inner_temperature": 0.5}, r"inner_temperature=0.5 must be a number >= 1 \(1 = exact\)"),
        ({"num_inference_steps": 1}, "num_inference_steps=1 must be an integer >= 2"),
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


def test_pipeline_continuous_speculative_on_the_tiny_preset():
    import arstudio

    pipe = arstudio.load_pipeline("test-tiny-continuous", device="cpu")
    assert pipe.decoding_strategies == ("ar", "continuous_speculative")
    out = pipe(class_labels=[2, 3], decoding="continuous_speculative", draft_tokens=2, cspd_inner_temperature=2.0,
               num_inference_steps=4, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert len(out.images) == 2 and out.metadata[0]["cspd_inner_temperature"] == 2.0
    assert (
        out.metadata[0]["decoding"] == "continuous_speculative"
        and out.metadata[0]["num_inference_steps"] == 4
    )
    assert {"acceptance_rate", "forwards_per_image"} <= set(out.stats)
    with pytest.raises(ValueError, match=r"cspd_inner_temperature=0.5 is out of range"):
        pipe(class_labels=[0], decoding="continuous_speculative", cspd_inner_temperature=0.5)
    with pytest.raises(ValueError, match="decoding='lantern' is not available"):
        pipe(class_labels=[0], decoding="lantern")


def test_batched_trajectory_density_equals_the_step_by_step_sum():
    head = tiny_generator("diffusion").head
    steps = DiffusionSteps(head, 6, temperature=0.9, x0_clip=5.0)
    z = torch.randn(5, 32, generator=torch.Generator().manual_seed(3))
    xs = steps.sample(z, gens(*range(5)))
    reference = torch.zeros(5)
    for i in range(5):  # the 5 noisy steps of 6
        std = steps.coefs[i][3]
        reference -= ((xs[i + 1] - steps.mean(i, xs[i], z)) ** 2).sum(-1) / (2 * std**2)
    torch.testing.assert_close(steps.log_density(xs, z), reference, rtol=1e-4, atol=1e-3)


def test_a_narrower_draft_model_works():
    from dataclasses import replace

    from arstudio.generators.continuous import ContinuousImageGenerator

    target = tiny_generator("diffusion")
    config = target.config
    small = ContinuousImageGenerator(
        replace(config, backbone=replace(config.backbone, dim=16, n_head=2, n_kv_head=1))
    )
    out = sample_continuous_speculative(target, small.eval(), torch.tensor([0, 1]), gens(0, 1), PARAMS, SPEC)
    assert out.tokens.shape == (2, 9, 4) and torch.isfinite(out.tokens).all()

import pytest
import torch

from arstudio.decoding.autoregressive import sample_autoregressive
from arstudio.decoding.logits import SamplingParams, classifier_free_guidance, draw, filter_logits
from tests.test_backbone import tiny_generator


def test_temperature_top_k_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert torch.allclose(filter_logits(logits, 1.0, 0, 1.0), logits.softmax(-1))
    top2 = filter_logits(logits, 1.0, 2, 1.0)
    assert top2[0, 2:].sum() == 0 and torch.isclose(top2.sum(), torch.tensor(1.0))
    # Softmax mass: 0.644, 0.237, 0.087, 0.032. top_p=0.7 keeps the first two (0.644 < 0.7).
    nucleus = filter_logits(logits, 1.0, 0, 0.7)
    assert (nucleus[0] > 0).tolist() == [True, True, False, False]
    assert (filter_logits(logits, 1.0, 0, 0.5)[0] > 0).tolist() == [True, False, False, False]
    cold = filter_logits(logits, 0.01, 0, 1.0)
    assert cold[0, 0] > 0.999


def test_cfg_in_logit_space():
    cond, uncond = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    assert torch.equal(classifier_free_guidance(cond, uncond, 3.0), torch.tensor([[3.0, 0.0]]))
    assert torch.equal(classifier_free_guidance(cond, uncond, 0.0), uncond)


def test_draw_is_per_row_and_follows_probabilities():
    probs = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    a = draw(probs, [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)])
    assert a[0] == 1 and a[1] in (0, 2)
    # A row's draw depends only on its own generator.
    b = draw(probs[1:], [torch.Generator().manual_seed(1)])
    assert a[1] == b[0]
    counts = torch.bincount(
        torch.cat([draw(probs[1:], [torch.Generator().manual_seed(s)]) for s in range(400)]), minlength=3
    )
    assert counts[1] == 0 and 150 < counts[0] < 250


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"guidance_scale": -1}, "guidance_scale=-1"),
        ({"temperature": 0}, "temperature=0"),
        ({"temperature": -0.5}, "temperature=-0.5"),
        ({"top_k": -1}, "top_k=-1"),
        ({"top_k": 1.5}, "top_k=1.5"),
        ({"top_p": 0}, r"top_p=0 .*\(0, 1\]"),
        ({"top_p": 1.2}, "top_p=1.2"),
        ({"cfg_interval": (0.8, 0.2)}, "cfg_interval"),
    ],
)
def test_bad_sampling_params(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_cached_sampler_equals_the_no_cache_loop(guidance):
    model = tiny_generator()
    labels = torch.tensor([0, 3])

    def run(use_cache):
        gens = [torch.Generator().manual_seed(s) for s in (10, 11)]
        return sample_autoregressive(
            model, labels, gens, SamplingParams(guidance_scale=guidance, top_k=20), use_cache=use_cache
        )

    cached, uncached = run(True), run(False)
    assert cached.tokens.shape == (2, 16)
    assert torch.equal(cached.tokens, uncached.tokens)
    assert cached.stats["forwards"] == 16


def test_same_seed_same_tokens_and_batch_mates_do_not_matter():
    model = tiny_generator()
    params = SamplingParams(guidance_scale=2.0)
    alone = sample_autoregressive(model, torch.tensor([1]), [torch.Generator().manual_seed(5)], params)
    again = sample_autoregressive(model, torch.tensor([1]), [torch.Generator().manual_seed(5)], params)
    in_batch = sample_autoregressive(
        model,
        torch.tensor([1, 2]),
        [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)],
        params,
    )
    assert torch.equal(alone.tokens, again.tokens)
    assert torch.equal(alone.tokens[0], in_batch.tokens[0])


def test_callback_sees_every_step_and_can_stop():
    model = tiny_generator()
    seen = []

    def callback(step, total, tokens):
        seen.append((step, total, tokens.shape[1]))
        return step < 4  # stop after the fifth token

    out = sample_autoregressive(
        model, torch.tensor([0]), [torch.Generator().manual_seed(0)], callback=callback
    )
    assert seen == [(i, 16, i + 1) for i in range(5)]
    assert out.tokens.shape == (1, 5)


def test_cfg_interval_outside_is_conditional_only():
    model = tiny_generator()
    gens = lambda: [torch.Generator().manual_seed(3)]  # noqa: E731
    plain = sample_autoregressive(model, torch.tensor([2]), gens(), SamplingParams(guidance_scale=1.0))
    never = sample_autoregressive(
        model, torch.tensor([2]), gens(), SamplingParams(guidance_scale=4.0, cfg_interval=(0.0, 0.0))
    )
    assert torch.equal(plain.tokens, never.tokens)

"""Speculative and LANTERN decoding: exactness, the per-token TVD bound, batching, bad input."""

import itertools

import pytest
import torch
from scipy.stats import chisquare

from arstudio.decoding.autoregressive import sample_autoregressive
from arstudio.decoding.lantern import (
    latent_neighbours,
    point_residual,
    relaxed_target,
    residual,
    total_variation,
)
from arstudio.decoding.logits import SamplingParams, filter_logits
from arstudio.decoding.speculative import SpeculativeParams, sample_speculative
from arstudio.decoding.tree import DraftTree, _accept_chain, _accept_siblings, tree_mask
from arstudio.generators.backbone import BackboneConfig
from arstudio.generators.drafter import Drafter, DrafterConfig
from arstudio.generators.image import GeneratorConfig, ImageGenerator
from arstudio.training.common import seeded


def _models(vocab=32, grid=4, head_std=0.3, seed=0):
    config = GeneratorConfig(
        vocab_size=vocab,
        num_classes=3,
        backbone=BackboneConfig(dim=16, n_layer=2, n_head=2, grid_size=grid, prefix_len=1),
    )

    def build():
        target = ImageGenerator(config).eval()
        torch.nn.init.normal_(target.head.output.weight, std=head_std)  # peaked, position-dependent outputs
        return target, Drafter(DrafterConfig.for_target(target)).eval()

    return seeded(build, seed)


def _draft_model(target, dim=8, seed=5):
    """An independent small generator speaking the target's tokens (classic speculative decoding)."""
    config = GeneratorConfig(
        vocab_size=target.config.vocab_size,
        num_classes=3,
        backbone=BackboneConfig(
            dim=dim, n_layer=1, n_head=2, grid_size=target.config.backbone.grid_size, prefix_len=1
        ),
    )

    def build():
        model = ImageGenerator(config).eval()
        torch.nn.init.normal_(model.head.output.weight, std=0.5)
        return model

    return seeded(build, seed)


def _gens(n, offset=0):
    return [torch.Generator().manual_seed(offset + i) for i in range(n)]


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_greedy_speculative_equals_plain_ar_token_for_token(guidance):
    target, drafter = _models()
    params = SamplingParams(guidance_scale=guidance, top_k=1)
    cond = torch.tensor([0, 1, 2, 1])
    plain = sample_autoregressive(target, cond, _gens(4), params).tokens
    for gamma, draft in ((1, drafter), (3, drafter), (6, drafter), (3, _draft_model(target))):
        spec = sample_speculative(
            target, draft, cond, _gens(4), params, SpeculativeParams(draft_tokens=gamma)
        )
        assert torch.equal(spec.tokens, plain)


@torch.no_grad()
def _exact_joint(target, label, params, vocab, length):
    """Probability of every token sequence under plain AR (teacher forcing with CFG and filtering)."""
    sequences = torch.tensor(list(itertools.product(range(vocab), repeat=length)))
    n = sequences.shape[0]
    logits = target(sequences, torch.full((n,), label))
    if params.uses_cfg:
        uncond = target(sequences, target.cls_embedding.null(n))
        logits = uncond + params.guidance_scale * (logits - uncond)
    probs = filter_logits(logits, params.temperature, params.top_k, params.top_p)
    return sequences, probs.gather(-1, sequences[..., None]).squeeze(-1).prod(-1)


def _chi_square_p(samples, sequences, expected_probs, vocab):
    codes = (samples * vocab ** torch.arange(samples.shape[1] - 1, -1, -1)).sum(-1)
    counts = torch.bincount(codes, minlength=sequences.shape[0]).double()
    expected = expected_probs.double() * samples.shape[0]
    keep = expected >= 5  # pool rare sequences so the chi-square approximation holds
    observed = torch.cat([counts[keep], counts[~keep].sum()[None]])
    expected = torch.cat([expected[keep], expected[~keep].sum()[None]])
    return chisquare(
        observed.numpy(), expected.numpy() * observed.sum().item() / expected.sum().item()
    ).pvalue


def test_speculative_samples_the_plain_ar_distribution():
    """3-token vocabulary, 2x2 grid: all 81 sequences enumerated. 4000 speculative samples must fit the exact
    AR distribution; LANTERN with a large budget must not (so the test can fail)."""
    vocab, grid, n = 3, 2, 4000
    target, drafter = _models(vocab=vocab, grid=grid, head_std=1.0, seed=3)
    params = SamplingParams(guidance_scale=2.0)
    sequences, probs = _exact_joint(target, 1, params, vocab, grid * grid)
    cond = torch.ones(n, dtype=torch.long)
    independent = _draft_model(target)
    for greedy, draft in ((True, drafter), (False, drafter), (False, independent)):
        # drafts as point masses (the default) or samples of q; EAGLE drafter or independent draft model
        spec = SpeculativeParams(draft_tokens=2, greedy_drafts=greedy)
        exact = sample_speculative(target, draft, cond, _gens(n), params, spec)
        assert _chi_square_p(exact.tokens, sequences, probs, vocab) > 1e-3
        assert 0.05 < exact.stats["acceptance_rate"] < 0.95  # both branches (accept, residual) were exercised
    neighbours = torch.tensor([[1, 2], [0, 2], [0, 1]])
    relaxed = sample_speculative(
        target,
        drafter,
        cond,
        _gens(n),
        params,
        SpeculativeParams(draft_tokens=2, lantern_delta=0.9),
        neighbours,
    )
    assert _chi_square_p(relaxed.tokens, sequences, probs, vocab) < 1e-6
    assert relaxed.stats["acceptance_rate"] > exact.stats["acceptance_rate"]


TREE = ((0,), (1,), (0, 0), (0, 1), (1, 0))  # two candidates at the root, three nodes at depth 2


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_greedy_tree_speculative_equals_plain_ar_token_for_token(guidance):
    """Greedy target: recursive rejection must pick the argmax path, and the accepted path's keys/values
    must land at their sequence positions (or later tokens would differ)."""
    target, drafter = _models()
    params = SamplingParams(guidance_scale=guidance, top_k=1)
    cond = torch.tensor([0, 1, 2, 1])
    plain = sample_autoregressive(target, cond, _gens(4), params).tokens
    for spec, draft in (
        (SpeculativeParams(draft_tree=TREE), drafter),
        (SpeculativeParams(draft_tokens=3, draft_width=3), drafter),
        (SpeculativeParams(draft_tree=((0,), (2,), (0, 1), (0, 1, 0), (2, 0))), drafter),
        (SpeculativeParams(draft_tree=TREE), _draft_model(target)),
    ):
        spec_tokens = sample_speculative(target, draft, cond, _gens(4), params, spec).tokens
        assert torch.equal(spec_tokens, plain), spec


@pytest.mark.parametrize("spec", [SpeculativeParams(draft_tokens=3), SpeculativeParams(draft_tree=TREE)])
def test_eager_rounds_attend_over_the_slots_they_reach_and_compiled_ones_keep_static_shapes(spec):
    """Eager verify and drafter forwards attend over the cache a round can reach (plain AR's kv_len
    saving); a step flagged compiled sees the whole cache every round. Both give the same tokens."""
    target, drafter = _models()
    params = SamplingParams(guidance_scale=2.0)
    cond = torch.tensor([0, 1, 2])
    widths = {"eager": set(), "static": set()}

    def watch(owner, mode):
        inner = owner.step

        def step(*args, **kwargs):
            mask, kv_len = kwargs.get("mask"), kwargs.get("kv_len")
            cache = owner.backbone.caches[0].k.shape[2]
            widths[mode].add(mask.shape[-1] if mask is not None else min(kv_len or cache, cache))
            return inner(*args, **kwargs)

        step.static_shapes = mode == "static"
        owner.step = step

    runs = {}
    for mode in ("eager", "static"):
        for owner in (target, drafter):
            owner.__dict__.pop("step", None)
            watch(owner, mode)
        runs[mode] = sample_speculative(target, drafter, cond, _gens(3), params, spec).tokens
    for owner in (target, drafter):
        owner.__dict__.pop("step", None)
    assert torch.equal(runs["eager"], runs["static"])
    assert len(widths["static"]) <= 2  # the target's and the drafter's cache lengths
    assert min(widths["eager"]) < min(widths["static"]) and len(widths["eager"]) > 4


def test_tree_speculative_samples_the_plain_ar_distribution():
    """The chain test above for a draft tree: recursive rejection over siblings keeps the target's law, for
    point-mass (top-k) and sampled candidates, drafter or independent model; a large LANTERN budget does not."""
    vocab, grid, n = 3, 2, 4000
    target, drafter = _models(vocab=vocab, grid=grid, head_std=1.0, seed=3)
    params = SamplingParams(guidance_scale=2.0)
    sequences, probs = _exact_joint(target, 1, params, vocab, grid * grid)
    cond = torch.ones(n, dtype=torch.long)
    for greedy, draft in ((True, drafter), (False, drafter), (True, _draft_model(target))):
        spec = SpeculativeParams(greedy_drafts=greedy, draft_tree=TREE)
        exact = sample_speculative(target, draft, cond, _gens(n), params, spec)
        assert _chi_square_p(exact.tokens, sequences, probs, vocab) > 1e-3
        assert 0.05 < exact.stats["acceptance_rate"] < 0.95
    chain = sample_speculative(target, drafter, cond, _gens(n), params, SpeculativeParams(draft_tokens=2))
    tree = sample_speculative(target, drafter, cond, _gens(n), params, SpeculativeParams(draft_tree=TREE))
    assert tree.stats["mean_accepted_length"] > chain.stats["mean_accepted_length"]  # siblings get accepted
    neighbours = torch.tensor([[1, 2], [0, 2], [0, 1]])
    spec = SpeculativeParams(lantern_delta=0.9, draft_tree=TREE)
    relaxed = sample_speculative(target, drafter, cond, _gens(n), params, spec, neighbours)
    assert _chi_square_p(relaxed.tokens, sequences, probs, vocab) < 1e-6


def test_tree_with_zero_budget_is_exact_and_rows_keep_their_own_paths():
    target, drafter = _models()
    neighbours = latent_neighbours(torch.randn(32, 4), k=5)
    params = SamplingParams(guidance_scale=2.0)
    cond = torch.tensor([0, 2, 1])
    exact = sample_speculative(target, drafter, cond, _gens(3), params, SpeculativeParams(draft_tree=TREE))
    zero = sample_speculative(
        target,
        drafter,
        cond,
        _gens(3),
        params,
        SpeculativeParams(lantern_delta=0.0, draft_tree=TREE),
        neighbours,
    )
    assert torch.equal(exact.tokens, zero.tokens)
    alone = sample_speculative(
        target, drafter, cond[1:2], _gens(1, offset=1), params, SpeculativeParams(draft_tree=TREE)
    )
    assert torch.equal(exact.tokens[1], alone.tokens[0])


def test_draft_tree_shape_and_mask():
    tree = DraftTree.parse([[0, 0], [1], [0]], max_depth=4, vocab=8)
    assert tree.paths == ((0,), (1,), (0, 0)) and tree.parent == [-1, 0, 0, 1] and tree.depths == [0, 1, 1, 2]
    assert DraftTree.parse((2, 3), 4, 8).paths == ((0,), (1,), (2,), (0, 0), (0, 1), (0, 2))  # (depth, width)
    assert DraftTree.parse((3, 1), 4, 8) == DraftTree.chain(3) and DraftTree.chain(3).is_chain
    index = tree.on("cpu")
    mask = tree_mask(index.ancestors, torch.tensor([2]), 7, torch.float32)[0, 0] == 0  # root at slot 2
    assert mask.tolist() == [
        [True, True, True, False, False, False, False],  # root: the prefix and itself
        [True, True, True, True, False, False, False],  # (0,)
        [True, True, True, False, True, False, False],  # (1,): not its sibling
        [True, True, True, True, False, True, False],  # (0, 0): root, (0,), itself
    ]


def test_mask_tables_give_tree_mask():
    """The per-round masks come from a table built once (``TreeMask``): the very numbers of ``tree_mask``."""
    index = DraftTree.parse((3, 3), 4, 8).on("cpu")
    base = torch.tensor([0, 5, 11, 17])
    for ancestors, table in (
        (index.ancestors, index.mask),
        *((lv.draft_mask.ancestors, lv.draft_mask) for lv in index.drafting_levels),
    ):
        for dtype in (torch.float32, torch.bfloat16):
            assert torch.equal(table(base, 30, dtype), tree_mask(ancestors, base, 30, dtype))


@pytest.mark.parametrize("delta", [0.0, 0.3])
def test_point_residual_is_the_dense_one_hot_residual(delta):
    gen = torch.Generator().manual_seed(3)
    p = torch.rand(6, 3, 16, generator=gen).softmax(-1)
    p[0, 0] = 0.0
    p[0, 0, 4] = 1.0  # p~ == q: the rounding-accident branch
    draft = torch.randint(0, 16, (6, 3), generator=gen)
    draft[0, 0] = 4
    neighbours = latent_neighbours(torch.randn(16, 2, generator=gen), 3)
    relaxed = relaxed_target(p, draft, neighbours, delta, lam=2.0)
    one_hot = torch.nn.functional.one_hot(draft, 16).float()
    at_draft = relaxed.gather(-1, draft[..., None]).squeeze(-1)
    assert torch.equal(point_residual(relaxed, draft, at_draft), residual(relaxed, one_hot))


@pytest.mark.parametrize("greedy", [True, False])
@pytest.mark.parametrize("delta", [0.0, 0.3])
def test_chain_acceptance_is_the_tree_walk(greedy, delta):
    """A chain's shortcut (the leading run of passes) decides as the general sibling walk does."""
    index = DraftTree.chain(4).on("cpu")
    gen = torch.Generator().manual_seed(4)
    p = (3 * torch.randn(64, 5, 16, generator=gen)).softmax(-1)
    drafts = torch.randint(0, 16, (64, 4), generator=gen)
    q = None if greedy else (3 * torch.randn(64, 4, 16, generator=gen)).softmax(-1)
    u = torch.rand(64, 4, generator=gen)
    neighbours = latent_neighbours(torch.randn(16, 2, generator=gen), 3)
    args = (index, p, drafts, q, u, neighbours, delta, 2.0)
    chain, walk = _accept_chain(*args), _accept_siblings(*args)
    assert all(torch.equal(a, b) for a, b in zip(chain, walk, strict=True))
    assert 0 < chain[0].float().mean() < 4  # some rows stop early, some run on


@pytest.mark.parametrize(
    "spec, message",
    [
        ([[0], [1, 0]], r"path \[1, 0\] has no parent \[1\]: every prefix of a path must be a path"),
        ([[0], [0]], r"lists path \[0\] twice"),
        ([[0], [0, 0], [0, 0, 0]], r"path \[0, 0, 0\] is 3 deep; the drafter drafts at most 2 tokens ahead"),
        ([[0], [40]], r"path \[40\] asks for candidate 41 of a 32-token vocabulary \(allowed ranks 0..31\)"),
        ([[0], [-1]], r"path \[-1\] is not allowed: a path is a non-empty list of candidate ranks"),
        ([], r"draft_tree=\[\] is not allowed"),
        ("wide", r"draft_tree='wide' is not allowed"),
    ],
)
def test_bad_draft_trees(spec, message):
    with pytest.raises(ValueError, match=message):
        DraftTree.parse(spec, max_depth=2, vocab=32)


def test_deep_tree_is_refused_by_the_sampler():
    target, drafter = _models()
    deep = [[0] * d for d in range(1, 18)]
    with pytest.raises(ValueError, match=r"is 17 deep; the drafter drafts at most 16 tokens ahead"):
        sample_speculative(
            target, drafter, torch.tensor([0]), _gens(1), spec=SpeculativeParams(draft_tree=deep)
        )


def test_lantern_with_zero_budget_is_exact_speculative_decoding():
    target, drafter = _models()
    neighbours = latent_neighbours(torch.randn(32, 4), k=5)
    params = SamplingParams(guidance_scale=2.0)
    cond = torch.tensor([0, 2, 1])
    exact = sample_speculative(target, drafter, cond, _gens(3), params, SpeculativeParams(3))
    zero = sample_speculative(target, drafter, cond, _gens(3), params, SpeculativeParams(3, 0.0), neighbours)
    assert torch.equal(exact.tokens, zero.tokens)


def test_relaxed_target_respects_the_tvd_budget_and_lambda_cap():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(200, 16) * 2, dim=-1)
    draft = torch.randint(0, 16, (200,))
    neighbours = latent_neighbours(torch.randn(16, 3), k=6)
    for delta in (0.0, 0.05, 0.2, 0.6):
        relaxed = relaxed_target(p, draft, neighbours, delta)
        assert torch.allclose(relaxed.sum(-1), torch.ones(200))
        tvd = total_variation(relaxed, p)
        assert (tvd <= delta + 1e-6).all()
        gained = relaxed.gather(-1, draft[:, None]) - p.gather(-1, draft[:, None])
        assert torch.allclose(gained.squeeze(-1), tvd, atol=1e-6)  # all the moved mass lands on the draft
    assert relaxed_target(p, draft, neighbours, 0.6).ne(p).any()  # a budget does relax something
    capped = relaxed_target(p, draft, neighbours, 1.0, lam=1.5)
    p_draft = p.gather(-1, draft[:, None]).squeeze(-1)
    assert (total_variation(capped, p) <= 0.5 * p_draft + 1e-6).all()  # moved mass <= (lambda - 1) p(x)


def test_residual_zeroes_the_rejected_draft_and_moved_neighbours():
    p = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    neighbours = torch.tensor([[1, 2], [0, 2], [1, 3], [2, 1]])
    relaxed = relaxed_target(p, torch.tensor([0]), neighbours, 0.35)  # moves token 1 (0.3) onto token 0
    assert torch.allclose(relaxed, torch.tensor([[0.7, 0.0, 0.2, 0.1]]))
    q = torch.tensor([[0.9, 0.05, 0.05, 0.0]])  # rejected draft 0 had q > p~
    rest = residual(relaxed, q)
    assert rest[0, 0] == 0 and rest[0, 1] == 0 and torch.isclose(rest.sum(), torch.tensor(1.0))


def test_latent_neighbours_are_nearest_first_and_exclude_self():
    codebook = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    assert latent_neighbours(codebook, 2, chunk=3).tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]


def test_batched_rows_do_not_depend_on_batch_mates():
    target, drafter = _models()
    params = SamplingParams(guidance_scale=2.0)
    together = sample_speculative(target, drafter, torch.tensor([0, 1, 2]), _gens(3), params)
    alone = sample_speculative(target, drafter, torch.tensor([1]), _gens(1, offset=1), params)
    assert torch.equal(together.tokens[1], alone.tokens[0])


def test_callback_can_stop_speculative_decoding():
    target, drafter = _models()
    seen = []

    def stop_early(step, total, tokens):
        seen.append(tokens.shape[1])
        return False

    out = sample_speculative(target, drafter, torch.tensor([0]), _gens(1), callback=stop_early)
    assert seen and out.tokens.shape[1] == seen[0] < 16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"draft_tokens": 0}, r"draft_tokens=0 is out of range"),
        ({"lantern_delta": 1.5}, r"lantern_delta=1.5 is out of range: allowed are \[0.0, 1.0\]"),
        ({"lantern_delta": -0.1}, r"lantern_delta=-0.1 is out of range"),
        ({"lantern_lambda": 0.5}, r"lantern_lambda=0.5 is out of range"),
    ],
)
def test_bad_speculative_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpeculativeParams(**kwargs)


def test_independent_draft_model_must_fit_the_target():
    target, _ = _models()
    misfit = _draft_model(_models(vocab=16)[0])
    with pytest.raises(ValueError, match="does not fit the target .*vocab_size: target 32, draft model 16"):
        sample_speculative(target, misfit, torch.tensor([0]), _gens(1))


def test_bad_neighbour_count_and_foreign_drafter():
    with pytest.raises(ValueError, match=r"lantern_k=0 is out of range: allowed are 1..31"):
        latent_neighbours(torch.randn(32, 4), 0)
    with pytest.raises(ValueError, match=r"lantern_k=32 is out of range"):
        latent_neighbours(torch.randn(32, 4), 32)
    target, drafter = _models(seed=0)
    other, _ = _models(seed=1)
    drafter.check_target(target)
    with pytest.raises(ValueError, match="trained for target .* fingerprint is"):
        drafter.check_target(other)


# ---- through the pipeline ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe():
    import arstudio

    return arstudio.load_pipeline("test-tiny-c2i", device="cpu")


def test_pipeline_strategies_knobs_stats_and_metadata(pipe):
    assert pipe.decoding_strategies[:3] == ("ar", "speculative", "lantern")  # then distilled decoding
    kwargs = dict(class_labels=[0, 4], top_k=1, output_type="np")
    plain = pipe(generator=torch.Generator().manual_seed(0), **kwargs)
    spec = pipe(generator=torch.Generator().manual_seed(0), decoding="speculative", draft_tokens=3, **kwargs)
    assert torch.equal(plain.tokens, spec.tokens)  # greedy: exact
    tree = pipe(generator=torch.Generator().manual_seed(0), decoding="lantern", draft_width=3, **kwargs)
    assert torch.equal(plain.tokens, tree.tokens) and tree.metadata[0]["draft_width"] == 3
    assert spec.metadata[0]["decoding"] == "speculative" and spec.metadata[0]["draft_tokens"] == 3
    assert {"forwards", "acceptance_rate", "mean_accepted_length", "tokens_per_forward"} <= set(spec.stats)
    lantern = pipe(
        class_labels=[1],
        decoding="lantern",
        lantern_k=4,
        lantern_delta=0.3,
        lantern_lambda=2.0,
        generator=torch.Generator().manual_seed(1),
    )
    meta = lantern.metadata[0]
    knobs = ("lantern_k", "lantern_delta", "lantern_lambda", "draft_tokens")
    assert [meta[k] for k in knobs] == [4, 0.3, 2.0, 4]
    assert len(lantern.images) == 1


def test_text_pipeline_speculative_is_exact_when_greedy():
    import arstudio

    t2i = arstudio.load_pipeline("test-tiny-t2i", device="cpu")
    kwargs = dict(
        prompt=["a red circle", "two blue squares"],
        top_k=1,
        guidance_scale=3.0,
        negative_prompt="a green diamond",
    )
    plain = t2i(generator=torch.Generator().manual_seed(5), **kwargs)
    spec = t2i(generator=torch.Generator().manual_seed(5), decoding="speculative", **kwargs)
    assert torch.equal(plain.tokens, spec.tokens)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"draft_tokens": 2},
            r"draft_tokens=2 applies to decoding in \['speculative', 'lantern', 'continuous_speculative'\], not decoding='ar'",
        ),
        ({"decoding": "speculative", "lantern_k": 3}, r"lantern_k=3 applies to decoding in \['lantern'\]"),
        ({"decoding": "lantern", "lantern_k": 32}, r"lantern_k=32 is out of range: allowed are 1..31"),
        ({"decoding": "lantern", "lantern_k": 0}, r"lantern_k=0 is out of range"),
        ({"decoding": "lantern", "lantern_delta": 2}, r"lantern_delta=2 is out of range"),
        ({"decoding": "speculative", "draft_tokens": 0}, r"draft_tokens=0 is out of range"),
        (
            {"decoding": "speculative", "draft_width": 9},
            r"draft_width=9 is out of range: allowed are \[1, 8\]",
        ),
    ],
)
def test_pipeline_rejects_bad_decoding_knobs(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(class_labels=[0], **kwargs)


def test_lantern_needs_a_codebook_and_drafters_their_target(pipe, tmp_path):
    import copy

    import arstudio

    no_codebook = copy.copy(pipe)
    no_codebook.tokenizer = object()  # e.g. a continuous tokenizer: no codebook, no neighbourhoods
    assert no_codebook.decoding_strategies == ("ar", "speculative")
    with pytest.raises(ValueError, match="decoding='lantern' is not available"):
        no_codebook(class_labels=[0], decoding="lantern")
    # A drafter trained for another generator is refused when the pipeline loads.
    pipe.tokenizer.save_pretrained(tmp_path / "tokenizer")
    pipe.generator.save_pretrained(tmp_path / "generator")
    _, foreign = _models(seed=7)
    foreign.save_pretrained(tmp_path / "drafter")
    with pytest.raises(ValueError, match="trained for target"):
        arstudio.load_pipeline("test-tiny-c2i", device="cpu", weights=tmp_path)
    # Training a new drafter for a retrained generator loads the pipeline without the stale one.
    bare = arstudio.load_pipeline("test-tiny-c2i", device="cpu", weights=tmp_path, decoding_models=False)
    assert bare.drafter is None and bare.decoding_strategies == ("ar",)
    pipe.drafter.save_pretrained(tmp_path / "drafter")
    assert arstudio.load_pipeline("test-tiny-c2i", device="cpu", weights=tmp_path).drafter is not None
    # An independent draft model works as a drafter when it shares the tokens and condition.
    config = pipe.generator.config
    small = ImageGenerator(
        GeneratorConfig(
            vocab_size=config.vocab_size,
            num_classes=config.num_classes,
            backbone=BackboneConfig(dim=16, n_layer=1, n_head=2, grid_size=4),
        )
    )
    small.save_pretrained(tmp_path / "drafter")
    loaded = arstudio.load_pipeline("test-tiny-c2i", device="cpu", weights=tmp_path)
    assert isinstance(loaded.drafter, ImageGenerator)
    out = loaded(class_labels=[2], decoding="speculative", generator=torch.Generator().manual_seed(0))
    assert len(out.images) == 1


def test_drafter_training_loss_goes_down():
    from arstudio.training.drafter import drafter_loss

    target, drafter = _models(seed=2)
    target.requires_grad_(False)
    tokens = torch.randint(0, 32, (16, 16), generator=torch.Generator().manual_seed(0))
    tokens[:, ::2] = 3  # learnable structure: every other token is the same
    labels = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(drafter.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = drafter_loss(
            drafter, target, tokens, labels, noise_std=0.2, generator=torch.Generator().manual_seed(2)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_warm_start_keeps_new_parameters_at_their_init(tmp_path):
    """Generator training's init_from: weights saved before the text prefix had positions load into a
    model that has them (zero-init, so it starts out unchanged); any other missing key is still an error."""
    from dataclasses import replace

    from arstudio.io import load_weights_into
    from arstudio.presets import get_preset
    from arstudio.training.generator import WARM_START_NEW_KEYS

    with_positions = get_preset("test-tiny-t2i").generator
    old = seeded(lambda: ImageGenerator(replace(with_positions, text_positions=False)), 0)
    old.save_pretrained(tmp_path)
    new = seeded(lambda: ImageGenerator(with_positions), 1)
    with pytest.raises(ValueError, match="missing keys .*cls_embedding.position_embedding"):
        load_weights_into(new, tmp_path)
    load_weights_into(new, tmp_path, allow_missing=WARM_START_NEW_KEYS)
    assert torch.equal(new.head.output.weight, old.head.output.weight)
    assert not new.cls_embedding.position_embedding.any()


# ---- tune-speculative: the measured defaults ------------------------------------------------------------


def test_tune_speculative_writes_defaults_the_pipeline_uses(pipe, tmp_path):
    import json

    import arstudio
    from arstudio.evaluation.speculative_tuning import tune_speculative

    pipe.save_pretrained(tmp_path)
    done = tune_speculative(pipe, depths=(2,), widths=(1, 2), deltas=(0.5,), repeats=1, out=tmp_path)
    written = json.loads((tmp_path / "speculative_defaults.json").read_text())
    names = [row["name"] for row in written["measured"]["curve"]]
    assert names[0] == "ar" and "speculative d2 w2" in names and "lantern d2 w1 delta0.5" in names
    assert (
        written["speculative"] == done["best"]["speculative"] and "cpu_pressure_before" in written["measured"]
    )
    tuned = {"draft_tokens": 3, "draft_width": 2}
    (tmp_path / "speculative_defaults.json").write_text(json.dumps({"speculative": tuned}))
    loaded = arstudio.load_pipeline("test-tiny-c2i", device="cpu", weights=tmp_path)
    out = loaded(class_labels=[0], decoding="speculative", generator=torch.Generator().manual_seed(0))
    assert {k: out.metadata[0][k] for k in tuned} == tuned  # the tuned defaults apply...
    out = loaded(
        class_labels=[0], decoding="speculative", draft_width=1, generator=torch.Generator().manual_seed(0)
    )
    assert out.metadata[0]["draft_width"] == 1  # ...unless the call says otherwise
    loaded.save_pretrained(tmp_path / "copy")  # and they travel with the saved pipeline
    assert arstudio.ImagePipeline.from_pretrained(tmp_path / "copy").knob_defaults["speculative"] == tuned
    (tmp_path / "speculative_defaults.json").write_text(json.dumps({"speculative": {"draft_width": 20}}))
    with pytest.raises(ValueError, match=r"speculative_defaults.json: draft_width=20 is out of range"):
        arstudio.load_pipeline("test-tiny-c2i", device="cpu", weights=tmp_path)


def test_tune_speculative_refuses_a_preset_without_drafter(capsys):
    from arstudio.cli import main

    assert main(["tune-speculative", "--preset", "test-tiny-continuous"]) == 2
    assert (
        "preset 'test-tiny-continuous' has no drafter for decoding='speculative'" in capsys.readouterr().err
    )

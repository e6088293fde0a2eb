"""Batch rendering: a jobs file (JSONL) -> PNGs with their recipe + a manifest, resumable and multi-process.

    arstudio render jobs.jsonl --out renders/                                # one process
    accelerate launch --multi_gpu --num_processes 2 -m arstudio.cli render jobs.jsonl --out renders/
    (--multi_gpu also gives N CPU processes on a machine without GPUs; torchrun --nproc_per_node N works too)

One job per line, e.g. ``{"preset": "shapes-c2i", "class": "red circle", "seed": 0, "count": 4}``.
Video presets take video jobs: ``{"preset": "sprites-video", "class": "red circle", "seed": 0,
"num_frames": 16, "format": "gif"}`` (one gif or mp4 per seed; ``VIDEO_KEYS``; the recipe is in the manifest).
Keys: see ``JOB_KEYS``. Every image is identified by (job, seed), and its file name is derived from both,
so a run can be killed at any moment (kill -9 included) and started again:

- each PNG is written to a temporary name and renamed into place (never half a file);
- only then is its manifest line (job, seed, file, sha256, timings) appended and fsynced;
- on start, stray temporary files are deleted, a torn last manifest line is cut off, and an image counts
  as done only if the manifest names it and the file's sha256 matches.

Seeds are rendered in fixed chunks of the job's seed list (``batch_size``), and an unfinished chunk is
re-rendered whole: batch composition can change pixels, so fixed chunks keep a resumed or multi-process run
byte-identical to an uninterrupted one. Under ``accelerate launch`` each process takes every N-th chunk;
manifest appends are serialised with ``flock`` (processes on one machine). At the end the main process
rewrites the manifest once, sorted by (line, seed) and without superseded entries.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from arstudio.decoding.strategies import SAMPLING_SETTINGS
from arstudio.limits import MAX_IMAGES_PER_JOB

MANIFEST_NAME = "manifest.jsonl"
JOB_KEYS = (
    "preset",
    "prompt",
    "class",
    "negative_prompt",
    "seeds",
    "seed",
    "count",
    "decoding",
    *SAMPLING_SETTINGS,
)
VIDEO_KEYS = ("num_frames", "num_inference_steps", "temporal_decay", "first_frame", "format")
VIDEO_SAMPLING_KEYS = ("guidance_scale", "temperature")


class JobError(ValueError):
    """A job line that cannot be rendered; carries its 1-based line number."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True)
class Job:
    line: int  # 1-based line in the jobs file
    spec: dict  # the validated job without its seeds: preset, condition, sampling, decoding (+ knobs)
    seeds: tuple[int, ...]

    @property
    def key(self) -> str:
        """Stable id of what is rendered (not of where it sits in the file)."""
        return hashlib.sha256(json.dumps(self.spec, sort_keys=True).encode()).hexdigest()[:12]

    def file_name(self, seed: int) -> str:
        condition = self.spec.get("prompt", self.spec.get("class", ""))
        slug = re.sub(r"[^a-z0-9]+", "-", str(condition).lower()).strip("-")[:40] or "image"
        return f"{slug}_{self.key}_{seed}.{self.spec.get('format', 'png')}"


# ---- jobs -------------------------------------------------------------------------------------------
def _check_seeds(raw: dict) -> tuple[int, ...]:
    def is_seed(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63

    if "seeds" in raw:
        if "seed" in raw or "count" in raw:
            raise ValueError("give either seeds (a list) or seed + count, not both")
        seeds = raw["seeds"]
        if not isinstance(seeds, list) or not seeds or not all(is_seed(s) for s in seeds):
            raise ValueError(f"seeds={seeds!r} must be a non-empty list of integers in [0, 2**63)")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds={seeds!r} has repeats; each seed gives one image")
    else:
        if "seed" not in raw:
            raise ValueError("give seeds (a list) or seed (+ count): renders must be reproducible")
        seed, count = raw["seed"], raw.get("count", 1)
        if not is_seed(seed):
            raise ValueError(f"seed={seed!r} must be an integer in [0, 2**63)")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_IMAGES_PER_JOB:
            raise ValueError(f"count={count!r} must be an integer in [1, {MAX_IMAGES_PER_JOB}]")
        if seed + count > 2**63:
            raise ValueError(f"seed={seed} + count={count} runs past 2**63; start lower")
        seeds = [seed + i for i in range(count)]
    if len(seeds) > MAX_IMAGES_PER_JOB:
        raise ValueError(f"{len(seeds)} seeds in one job; at most {MAX_IMAGES_PER_JOB}")
    return tuple(seeds)


def parse_job(raw, line: int = 1) -> Job:
    """Validate one job (a dict); raise ``JobError`` naming the line, the bad value and what is allowed."""
    from arstudio.decoding.logits import check_sampling_params
    from arstudio.decoding.strategies import check_knobs, get_strategy, knob_names
    from arstudio.presets import get_preset

    try:
        if not isinstance(raw, dict):
            raise ValueError(f"a job must be a JSON object, got {type(raw).__name__}")
        if "preset" not in raw:
            raise ValueError('missing preset, e.g. "preset": "shapes-c2i"')
        if not isinstance(raw["preset"], str):
            raise ValueError(f'preset={raw["preset"]!r} must be a preset name, e.g. "shapes-c2i"')
        preset = get_preset(raw["preset"])  # KeyError naming the available presets
        if preset.task == "class-to-video":
            return _parse_video_job(raw, line)
        strategy = get_strategy(raw.get("decoding", "ar"))
        decoding = strategy.name
        given = {k: v for k, v in raw.items() if k in knob_names()}
        if None in given.values():  # check_knobs reads None as "the default": a job says a number or nothing
            raise ValueError(
                f"{min(k for k, v in given.items() if v is None)}=null: give a number or leave it out"
            )
        knobs = check_knobs(strategy, given)  # ranges, and a knob of another strategy named as such
        unknown = sorted(set(raw) - set(JOB_KEYS) - set(knobs))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; allowed: {[*JOB_KEYS, *knobs]}")
        if ("prompt" in raw) == ("class" in raw):
            raise ValueError("give exactly one of prompt (text or class name) or class (id or name)")
        spec = {"preset": raw["preset"], "decoding": decoding}
        for key in ("prompt", "class", "negative_prompt"):
            if key in raw:
                spec[key] = raw[key]
        if "prompt" in raw and (not isinstance(raw["prompt"], str) or not raw["prompt"].strip()):
            raise ValueError(f"prompt={raw['prompt']!r} must be a non-empty string")
        negative = raw.get("negative_prompt", "-")
        if not isinstance(negative, str) or not negative.strip():
            raise ValueError(f"negative_prompt={negative!r} must be a non-empty string")
        if "class" in raw or preset.text_encoder is None:  # a class preset's prompt is a class name
            _check_class(raw.get("class", raw.get("prompt")), preset, "class" if "class" in raw else "prompt")
        sampling = {k: raw[k] for k in SAMPLING_SETTINGS if k in raw}
        if "cfg_interval" in sampling:
            interval = sampling["cfg_interval"]
            if not isinstance(interval, list) or len(interval) != 2:
                raise ValueError(f"cfg_interval={interval!r} must be a list [lo, hi]")
            sampling["cfg_interval"] = tuple(interval)
        full = {"guidance_scale": 1.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0, **sampling}
        check_sampling_params(**full)
        spec.update(sampling)
        spec.update({name: knobs[name] for name in given})
        return Job(line=line, spec=spec, seeds=_check_seeds(raw))
    except (ValueError, KeyError, TypeError) as err:
        raise JobError(line, describe_error(err)) from err


def _check_class(label, preset, key: str = "class") -> None:
    """A job's ``class`` (or a class preset's ``prompt``): an id in range or one of the preset's class
    names (read as the pipeline reads them), named as the job named it."""
    names = preset.class_names
    num_classes = getattr(preset.generator, "num_classes", 0)
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise ValueError(f"{key}={label!r} must be a class id (integer) or a class name")
    if preset.text_encoder is not None:
        raise ValueError(f"{key}={label!r}: {preset.name} is text-to-image; give a prompt instead")
    if isinstance(label, int) and not 0 <= label < num_classes:
        raise ValueError(f"{key}={label!r} is out of range: allowed are 0..{num_classes - 1}")
    if isinstance(label, str) and label.strip().lower().removeprefix("a ").removeprefix("an ") not in names:
        allowed = list(names) if names else f"ids 0..{num_classes - 1} (this preset has no class names)"
        raise ValueError(f"{key}={label!r} is not a class of {preset.name}; allowed: {allowed}")


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_video_job(raw: dict, line: int) -> Job:
    """A job for a video preset: class and seeds as for images, plus ``VIDEO_KEYS``; FAR decoding only."""
    from arstudio.decoding.logits import check_sampling_params
    from arstudio.presets import get_preset

    unknown = sorted(
        set(raw)
        - {
            "preset",
            "prompt",
            "class",
            "seeds",
            "seed",
            "count",
            "decoding",
            *VIDEO_SAMPLING_KEYS,
            *VIDEO_KEYS,
        }
    )
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} for a video preset; allowed: "
            f"{['preset', 'class', 'prompt', 'seed', 'count', 'seeds', *VIDEO_SAMPLING_KEYS, *VIDEO_KEYS]}"
        )
    if raw.get("decoding", "far") != "far":
        raise ValueError(f"decoding={raw['decoding']!r}: video presets decode with 'far' only")
    if ("prompt" in raw) == ("class" in raw):
        raise ValueError("give exactly one of prompt (a class name) or class (id or name)")
    if "prompt" in raw and not isinstance(raw["prompt"], str):
        raise ValueError(f"prompt={raw['prompt']!r} must be a class name of {raw['preset']}")
    key = "class" if "class" in raw else "prompt"
    _check_class(raw[key], get_preset(raw["preset"]), key)
    fmt = raw.get("format", "gif")
    if fmt not in ("gif", "mp4"):
        raise ValueError(f"format={fmt!r} is not a video format; allowed: ['gif', 'mp4']")
    if raw.get("first_frame", "video") not in ("video", "image"):  # pipelines.video.FIRST_FRAME_SOURCES
        raise ValueError(f"first_frame={raw['first_frame']!r} is not allowed; use 'video' or 'image'")
    for key in ("num_frames", "num_inference_steps"):
        if key in raw and (isinstance(raw[key], bool) or not isinstance(raw[key], int) or raw[key] < 1):
            raise ValueError(f"{key}={raw[key]!r} must be an integer >= 1")
    if "temporal_decay" in raw and not (
        _is_finite_number(raw["temporal_decay"]) and raw["temporal_decay"] >= 0
    ):
        raise ValueError(f"temporal_decay={raw['temporal_decay']!r} must be a finite number >= 0")
    sampling = {
        "guidance_scale": 1.0,
        "temperature": 1.0,
        **{k: raw[k] for k in VIDEO_SAMPLING_KEYS if k in raw},
    }
    check_sampling_params(**sampling, top_k=0, top_p=1.0)  # top-k / top-p do not apply to the flow head
    spec = {k: v for k, v in raw.items() if k not in ("seeds", "seed", "count")}
    spec.update(decoding="far", format=fmt)
    return Job(line=line, spec=spec, seeds=_check_seeds(raw))


def read_jobs(path: str | Path) -> tuple[list[Job], list[JobError]]:
    """Parse a JSONL jobs file: the valid jobs, and one error per bad line (blank and # lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"jobs file {str(path)!r} does not exist")
    jobs, errors = [], []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            errors.append(JobError(number, f"not valid JSON ({err.msg} at column {err.colno})"))
            continue
        try:
            jobs.append(parse_job(raw, number))
        except JobError as err:
            errors.append(err)
    return jobs, errors


# ---- manifest ---------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def repair_manifest(path: Path) -> None:
    """Cut a torn last line (a run killed while appending) so the next append starts on a fresh line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
            handle.flush()
            os.fsync(handle.fileno())


def read_manifest(out_dir: Path) -> dict[str, dict]:
    """Entries whose file exists with the recorded sha256, by file name (later lines win)."""
    path = out_dir / MANIFEST_NAME
    entries: dict[str, dict] = {}
    if not path.is_file():
        return entries
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(text)
            entries[entry["file"]] = entry
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a torn line: its image is simply rendered again
    return {
        name: e
        for name, e in entries.items()
        if (out_dir / name).is_file() and sha256_file(out_dir / name) == e["sha256"]
    }


def append_manifest(out_dir: Path, entry: dict) -> None:
    """Append one line under an exclusive lock and fsync it: processes never interleave half lines."""
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(out_dir / MANIFEST_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def compact_manifest(out_dir: Path) -> list[dict]:
    """Rewrite the manifest with only verified entries, sorted by (line, seed); returns them."""
    from arstudio.io import atomic_write_bytes

    entries = sorted(read_manifest(out_dir).values(), key=lambda e: (e["line"], e["seed_index"]))
    text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
    atomic_write_bytes(out_dir / MANIFEST_NAME, text.encode())
    return entries


def clean_temporary_files(out_dir: Path) -> int:
    """Delete the ``.name.XXXX.tmp`` files an interrupted atomic write leaves behind."""
    stray = list(out_dir.glob(".*.tmp"))
    for path in stray:
        path.unlink(missing_ok=True)
    return len(stray)


# ---- rendering --------------------------------------------------------------------------------------
@dataclass
class RenderSummary:
    rendered: int = 0  # images written by this call
    skipped: int = 0  # images already in the manifest with a matching file
    failed: list[str] = field(default_factory=list)  # "line N: message", invalid or failing jobs
    notes: list[str] = field(default_factory=list)  # "line N: message", e.g. seeds an earlier job renders
    seconds: float = 0.0
    processes: int = 1
    main_process: bool = True  # under accelerate, only the main process prints the (gathered) summary
    unit: str = "image"  # what the jobs make: "image", "video" or "file" (both)

    def __str__(self) -> str:
        rate = self.rendered / self.seconds if self.seconds > 0 else 0.0
        text = (
            f"rendered {self.rendered} {self.unit}(s), {self.skipped} already done, {len(self.failed)} job(s) "
            f"failed, {self.seconds:.1f} s ({rate:.2f} {self.unit}s/s, {self.processes} process(es))"
        )
        return "\n".join(
            [text, *(f"  failed {m}" for m in self.failed), *(f"  note {m}" for m in self.notes)]
        )


def _drop_repeated_jobs(jobs: list[Job]) -> tuple[list[Job], list[str]]:
    """An image an earlier job already renders (same spec and seed, so the same file) is rendered once: the
    later job keeps only its other seeds, and the repeat is reported rather than silently counted twice."""
    seen: dict[tuple[str, int], int] = {}
    kept, repeats = [], []
    for job in jobs:
        earlier = sorted({seen[(job.key, s)] for s in job.seeds if (job.key, s) in seen})
        fresh = tuple(s for s in job.seeds if (job.key, s) not in seen)
        if earlier:
            repeated = [s for s in job.seeds if s not in fresh]
            repeats.append(f"line {job.line}: seeds {repeated} repeat line(s) {earlier}; rendered once")
        for seed in fresh:
            seen[(job.key, seed)] = job.line
        if fresh:
            kept.append(dataclasses.replace(job, seeds=fresh))
    return kept, repeats


def _chunks(jobs: list[Job], batch_size: int) -> list[tuple[Job, int, tuple[int, ...]]]:
    """(job, index of the first seed, seeds) in fixed chunks: the unit of work and of resumption."""
    return [
        (job, start, job.seeds[start : start + batch_size])
        for job in jobs
        for start in range(0, len(job.seeds), batch_size)
    ]


def _call_kwargs(job: Job) -> dict:
    """Turn a job spec into pipeline keyword arguments (decoding knobs only when the strategy has any)."""
    spec = dict(job.spec)
    kwargs = {"decoding": spec.pop("decoding")}
    spec.pop("preset")
    condition = spec.pop("class", None)
    if condition is not None:
        kwargs["class_labels" if isinstance(condition, int) else "prompt"] = condition
    if "cfg_interval" in spec:
        spec["cfg_interval"] = tuple(spec["cfg_interval"])
    kwargs.update(spec)  # prompt, negative_prompt, sampling params, decoding knobs
    return kwargs


def _render_chunk(pipe, job: Job, start: int, seeds: tuple[int, ...], done: dict, out_dir: Path) -> int:
    import torch

    from arstudio.export import png_bytes

    if job.spec["decoding"] == "far":
        return _render_video_chunk(pipe, job, start, seeds, done, out_dir)
    pipe.strategy(job.spec["decoding"])  # refused with the reason and the strategies this preset can run
    out = pipe(
        **_call_kwargs(job),
        num_images_per_prompt=len(seeds),
        output_type="np",
        generator=[torch.Generator().manual_seed(s) for s in seeds],
    )
    results = list(zip(out.images, out.metadata, strict=True))
    timings = {"seconds": out.timings["total_s"] / len(seeds)}

    def encode(offset: int) -> tuple[bytes, dict]:
        image, meta = results[offset]
        # batch_seeds: batch composition can change pixels, so the recipe names the batch it was made in.
        data = png_bytes(image, {**meta, "job": job.spec, "job_line": job.line, "batch_seeds": list(seeds)})
        return data, {"timings": timings, "stats": out.stats}

    return _write_outputs(job, start, seeds, done, out_dir, encode)


def _render_video_chunk(pipe, job: Job, start: int, seeds: tuple[int, ...], done: dict, out_dir: Path) -> int:
    """One gif/mp4 per seed (pipeline errors, e.g. num_frames over the preset's maximum, name the value)."""
    import torch

    from arstudio.export import video_bytes

    kwargs = _call_kwargs(job)
    kwargs.pop("decoding")
    fmt = kwargs.pop("format")
    out = pipe(
        **kwargs,
        num_videos_per_prompt=len(seeds),
        output_type="np",
        generator=[torch.Generator().manual_seed(s) for s in seeds],
    )
    results = list(zip(out.frames, out.metadata, strict=True))
    timings = {"seconds": out.timings["total_s"] / len(seeds)}

    def encode(offset: int) -> tuple[bytes, dict]:
        frames, meta = results[offset]
        return video_bytes(frames, fmt), {
            "metadata": {**meta, "batch_seeds": list(seeds)},
            "timings": timings,
        }

    return _write_outputs(job, start, seeds, done, out_dir, encode)


def _write_outputs(job: Job, start: int, seeds: tuple[int, ...], done: dict, out_dir: Path, encode) -> int:
    """Write each seed's file not already done (atomically), then its manifest line; ``encode(offset)``
    gives the file's bytes and the manifest fields beyond the common ones. Returns how many were written."""
    from arstudio.io import atomic_write_bytes

    written = 0
    for offset, seed in enumerate(seeds):
        name = job.file_name(seed)
        if name in done:
            continue
        data, fields = encode(offset)
        atomic_write_bytes(out_dir / name, data)
        entry = {"file": name, "sha256": hashlib.sha256(data).hexdigest(), "line": job.line, "job": job.spec}
        append_manifest(out_dir, {**entry, "seed": seed, "seed_index": start + offset, **fields})
        written += 1
    return written


def render_batch(
    jobs,
    out_dir: str | Path,
    device=None,
    batch_size: int | None = None,
    progress: bool = True,
    load_options: dict | None = None,
) -> RenderSummary:
    """Render ``jobs`` (a JSONL path, or a list of job dicts / ``Job``s) into ``out_dir``; resumable.

    ``batch_size``: seeds per pipeline call (None: ``arstudio.limits.default_batch_size`` of the device);
    resume with the one the run started with, or finished chunks may differ by float rounding.
    ``load_options``: more ``load_pipeline`` keyword arguments (e.g. ``compile``, ``attention_backend``).
    Under ``accelerate launch`` the chunks are split across processes. Invalid jobs and jobs that fail
    while rendering (e.g. a preset whose weights are missing) are reported in the summary with their line
    number; the other jobs still render.
    """
    from arstudio.export import check_output_folder
    from arstudio.limits import default_batch_size

    if batch_size is not None and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    out_dir = check_output_folder(out_dir)
    t0 = time.perf_counter()
    summary = RenderSummary()
    if isinstance(jobs, (str, Path)):
        jobs, errors = read_jobs(jobs)
        summary.failed += [str(e) for e in errors]
    else:
        parsed = []
        for number, raw in enumerate(jobs, start=1):
            try:
                parsed.append(raw if isinstance(raw, Job) else parse_job(raw, number))
            except JobError as err:
                summary.failed.append(str(err))
        jobs = parsed
    jobs, summary.notes = _drop_repeated_jobs(jobs)
    summary.unit = _unit(jobs)
    state = _process_state(device)
    batch_size = batch_size or default_batch_size(device or _own_device(state))
    summary.processes, summary.main_process = state.num_processes, state.is_main_process
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        clean_temporary_files(out_dir)
        repair_manifest(out_dir / MANIFEST_NAME)
    state.wait_for_everyone()
    done = read_manifest(out_dir)
    chunks = _chunks(jobs, batch_size)[state.process_index :: state.num_processes]
    pending = [c for c in chunks if not all(c[0].file_name(s) in done for s in c[2])]
    summary.skipped = sum(job.file_name(s) in done for job, _, seeds in chunks for s in seeds)
    failed_lines = _render_pending(
        pending, out_dir, done, summary, state, device, progress, load_options or {}
    )
    summary.failed += list(failed_lines.values())
    if state.num_processes > 1:  # the main process reports for all of them
        from accelerate.utils import gather_object

        parts = gather_object([(summary.rendered, summary.skipped, list(failed_lines.values()))])
        summary.rendered = sum(p[0] for p in parts)
        summary.skipped = sum(p[1] for p in parts)
        summary.failed = list({*summary.failed, *(m for p in parts for m in p[2])})
    summary.failed.sort(key=_line_of)
    state.wait_for_everyone()
    if state.is_main_process:
        compact_manifest(out_dir)
    summary.seconds = time.perf_counter() - t0
    return summary


def _render_pending(
    pending,
    out_dir: Path,
    done: dict,
    summary: RenderSummary,
    state,
    device,
    progress: bool,
    load_options: dict,
) -> dict[int, str]:
    """Render the pending chunks, counting into ``summary.rendered``; returns {line: message} of the jobs
    that failed. The progress bar counts finished files only: a failed job's seeds leave its total."""
    from tqdm.auto import tqdm

    from arstudio.pipelines.loading import load_pipeline

    pipelines: dict[str, object] = {}
    failed_lines: dict[int, str] = {}
    bar = tqdm(
        total=sum(len(c[2]) for c in pending),
        unit=summary.unit,
        disable=not progress,
        desc=f"render[{state.process_index}]" if state.num_processes > 1 else "render",
    )
    for job, start, seeds in pending:
        if job.line not in failed_lines:
            try:
                preset = job.spec["preset"]
                if preset not in pipelines:
                    pipelines[preset] = load_pipeline(
                        preset, device=device or _own_device(state), **load_options
                    )
                summary.rendered += _render_chunk(pipelines[preset], job, start, seeds, done, out_dir)
                bar.update(len(seeds))
                continue
            except Exception as err:  # one bad job must not stop the others; the message names the cause
                failed_lines[job.line] = f"line {job.line}: {describe_error(err)}"
        bar.total -= len(seeds)
        bar.set_postfix(failed=len(failed_lines), refresh=False)
        bar.refresh()
    bar.close()
    return failed_lines


def _unit(jobs: list[Job]) -> str:
    """What a run makes: "image", "video", or "file" when it makes both."""
    kinds = {"video" if job.spec["decoding"] == "far" else "image" for job in jobs}
    return kinds.pop() if len(kinds) == 1 else "file"


def _own_device(state):
    """This process's accelerator (cuda:N), or None for the pipeline's default ("cpu", not accelerate's "cpu:0",
    so the recorded metadata and the bytes match a single-process run)."""
    return state.device if state.device is not None and state.device.type != "cpu" else None


def describe_error(err: BaseException) -> str:
    """The message a user should see: ours (ValueError, FileNotFoundError, KeyError) are written for people;
    anything else also names its type. Shared by the CLI summary and the studio."""
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return str(err) if isinstance(err, (ValueError, FileNotFoundError)) else f"{type(err).__name__}: {err}"


def _line_of(message: str) -> int:
    return int(message.split(":")[0].removeprefix("line "))


@dataclass
class _SingleProcess:
    num_processes: int = 1
    process_index: int = 0
    is_main_process: bool = True
    device: object = None

    def wait_for_everyone(self) -> None:
        pass


def _process_state(device):
    """accelerate's process state under ``accelerate launch`` / torchrun, else a plain single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import PartialState

        # cpu=True is what makes accelerate use gloo across CPU processes instead of staying single.
        return PartialState(cpu=str(device) == "cpu" or not torch.cuda.is_available())
    return _SingleProcess()

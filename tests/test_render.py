"""Batch rendering: job validation, manifest, resume after damage and after kill -9, multi-process."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arstudio.export import read_png_metadata
from arstudio.render import MANIFEST_NAME, JobError, parse_job, read_jobs, render_batch, sha256_file

SRC = str(Path(__file__).resolve().parents[1] / "src")
# Subprocesses: this checkout's code, one thread (OpenMP on shared cores is 10x slower, see conftest.py).
ENV = {
    **os.environ,
    "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
    "OMP_NUM_THREADS": "1",
}
TINY = {"preset": "test-tiny-c2i", "class": "red circle", "seed": 5, "count": 3}


@pytest.mark.parametrize(
    "job, message",
    [
        ({"class": 1, "seed": 0}, "missing preset"),
        ({**TINY, "preset": "nope"}, "unknown preset 'nope'"),
        ({**TINY, "colour": "red"}, "unknown key(s) ['colour']"),
        ({**TINY, "top_p": 1.5}, "top_p=1.5 is not allowed"),
        ({**TINY, "temperature": 0}, "temperature=0 is not allowed"),
        ({**TINY, "decoding": "magic"}, "decoding='magic' is unknown"),
        (
            {**TINY, "draft_tokens": 4},
            "draft_tokens=4 applies to decoding in ['speculative', 'lantern', "
            "'continuous_speculative'], not decoding='ar' (its knobs: none)",
        ),
        ({**TINY, "decoding": "lantern", "lantern_k": None}, "lantern_k=null: give a number or leave it out"),
        ({**TINY, "decoding": "speculative", "draft_tokens": 99}, "draft_tokens=99 is out of range"),
        ({**TINY, "prompt": "red circle"}, "exactly one of prompt"),
        ({"preset": "test-tiny-c2i", "class": 1}, "give seeds (a list) or seed"),
        ({**TINY, "count": 0}, "count=0 must be an integer"),
        ({**TINY, "seed": 2**63 - 2}, "runs past 2**63"),
        ({"preset": "test-tiny-c2i", "class": 1, "seeds": [1, 1]}, "has repeats"),
        ({"preset": "test-tiny-c2i", "class": True, "seed": 1}, "class=True must be"),
        ([1, 2], "must be a JSON object"),
        # issue 24: a bad class is named as a class (not as a prompt), before any work
        ({**TINY, "class": "nonsense"}, "class='nonsense' is not a class of test-tiny-c2i"),
        ({"preset": "test-tiny-c2i", "prompt": "nonsense", "seed": 1}, "prompt='nonsense' is not a class"),
        ({**TINY, "class": 24}, "class=24 is out of range: allowed are 0..23"),
        ({"preset": "test-tiny-t2i", "class": 1, "seed": 1}, "class=1: test-tiny-t2i is text-to-image"),
        ({"preset": "test-tiny-video", "class": "nonsense", "seed": 1}, "class='nonsense' is not a class"),
        (
            {"preset": ["test-tiny-c2i"], "class": 1, "seed": 1},
            "preset=['test-tiny-c2i'] must be a preset name",
        ),
        # issue 24: nan and inf are refused everywhere a number is taken
        ({**TINY, "guidance_scale": float("nan")}, "guidance_scale=nan is not allowed: use a finite number"),
        ({**TINY, "temperature": float("inf")}, "temperature=inf is not allowed: use a finite number"),
        ({**TINY, "top_p": float("nan")}, "top_p=nan is not allowed"),
        ({**TINY, "cfg_interval": [0, float("nan")]}, "cfg_interval=(0, nan) is not allowed"),
        (
            {**TINY, "decoding": "lantern", "lantern_delta": float("nan")},
            "lantern_delta=nan must be a number",
        ),
        (
            {**TINY, "decoding": "speculative", "draft_tokens": float("inf")},
            "draft_tokens=inf must be an integer",
        ),
        (
            {"preset": "test-tiny-video", "class": 1, "seed": 1, "guidance_scale": float("nan")},
            "guidance_scale=nan",
        ),
        (
            {"preset": "test-tiny-video", "class": 1, "seed": 1, "temporal_decay": float("inf")},
            "temporal_decay=inf must be a finite number >= 0",
        ),
    ],
)
def test_bad_jobs_are_rejected_with_line_and_reason(job, message):
    with pytest.raises(JobError) as info:
        parse_job(job, line=7)
    assert str(info.value).startswith("line 7: ") and message in str(info.value)


def test_a_good_job_expands_its_seeds_and_keeps_knobs():
    job = parse_job({**TINY, "decoding": "lantern", "lantern_delta": 0.5, "guidance_scale": 3}, line=2)
    assert job.seeds == (5, 6, 7) and job.spec["lantern_delta"] == 0.5 and job.spec["guidance_scale"] == 3
    assert job.file_name(6).startswith("red-circle_") and job.file_name(6).endswith("_6.png")


def _write_jobs(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def _snapshot(out: Path) -> tuple[list, dict]:
    """Manifest without timings, and the sha256 of every file in the folder."""
    entries = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]
    for entry in entries:
        entry.pop("timings"), entry.pop("stats")
    files = {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.name != MANIFEST_NAME}
    return entries, files


def test_bad_lines_are_reported_and_the_rest_is_rendered(tmp_path):
    jobs = _write_jobs(
        tmp_path / "jobs.jsonl",
        [
            TINY,
            "{not json",
            {**TINY, "class": 99},
            "",
            {"preset": "test-tiny-t2i", "prompt": "a blue square", "seeds": [1, 2], "negative_prompt": "red"},
            {**TINY, "sharpness": 2},
        ],
    )
    summary = render_batch(jobs, tmp_path / "out", progress=False)
    assert summary.rendered == 5 and summary.skipped == 0
    assert [m.split(":")[0] for m in summary.failed] == ["line 2", "line 3", "line 6"]
    assert "class=99 is out of range" in summary.failed[1] and "sharpness" in summary.failed[2]
    entries, files = _snapshot(tmp_path / "out")
    assert [(e["line"], e["seed"]) for e in entries] == [(1, 5), (1, 6), (1, 7), (5, 1), (5, 2)]
    assert all(files[e["file"]] == e["sha256"] for e in entries) and len(files) == 5
    meta = read_png_metadata(tmp_path / "out" / entries[3]["file"])
    assert meta["prompt"] == "a blue square" and meta["negative_prompt"] == "red" and meta["seed"] == 1


def test_resume_repairs_damage_and_matches_a_clean_run(tmp_path):
    jobs = _write_jobs(
        tmp_path / "jobs.jsonl",
        [TINY, {"preset": "test-tiny-c2i", "class": 4, "seeds": [11, 12, 13, 14, 15]}],
    )
    render_batch(jobs, tmp_path / "clean", progress=False, batch_size=2)
    reference = _snapshot(tmp_path / "clean")

    out = tmp_path / "damaged"
    shutil.copytree(tmp_path / "clean", out)
    entries = (out / MANIFEST_NAME).read_text().splitlines()
    lost = json.loads(entries[-1])["file"]
    corrupt = json.loads(entries[0])["file"]
    (out / MANIFEST_NAME).write_text("\n".join(entries[:-2]) + "\n" + entries[-2][:30])  # torn last line
    (out / corrupt).write_bytes(b"half a png")  # sha mismatch: must be rendered again
    (out / lost).unlink()
    (out / f".{lost}.abc123.tmp").write_bytes(b"stray")  # an interrupted atomic write
    summary = render_batch(jobs, out, progress=False, batch_size=2)
    assert summary.rendered == 3 and summary.skipped == 5 and not summary.failed
    assert _snapshot(out) == reference
    assert render_batch(jobs, out, progress=False, batch_size=2).rendered == 0  # all done: nothing to redo


def _render_cmd(jobs: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "arstudio.cli",
        "render",
        str(jobs),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--no-progress",
    ]


def test_kill_9_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path):
    lines = [{"preset": "test-tiny-c2i", "class": c, "seed": 100 * c, "count": 5} for c in range(12)]
    jobs = _write_jobs(tmp_path / "jobs.jsonl", lines)
    render_batch(jobs, tmp_path / "ref", batch_size=2, progress=False)  # uninterrupted, in this process

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _render_cmd(jobs, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    manifest = out / MANIFEST_NAME
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        manifest.is_file() and manifest.read_bytes().count(b"\n") >= 1
    ):
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = manifest.read_bytes().count(b"\n")
    assert 1 <= done_before < 60, "the kill must land mid-run"
    finished = subprocess.run(_render_cmd(jobs, out), env=ENV, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert f"{60 - done_before} image(s), {done_before} already done" in finished.stdout
    assert _snapshot(out) == _snapshot(tmp_path / "ref")


def test_a_strategy_knob_reaches_the_pipeline_and_the_recipe(tmp_path):
    job = {**TINY, "count": 1, "decoding": "speculative", "draft_tokens": 2}
    summary = render_batch([job], tmp_path, progress=False)
    if summary.failed and "not available" in summary.failed[0]:
        pytest.skip(summary.failed[0])
    (png,) = tmp_path.glob("*.png")
    meta = read_png_metadata(png)
    assert (
        meta["decoding"] == "speculative" and meta["draft_tokens"] == 2 and meta["job"]["draft_tokens"] == 2
    )


def test_a_repeated_image_is_rendered_once_and_noted(tmp_path):
    summary = render_batch([TINY, {**TINY, "count": 3}, {**TINY, "seed": 6}], tmp_path, progress=False)
    assert summary.rendered == 4 and len(list(tmp_path.glob("*.png"))) == 4  # seeds 5, 6, 7 and 8
    assert not summary.failed and summary.notes == [
        "line 2: seeds [5, 6, 7] repeat line(s) [1]; rendered once",
        "line 3: seeds [6, 7] repeat line(s) [1]; rendered once",
    ]


def test_seeds_near_2_63_round_trip_through_the_manifest_the_recipe_and_the_cli(tmp_path, capsys):
    import numpy as np
    import torch
    from PIL import Image

    import arstudio
    from arstudio.cli import main

    seeds = [2**63 - 1, 2**63 - 2, 268503639406115326]  # the last: the one the browser corrupted
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"preset": "test-tiny-c2i", "class": 2, "seeds": seeds}])
    assert (
        main(["render", str(jobs), "--out", str(tmp_path / "out"), "--batch-size", "3", "--no-progress"]) == 0
    )
    entries, _ = _snapshot(tmp_path / "out")
    assert [e["seed"] for e in entries] == seeds  # the manifest: exact integers
    pngs = [tmp_path / "out" / e["file"] for e in entries]
    recipes = [read_png_metadata(p) for p in pngs]
    assert [r["seed"] for r in recipes] == seeds and recipes[0]["batch_seeds"] == seeds  # the PNG recipe
    # the recipe's seeds redo the images: the same batch, the same pixels
    redo = arstudio.load_pipeline("test-tiny-c2i")(
        class_labels=[2] * 3,
        output_type="np",
        generator=[torch.Generator().manual_seed(r["seed"]) for r in recipes],
    )
    assert all(np.array_equal(np.asarray(Image.open(p)), a) for p, a in zip(pngs, redo.images, strict=True))


def test_the_progress_bar_counts_finished_images_only_and_names_videos(tmp_path, capsys):
    failing = {"preset": "llamagen-b-256", "class": 1, "seed": 0, "count": 2}  # no weights: fails to load
    summary = render_batch([TINY, failing], tmp_path / "images", batch_size=2)
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert summary.rendered == 3 and "3/3" in bar and "failed=1" in bar and "image" in bar, bar
    video = {"preset": "test-tiny-video", "class": 1, "seed": 0, "num_frames": 2}
    summary = render_batch([video], tmp_path / "video", batch_size=2)
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "1/1" in bar and "video" in bar and "image" not in bar, bar
    assert str(summary).startswith("rendered 1 video(s), 0 already done")
    assert str(render_batch([TINY, video], tmp_path / "both", progress=False)).startswith(
        "rendered 4 file(s)"
    )


def test_jobs_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_jobs(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="batch_size=0"):
        render_batch([TINY], tmp_path, batch_size=0)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is an existing file; give a folder"):
        render_batch([TINY], tmp_path / "file")


@pytest.mark.slow
def test_two_accelerate_processes_split_the_jobs_and_match_one_process(tmp_path):
    lines = [{"preset": "test-tiny-c2i", "class": c, "seed": c, "count": 4} for c in range(6)] + ["oops"]
    jobs = _write_jobs(tmp_path / "jobs.jsonl", lines)
    subprocess.run(_render_cmd(jobs, tmp_path / "one"), env=ENV, capture_output=True)
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "arstudio.cli",
        *_render_cmd(jobs, tmp_path / "two")[3:],
    ]
    result = subprocess.run(launch, env=ENV, capture_output=True, text=True, timeout=300)
    assert "rendered 24 image(s), 0 already done, 1 job(s) failed" in result.stdout, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout and "line 7: not valid JSON" in result.stdout
    assert _snapshot(tmp_path / "two") == _snapshot(tmp_path / "one")

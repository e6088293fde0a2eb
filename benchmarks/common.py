"""Shared benchmark plumbing: machine context (threads, CPU pressure, peak memory) and result files."""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from arstudio.evaluation.timing import cpu_pressure

RESULTS = Path(__file__).parent / "results"


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reproduce_command() -> str:
    """How this run was started, as ``python -m benchmarks.<name> <args>`` when run as a module."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    entry = ["-m", spec.name] if spec is not None else [sys.argv[0]]
    return " ".join(["python", *entry, *sys.argv[1:]])


def git_commit(under: str = ".", root: Path | None = None) -> str:
    """The last commit that changed ``under`` (a path in the checkout ``root``, default this one; default
    ``under``: the checkout's HEAD), short hash, '+dirty' when ``under`` has uncommitted changes; 'unknown'
    outside git."""
    root = str(root or Path(__file__).parent.parent)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", root, *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("log", "-1", "--format=%h", "--", under)
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", under)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return (commit or "unknown") + ("+dirty" if dirty else "")


# load_pipeline keyword arguments that newer engines take (issue 21); older ones raise TypeError on them.
OPTIONAL_LOAD_KWARGS = ("compile", "attention_backend")


def load_pipeline_with(name: str, **kwargs):
    """``load_pipeline(name, **kwargs)``, dropping the ``OPTIONAL_LOAD_KWARGS`` this version of arstudio does
    not take. Returns (pipeline, note): the note says what was dropped ('' when nothing was)."""
    from arstudio import load_pipeline

    try:
        return load_pipeline(name, **kwargs), ""
    except TypeError as error:
        unknown = [k for k in OPTIONAL_LOAD_KWARGS if k in kwargs and repr(k) in str(error)]
        if not unknown:
            raise
    kept = {k: v for k, v in kwargs.items() if k not in unknown}
    return load_pipeline(name, **kept), "; ".join(f"{k}: not available" for k in unknown)


def header(name: str) -> dict:
    info = {
        "benchmark": name,
        "command": reproduce_command(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_pressure_start": cpu_pressure(),
    }
    print(
        f"# {name}\n# reproduce: {info['command']}\n# threads={info['threads']}  {info['cpu_pressure_start']}"
    )
    return info


def finish(info: dict, results: dict) -> None:
    info.update(results, cpu_pressure_end=cpu_pressure(), peak_memory_mb=round(peak_memory_mb(), 1))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{info['benchmark']}.json"
    path.write_text(json.dumps(info, indent=2))
    print(f"# cpu pressure at end: {info['cpu_pressure_end']}  peak memory {info['peak_memory_mb']} MB")
    print(f"# results written to {path}")

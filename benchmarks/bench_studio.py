"""The studio's numbers: time from `arstudio ui` to a served page (fresh process), UI request latency vs the
same call through the Python API, and batch-rendering throughput with 1 and 2 processes (shapes-c2i).

    python -m benchmarks.bench_studio [--repeats 5] [--images 48]

Everything on one thread per process (the cores are shared; see tests/conftest.py), with CPU pressure
recorded next to each number.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from benchmarks.common import cpu_pressure, finish, header

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
}
PRESET = "shapes-c2i"


def time_to_served_page(port: int = 7899, timeout: float = 180.0) -> float:
    """Seconds from starting `arstudio ui` in a fresh process to the first HTTP 200 for the page."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "arstudio.cli", "ui", "--port", str(port), "--preset", PRESET],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while time.perf_counter() - start < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"no page after {timeout} s")
    finally:
        proc.kill()
        proc.wait()


def ui_vs_api(repeats: int, count: int) -> dict:
    """Median wall-clock of the same request through gradio_client -> the served app (previews, PNGs with
    recipes, gallery; the client does not download the files), and straight to the pipeline (interleaved,
    so CPU pressure from other work hits both alike)."""
    import gradio as gr
    from gradio_client import Client

    import arstudio
    from arstudio.ui import create_app

    app = create_app(preset=PRESET, presets=[PRESET])
    with app:  # Gradio's own floor: a round trip through the same queue that does no work
        box = gr.Number(visible=False)
        box.change(lambda x: x, box, box, api_name="echo")
    app.launch(
        server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, ssr_mode=False
    )
    client = Client(app.local_url, verbose=False, download_files=False)
    pipe = arstudio.load_pipeline(PRESET)
    args = [
        PRESET,
        "red circle",
        0,
        "",
        "",
        "11",
        False,
        count,
        3.0,
        1.0,
        0,
        1.0,
        25,
        "ar",
        4,
        4,
        8,
        0.2,
        1.0,
    ]
    ui_s, api_s, echo_s = [], [], []
    client.predict(*args, api_name="/generate")  # warm-up: first-call allocations, file cache
    for _ in range(repeats):
        t = time.perf_counter()
        client.predict(1, api_name="/echo")
        echo_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        client.predict(*args, api_name="/generate")
        ui_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        pipe(
            prompt="red circle",
            num_images_per_prompt=count,
            guidance_scale=3.0,
            generator=[torch.Generator().manual_seed(11 + i) for i in range(count)],
        )
        api_s.append(time.perf_counter() - t)
    app.close()
    ui, api = statistics.median(ui_s), statistics.median(api_s)
    return {
        "images_per_request": count,
        "ui_median_s": round(ui, 3),
        "api_median_s": round(api, 3),
        "overhead_pct": round(100 * (ui - api) / api, 1),
        "gradio_echo_median_s": round(statistics.median(echo_s), 3),
        "ui_runs_s": [round(x, 3) for x in ui_s],
        "api_runs_s": [round(x, 3) for x in api_s],
        "cpu_pressure": cpu_pressure(),
    }


def render_throughput(processes: int, images: int, folder: Path) -> dict:
    """Images/s of `arstudio render` on fresh output (rendering only, from its summary) and wall-clock
    including start-up."""
    jobs = folder / "jobs.jsonl"
    per_job = 8
    jobs.write_text(
        "".join(
            json.dumps({"preset": PRESET, "class": c % 24, "seed": 1000 * c, "count": per_job}) + "\n"
            for c in range(images // per_job)
        )
    )
    out = folder / f"out{processes}"
    command = ["-m", "arstudio.cli", "render", str(jobs), "--out", str(out), "--no-progress"]
    if processes > 1:
        command = [
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            *command,
        ]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *command], env=ENV, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    match = re.search(r"rendered (\d+) image\(s\).*?([\d.]+) s \(([\d.]+) images/s", result.stdout)
    assert match and int(match.group(1)) == images, result.stdout + result.stderr[-2000:]
    return {
        "processes": processes,
        "images": images,
        "render_s": float(match.group(2)),
        "images_per_s": float(match.group(3)),
        "wall_s_with_startup": round(wall, 2),
        "cpu_pressure": cpu_pressure(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=48, help="images per render run (a multiple of 8)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = header("studio")
    results = {"time_to_served_page_s": round(time_to_served_page(), 2), "cpu_pressure_page": cpu_pressure()}
    print(f"served page after {results['time_to_served_page_s']} s")
    results["ui_vs_api"] = [ui_vs_api(args.repeats, count) for count in (4, 16)]
    for row in results["ui_vs_api"]:
        print(f"UI vs API: {row}")
    with tempfile.TemporaryDirectory() as folder:
        results["render"] = [render_throughput(n, args.images, Path(folder)) for n in (1, 2)]
    for row in results["render"]:
        print(f"render with {row['processes']} process(es): {row}")
    finish(info, {"results": results, "repeats": args.repeats})


if __name__ == "__main__":
    main()

"""The decode engine on the CPU against an earlier checkout, side by side in one run.

    python -m benchmarks.bench_engine_cpu --baseline-src /path/to/old/checkout/src [--preset shapes-c2i]

Each measurement runs in a fresh worker process (``--worker``) with ``PYTHONPATH`` pointing at the code
under test: the baseline's ``src`` or this checkout's. Workers take turns (baseline, current eager, current
compiled, baseline, ...) so that load on the shared cores hits all of them alike; each reports the
median decode time (``out.stats["decode_seconds"]``, the sampling loop alone) of ``--calls`` calls after
one warm-up call (the compiled worker's warm-up is where it compiles; its compile time is reported
apart). Tokens/s counts image tokens, not CFG twins. One thread, as the tests. Logs CPU pressure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import cpu_pressure, finish, header

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    import torch

    import arstudio

    torch.set_num_threads(1)
    kwargs = {"compile": True} if args.compile else {}
    pipe = arstudio.load_pipeline(args.preset, **kwargs)
    labels = [i % 24 for i in range(args.batch)]

    def call(seed: int):
        gens = [torch.Generator().manual_seed(seed + i) for i in range(args.batch)]
        return pipe(class_labels=labels, generator=gens, decoding=args.decoding, output_type="np")

    started = time.perf_counter()
    out = call(0)  # warm-up (and compile)
    warmup = time.perf_counter() - started
    times = [call(1000 * (i + 1)).stats["decode_seconds"] for i in range(args.calls)]
    tokens = out.tokens.shape[0] * out.tokens.shape[1]
    print(json.dumps({"seconds": statistics.median(times), "tokens": tokens, "warmup_seconds": warmup}))


def run_worker(src: Path, preset: str, batch: int, decoding: str, calls: int, compiled: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    command = [sys.executable, "-m", "benchmarks.bench_engine_cpu", "--worker", "--preset", preset,
               "--batch", str(batch), "--decoding", decoding, "--calls", str(calls)]  # fmt: skip
    if compiled:
        command.append("--compile")
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"worker failed ({src}, {decoding}, batch {batch}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, help="the earlier checkout's src folder")
    parser.add_argument("--preset", default="shapes-c2i")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--decodings", default="ar,speculative,lantern")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="turns each worker kind takes")
    parser.add_argument("--no-compiled", action="store_true", help="skip the compiled worker")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--decoding", default="ar", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.baseline_src is None or not (args.baseline_src / "arstudio").is_dir():
        raise SystemExit(f"--baseline-src {args.baseline_src} must be a src folder holding arstudio/")
    info = header("engine_cpu")
    kinds = {"baseline": (args.baseline_src, False), "eager": (ROOT / "src", False)}
    if not args.no_compiled:
        kinds["compiled"] = (ROOT / "src", True)
    rows = []
    for decoding in args.decodings.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            runs = {kind: [] for kind in kinds}
            for _ in range(args.rounds):
                for kind, (src, compiled) in kinds.items():
                    runs[kind].append(run_worker(src, args.preset, batch, decoding, args.calls, compiled))
            row = {"decoding": decoding, "batch": batch}
            for kind, results in runs.items():
                seconds = statistics.median(r["seconds"] for r in results)
                row[f"{kind}_tokens_per_s"] = round(results[0]["tokens"] / seconds, 1)
                if kind == "compiled":
                    row["compile_seconds"] = round(max(r["warmup_seconds"] for r in results), 1)
            for kind in kinds:
                if kind != "baseline":
                    row[f"{kind}_vs_baseline"] = round(
                        row[f"{kind}_tokens_per_s"] / row["baseline_tokens_per_s"], 2
                    )
            rows.append(row)
            print(json.dumps(row), f"# {cpu_pressure()}", flush=True)
    print(
        "\n| decoding | batch | "
        + " | ".join(f"{k} tok/s" for k in kinds)
        + " | eager/base | compiled/base |"
    )
    print("|---|---|" + "---|" * (len(kinds) + 2))
    for row in rows:
        cells = [str(row[f"{k}_tokens_per_s"]) for k in kinds]
        ratios = [str(row.get(f"{k}_vs_baseline", "-")) for k in ("eager", "compiled")]
        print(f"| {row['decoding']} | {row['batch']} | " + " | ".join(cells + ratios) + " |")
    finish(info, {"preset": args.preset, "baseline_src": str(args.baseline_src), "rows": rows})


if __name__ == "__main__":
    main()

"""The decode engine on the CPU against an earlier checkout, side by side in one run.

    python -m benchmarks.bench_engine_cpu --baseline-src /path/to/old/checkout/src [--preset shapes-c2i]

Each kind of run (the baseline's ``src``, this checkout eager, this checkout compiled) is a persistent worker
process (``--worker``) with ``PYTHONPATH`` pointing at the code under test. After one warm-up call each (the
compiled worker's is where it compiles; its time is reported apart), the workers take turns call by call,
``--calls`` times, so that load on the shared cores hits all of them alike. Each call reports its decode time
(``out.stats["decode_seconds"]``, the sampling loop alone); the table gives the median. Tokens/s counts image
tokens, not CFG twins. One thread, as the tests. Logs CPU pressure.
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


def serve(args) -> None:
    """Load once, then answer each line on stdin (a seed) with one call's decode time as JSON."""
    import torch

    import arstudio

    torch.set_num_threads(1)
    kwargs = {"compile": True} if args.compile else {}
    pipe = arstudio.load_pipeline(args.preset, **kwargs)
    labels = [i % 24 for i in range(args.batch)]
    for line in sys.stdin:
        gens = [torch.Generator().manual_seed(int(line) + i) for i in range(args.batch)]
        started = time.perf_counter()
        out = pipe(class_labels=labels, generator=gens, decoding=args.decoding, output_type="np")
        wall = time.perf_counter() - started
        tokens = out.tokens.shape[0] * out.tokens.shape[1]
        print(
            json.dumps({"seconds": out.stats["decode_seconds"], "tokens": tokens, "wall": wall}), flush=True
        )


class Worker:
    """A worker process for one kind of run; ``call(seed)`` times one pipeline call there."""

    def __init__(self, src: Path, preset: str, batch: int, decoding: str, compiled: bool):
        env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
        command = [
            sys.executable,
            "-m",
            "benchmarks.bench_engine_cpu",
            "--worker",
            "--preset",
            preset,
            "--batch",
            str(batch),
            "--decoding",
            decoding,
        ] + (["--compile"] if compiled else [])
        self.name = f"{src} {decoding} batch {batch}{' compiled' if compiled else ''}"
        self.process = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def call(self, seed: int) -> dict:
        self.process.stdin.write(f"{seed}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"worker failed: {self.name} (run it with --worker to see why)")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, help="the earlier checkout's src folder")
    parser.add_argument("--preset", default="shapes-c2i")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--decodings", default="ar,speculative,lantern")
    parser.add_argument("--calls", type=int, default=9, help="timed calls per worker, taken in turn")
    parser.add_argument("--no-compiled", action="store_true", help="skip the compiled worker")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--decoding", default="ar", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return serve(args)
    if args.baseline_src is None or not (args.baseline_src / "arstudio").is_dir():
        raise SystemExit(f"--baseline-src {args.baseline_src} must be a src folder holding arstudio/")
    info = header("engine_cpu")
    kinds = {"baseline": (args.baseline_src, False), "eager": (ROOT / "src", False)}
    if not args.no_compiled:
        kinds["compiled"] = (ROOT / "src", True)
    rows = []
    for decoding in args.decodings.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            workers = {
                kind: Worker(src, args.preset, batch, decoding, compiled)
                for kind, (src, compiled) in kinds.items()
            }
            warmups = {kind: worker.call(0) for kind, worker in workers.items()}
            runs = {kind: [] for kind in kinds}
            for i in range(args.calls):  # call by call, in turn
                for kind, worker in workers.items():
                    runs[kind].append(worker.call(1000 * (i + 1)))
            for worker in workers.values():
                worker.close()
            row = {"decoding": decoding, "batch": batch}
            for kind, results in runs.items():
                seconds = statistics.median(r["seconds"] for r in results)
                row[f"{kind}_tokens_per_s"] = round(results[0]["tokens"] / seconds, 1)
                if kind == "compiled":
                    row["compile_seconds"] = round(warmups[kind]["wall"], 1)
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

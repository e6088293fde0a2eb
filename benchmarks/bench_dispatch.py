"""Ops dispatched and host reads per pipeline call, per token and per speculative round, on the CPU.

    python -m benchmarks.bench_dispatch --label before [--cases ar dd2] [--batches 1 8]

Every ATen op a pipeline call dispatches is counted by a ``TorchDispatchMode``. On a GPU each op is at
least one kernel launch, and some of them make the host wait for the device ("host reads"):
``aten._local_scalar_dense`` (``.item()``, ``int()``/``float()``/``bool()`` of a tensor), ``aten.is_nonzero``,
``aten.equal``, ``aten.nonzero``, ``aten.masked_select``, ``aten._unique2``/``unique_*``, ``aten.bincount``,
``aten.repeat_interleave`` with tensor repeats, and indexing with a boolean mask (``aten.index`` /
``index_put_`` with a bool index, which runs ``nonzero``). ``.tolist()``, ``.numpy()`` and ``.cpu()`` dispatch
nothing on the CPU, so a ``TorchFunctionMode`` counts them too (a ``.cpu().numpy()`` chain counts once).

Host tensors versus device tensors. On the CPU every tensor lives on the host, yet reading a tensor that
also lives on the host on a GPU machine costs nothing there. The counter tracks which tensors are host
tensors: what a factory (``torch.arange``, ``torch.linspace``, ``torch.tensor``, ...) makes when called without
``device=``, the result of a draw with a CPU ``torch.Generator`` (a GPU run has both on the host too: per-image
seeds, a list of timesteps), and whatever is computed from host tensors alone. Reads of host tensors are not
counted; every other tensor (model weights, anything made with ``device=``, anything mixed with them) counts
as a device tensor. Limits: a generator created on the pipeline's device looks like a host generator here;
``.to("cpu")`` is not wrapped (its later reads count as device reads, as the copy itself would sync).

Also counted: tensor literals (``torch.tensor(...)``/``torch.as_tensor(...)`` of Python data,
``aten.lift_fresh``), each a host-to-device copy on a GPU, and host draws (ops drawing from a CPU
``torch.Generator``), whose results a GPU run must copy to the device.

Each host read is attributed to its site: the innermost frame inside ``src/arstudio`` (with the next two
arstudio callers as a short stack); the top sites and their counts per call are printed and saved.

What is measured: one warm-up call, then one counted call, per (case, batch size), with one seeded
``torch.Generator`` per image and the preset's default sampling. Tokens per image are the preset's grid
(64 for the shapes presets); rounds are the speculative samplers' verify forwards (``stats["forwards"] -
1``). The models run eager (``compile=False`` where ``load_pipeline`` takes it): a compiled graph hides the
ops from the counter.

Results go to ``benchmarks/results/dispatch.json`` under ``--label``; other labels already in the file are
kept, and the printed table sets every label side by side, with PASS/FAIL against issue 21's targets
(``TARGETS``).
"""

from __future__ import annotations

import argparse
import json
import linecache
import sys
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import arstudio
from benchmarks.common import RESULTS, cpu_pressure, git_commit, load_pipeline_with, reproduce_command

ARSTUDIO_DIR = str(Path(arstudio.__file__).parent) + "/"
ARSTUDIO_CHECKOUT = Path(arstudio.__file__).parents[2]  # src/arstudio/__init__.py: the engine measured
TORCH_DIR = str(Path(torch.__file__).parent) + "/"
RESULT_FILE = RESULTS / "dispatch.json"

# Ops that make the host wait for the device whatever their arguments.
SYNC_OPS = frozenset(
    {
        "aten._local_scalar_dense",
        "aten.is_nonzero",
        "aten.equal",
        "aten.nonzero",
        "aten.masked_select",
        "aten._unique2",
        "aten.unique_consecutive",
        "aten.unique_dim",
        "aten.bincount",
    }
)
INDEX_OPS = frozenset({"aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"})


def _op_name(func) -> str:
    return f"aten.{func._overloadpacket.__name__}" if hasattr(func, "_overloadpacket") else str(func)


def _syncs(name: str, args, kwargs) -> bool:
    """Whether an op with these arguments reads device data back to the host."""
    if name in SYNC_OPS:
        return True
    if name in INDEX_OPS:  # a boolean mask index runs nonzero to find the selected positions
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ()
        )
    if name == "aten.repeat_interleave":  # tensor repeats without output_size: the output length is data
        return isinstance(args[0], torch.Tensor) and kwargs.get("output_size") is None and len(args) == 1
    return False


def call_site(skip_file: str = __file__) -> tuple[str, list[str]]:
    """(site, short stack) of the code that caused the current op: the innermost frame inside arstudio
    (else the innermost outside torch and this file), as 'path:line function: source', and up to two
    further arstudio callers."""
    frame = sys._getframe(1)
    chain, fallback = [], None
    while frame is not None and len(chain) < 3:
        path = frame.f_code.co_filename
        if path.startswith(ARSTUDIO_DIR):
            chain.append(frame)
        elif fallback is None and not chain and not path.startswith(TORCH_DIR) and path != skip_file:
            fallback = frame
        frame = frame.f_back
    frames = chain or [fallback]
    described = [_describe(f) for f in frames if f is not None]
    return (described[0] if described else "<unknown>"), described


def _describe(frame) -> str:
    path = frame.f_code.co_filename
    short = path[len(ARSTUDIO_DIR) :] if path.startswith(ARSTUDIO_DIR) else Path(path).name
    source = linecache.getline(path, frame.f_lineno).strip()
    return f"{short}:{frame.f_lineno} {frame.f_code.co_name}: {source}"


@dataclass
class Tally:
    """What one counted region dispatched."""

    ops: Counter = field(default_factory=Counter)  # op name -> count
    host_reads: Counter = field(default_factory=Counter)  # site -> count
    literals: Counter = field(default_factory=Counter)  # site -> count of tensor literals made there
    host_draws: Counter = field(default_factory=Counter)  # site -> count of draws from a CPU generator
    stacks: dict = field(default_factory=dict)  # site -> a short stack seen there

    @property
    def total_ops(self) -> int:
        return sum(self.ops.values())

    @property
    def total_host_reads(self) -> int:
        return sum(self.host_reads.values())

    @property
    def total_literals(self) -> int:
        return sum(self.literals.values())

    @property
    def total_host_draws(self) -> int:
        return sum(self.host_draws.values())


# torch functions that make a tensor from nothing: without ``device=`` it lands on the host, also on a GPU.
FACTORIES = frozenset(
    {
        "arange",
        "linspace",
        "logspace",
        "zeros",
        "ones",
        "empty",
        "full",
        "eye",
        "rand",
        "randn",
        "randint",
        "randperm",
        "tensor",
        "as_tensor",
        "scalar_tensor",
        "empty_strided",
    }
)
# Tensor methods that copy to the host but dispatch nothing on the CPU (``.cpu()`` of a CPU tensor is itself).
HOST_COPIES = (torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu)


class DispatchCounter(TorchDispatchMode):
    """Counts dispatched ops, host reads (by site), tensor literals and host draws; see the module doc for
    the rules.

        with DispatchCounter() as counter:
            model(x)
        counter.tally.total_host_reads
    """

    def __init__(self):
        super().__init__()
        self.tally = Tally()
        self._host: dict[int, weakref.ref] = {}  # id -> tensor, for host tensors (few: seeds and the like)
        self._host_factory = 0  # > 0 while a factory without device= runs: what it makes is a host tensor
        self._copied: weakref.ref | None = (
            None  # the last tensor .cpu() returned: its .numpy() is the same read
        )
        self._calls = _PythonCalls(self)

    # ---- host / device bookkeeping ---------------------------------------------------------------------
    def is_host(self, tensor: torch.Tensor) -> bool:
        ref = self._host.get(id(tensor))
        return ref is not None and ref() is tensor

    def _mark_host(self, outputs) -> None:
        for out in tree_flatten(outputs)[0]:
            if isinstance(out, torch.Tensor):
                self._host[id(out)] = weakref.ref(out)

    def _host_op(self, tensors: list, kwargs: dict) -> bool:
        """An op computes a host tensor when all its tensor inputs are host tensors, or, with none, when it
        runs inside a factory called without ``device=`` or draws from a CPU generator."""
        if self._host_factory:
            return True
        if tensors:
            return all(self.is_host(t) for t in tensors)
        generator = kwargs.get("generator")
        return generator is not None and generator.device.type == "cpu"

    def _record(self, table: Counter) -> None:
        site, stack = call_site()
        table[site] += 1
        self.tally.stacks.setdefault(site, stack)

    def _host_copy(self, tensor: torch.Tensor, method, out) -> None:
        """``.tolist()`` / ``.numpy()`` / ``.cpu()`` of a device tensor is a host read (once per chain)."""
        same_read = self._copied is not None and self._copied() is tensor
        if not same_read and not self.is_host(tensor):
            self._record(self.tally.host_reads)
        if method is torch.Tensor.cpu and isinstance(out, torch.Tensor):
            self._copied = weakref.ref(out)

    # ---- the modes -----------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _op_name(func)
        self.tally.ops[name] += 1
        tensors = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
        host = self._host_op(tensors, kwargs)
        if not host and _syncs(name, args, kwargs):
            self._record(self.tally.host_reads)
        if name == "aten.lift_fresh" and not host:
            self._record(self.tally.literals)
        generator = kwargs.get("generator")
        if generator is not None and generator.device.type == "cpu":
            self._record(self.tally.host_draws)
        out = func(*args, **kwargs)
        if host:
            self._mark_host(out)
        return out

    def __enter__(self):
        self._calls.__enter__()  # outside the dispatch mode: it sees the Python calls first
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._calls.__exit__(*exc)


class _PythonCalls(TorchFunctionMode):
    """The Python-level half of ``DispatchCounter``: which factories got no ``device=``, and host copies."""

    def __init__(self, counter: DispatchCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        factory = (
            name in FACTORIES
            and getattr(torch, name, None) is func
            and kwargs.get("device") is None
            and not any(isinstance(a, torch.Tensor) for a in args)
        )  # as_tensor(t) keeps t's device
        self.counter._host_factory += factory
        try:
            out = func(*args, **kwargs)
        finally:
            self.counter._host_factory -= factory
        if func in HOST_COPIES and args and isinstance(args[0], torch.Tensor):
            self.counter._host_copy(args[0], func, out)
        return out


# ---- the cases -------------------------------------------------------------------------------------------
# (preset, case name, pipeline kwargs). LANTERN settings as bench_speculative's (the issue measured these).
CASES = [
    ("shapes-c2i", "ar", {"decoding": "ar"}),
    ("shapes-c2i", "speculative", {"decoding": "speculative"}),
    ("shapes-c2i", "lantern k8 d0.25", {"decoding": "lantern", "lantern_k": 8, "lantern_delta": 0.25}),
    (
        "shapes-c2i",
        "lantern++ k8 l5",
        {"decoding": "lantern", "lantern_k": 8, "lantern_delta": 1.0, "lantern_lambda": 5.0},
    ),
    ("shapes-c2i", "dd1", {"decoding": "dd1"}),
    ("shapes-c2i", "dd2", {"decoding": "dd2"}),
    ("shapes-c2i-continuous", "ar", {"decoding": "ar"}),
    ("shapes-c2i-continuous", "continuous_speculative", {"decoding": "continuous_speculative"}),
    ("shapes-c2i-bridge", "ar", {"decoding": "ar"}),
    # No shipped continuous preset has a draft model: the tiny random one runs CSpD's code path.
    ("test-tiny-continuous", "continuous_speculative", {"decoding": "continuous_speculative"}),
]

# Issue 21's targets: kind -> (what is checked, the check on a result row).
TARGETS = {
    "ar": ("AR: <= 2 host reads per call", lambda row: row["host_reads_per_call"] <= 2),
    "speculative": (
        "speculative/LANTERN: <= 1 host read per round (per call: <= rounds + 2, the 2 AR may spend per call)",
        lambda row: row["host_reads_per_call"] <= row["rounds"] + 2,
    ),
    "dd": ("DD: <= 1 host read per call", lambda row: row["host_reads_per_call"] <= 1),
}


def target_kind(preset: str, kwargs: dict) -> str | None:
    decoding = kwargs["decoding"]
    if preset != "shapes-c2i":
        return None  # the issue sets targets for the discrete strategies
    if decoding.startswith("dd"):
        return "dd"
    return "ar" if decoding == "ar" else "speculative"


def row_key(preset: str, case: str, batch: int) -> str:
    return f"{preset} | {case} | b{batch}"


def count_call(pipe, batch: int, kwargs: dict) -> tuple[Tally, dict, float]:
    """One warm-up call, then one counted call: (tally, the call's stats, counted call seconds)."""

    def call():
        generators = [torch.Generator().manual_seed(1000 + i) for i in range(batch)]
        labels = [i % pipe.generator.config.num_classes for i in range(batch)]
        return pipe(class_labels=labels, generator=generators, output_type="np", **kwargs)

    call()
    start = time.perf_counter()
    with DispatchCounter() as counter:
        out = call()
    return counter.tally, out.stats, time.perf_counter() - start


def summarise(tally: Tally, stats: dict, tokens: int, kwargs: dict, seconds: float, top: int = 8) -> dict:
    speculative = kwargs["decoding"] in ("speculative", "lantern", "continuous_speculative")
    rounds = stats["forwards"] - 1 if speculative else None  # the prefill, then one verify per round
    reads, ops = tally.total_host_reads, tally.total_ops
    return {
        "tokens_per_image": tokens,
        "rounds": rounds,
        "ops_per_call": ops,
        "ops_per_token": round(ops / tokens, 1),
        "host_reads_per_call": reads,
        "host_reads_per_token": round(reads / tokens, 2),
        "host_reads_per_round": round(reads / rounds, 2) if rounds else None,
        "tensor_literals_per_call": tally.total_literals,
        "host_draws_per_token": round(tally.total_host_draws / tokens, 2),
        "counted_call_s": round(seconds, 2),
        "host_read_sites": [
            {"count": n, "site": site, "stack": tally.stacks[site]}
            for site, n in tally.host_reads.most_common(top)
        ],
        "literal_sites": [{"count": n, "site": site} for site, n in tally.literals.most_common(top)],
        "host_draw_sites": [{"count": n, "site": site} for site, n in tally.host_draws.most_common(top)],
        "top_ops": dict(tally.ops.most_common(10)),
    }


def measure(cases, batches: list[int]) -> dict:
    rows, notes = {}, []
    for preset in dict.fromkeys(p for p, _, _ in cases):
        pipe, note = load_pipeline_with(preset, device="cpu", compile=False)
        if note:
            notes.append(f"{preset}: {note}")
        tokens = pipe.tokenizer.grid_size**2
        for _, case, kwargs in [c for c in cases if c[0] == preset]:
            if kwargs["decoding"] not in pipe.decoding_strategies:
                notes.append(f"{preset} {case}: not available (strategies: {pipe.decoding_strategies})")
                print(f"skip {preset} {case}: not available for this preset")
                continue
            for batch in batches:
                tally, stats, seconds = count_call(pipe, batch, kwargs)
                row = {
                    "preset": preset,
                    "case": case,
                    "batch": batch,
                    "kwargs": kwargs,
                    "target": target_kind(preset, kwargs),
                    **summarise(tally, stats, tokens, kwargs, seconds),
                }
                rows[row_key(preset, case, batch)] = row
                print(
                    f"{row_key(preset, case, batch):55s} ops/token {row['ops_per_token']:8.1f}  host reads/call "
                    f"{row['host_reads_per_call']:6d}  /token {row['host_reads_per_token']:6.2f}  /round "
                    f"{cell(row, 'host_reads_per_round', '.2f')}  ({seconds:.1f} s)",
                    flush=True,
                )
    return {"rows": rows, "notes": notes}


# ---- the table ------------------------------------------------------------------------------------------------
def verdict(row: dict) -> str:
    if row.get("target") is None:
        return ""
    return "PASS" if TARGETS[row["target"]][1](row) else "FAIL"


COLUMNS = (  # (heading, row field, format)
    ("reads/call", "host_reads_per_call", "d"),
    ("reads/token", "host_reads_per_token", ".2f"),
    ("reads/round", "host_reads_per_round", ".2f"),
    ("ops/token", "ops_per_token", ".0f"),
    ("literals/call", "tensor_literals_per_call", "d"),
    ("draws/token", "host_draws_per_token", ".1f"),
)


def cell(row: dict | None, key: str, spec: str) -> str:
    if row is None or row.get(key) is None:
        return "-"
    return format(row[key], spec)


def print_table(labels: dict) -> None:
    """One line per case; each column holds every label's value, 'before / after' in file order."""
    names = list(labels)
    keys = list(dict.fromkeys(k for name in names for k in labels[name]["rows"]))
    print(f"\ncolumns show {' / '.join(names)}")
    print("targets (issue 21): " + "; ".join(text for text, _ in TARGETS.values()))
    headings = [h for h, _, _ in COLUMNS] + ["target"]
    width = max(max(map(len, headings)) + 2, 8 * len(names) + 2)
    print(f"{'case':52s}" + "".join(f"{h:>{width}s}" for h in headings))
    for key in keys:
        rows = [labels[name]["rows"].get(key) for name in names]
        values = [" / ".join(cell(r, field, spec) for r in rows) for _, field, spec in COLUMNS]
        values.append(" / ".join(verdict(r) if r else "-" for r in rows))
        print(f"{key:52s}" + "".join(f"{v:>{width}s}" for v in values))
    last = names[-1]
    print(f"\ntop host-read sites per call, label {last!r} (innermost arstudio frame):")
    for key, row in labels[last]["rows"].items():
        if row["host_read_sites"]:
            print(f"  {key}")
            for site in row["host_read_sites"][:6]:
                print(f"    {site['count']:5d}  {site['site']}")


def save(label: str, result: dict) -> dict:
    """Write this label's results into the results file, keeping the other labels; return all labels."""
    data = json.loads(RESULT_FILE.read_text()) if RESULT_FILE.is_file() else {"benchmark": "dispatch"}
    labels = data.setdefault("labels", {})
    labels[label] = result
    RESULTS.mkdir(exist_ok=True)
    RESULT_FILE.write_text(json.dumps(data, indent=2) + "\n")
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="name of this run in the results, e.g. before / after")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--cases", nargs="+", help="only cases whose 'preset | case' contains one of these")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    cases = [c for c in CASES if not args.cases or any(s in f"{c[0]} | {c[1]}" for s in args.cases)]
    if not cases:
        parser.error(f"--cases {args.cases} matches none of {[f'{p} | {c}' for p, c, _ in CASES]}")
    if any(b < 1 for b in args.batches):
        parser.error(f"--batches {args.batches}: each must be >= 1")
    torch.set_num_threads(args.threads)
    info = {
        "command": reproduce_command(),
        "commit": git_commit(),
        "arstudio": str(ARSTUDIO_CHECKOUT),
        "src_commit": git_commit("src", ARSTUDIO_CHECKOUT),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__,
        "cpu_pressure_start": cpu_pressure(),
    }
    print(
        f"# dispatch counts, label {args.label!r}, commit {info['commit']} (arstudio from {ARSTUDIO_CHECKOUT}, "
        f"src/ at {info['src_commit']}), "
        f"torch {info['torch']}"
    )
    print(f"# reproduce: {info['command']}\n# {info['cpu_pressure_start']}")
    with torch.no_grad():
        info.update(measure(cases, args.batches))
    info["cpu_pressure_end"] = cpu_pressure()
    labels = save(args.label, info)
    print_table(labels)
    print(f"\n# results written to {RESULT_FILE} (label {args.label!r})")


if __name__ == "__main__":
    main()

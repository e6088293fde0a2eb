"""Compiled decoding: the per-token computations of a pipeline's models run through ``torch.compile``.

What is compiled is what a decoding loop calls once per token or round, each with static shapes (the
loops keep positions on the device and caches at a fixed length, see ``generators/backbone.py``):
the generator's ``step`` (plain decoding steps and the speculative verify forward, one graph per shape),
the drafter's ``step``, a distilled model's ``forward`` and a continuous head's ``forward`` (its
sampling steps). Prefill stays eager: it runs once per call at a length of its own.

On CUDA the mode is "reduce-overhead" (CUDA graphs: one launch per step instead of hundreds, the lever on
a GPU where a small model's step is launch latency); on the CPU, inductor's default mode. The compiled
function replaces the method on the *instance*, so weights, state dicts and ``save_pretrained`` are
untouched.
"""

from __future__ import annotations

import time
import warnings

import torch

COMPILE_CHOICES = (False, True, "auto")


def check_compile(value) -> bool | str:
    """``value`` if allowed (False, True or "auto"), else a one-line error naming it."""
    if not (value is True or value is False or (isinstance(value, str) and value == "auto")):
        raise ValueError(f"compile={value!r} is not allowed: use one of {COMPILE_CHOICES}")
    return value


def resolve_compile(value, device: torch.device) -> bool:
    """Whether to compile: "auto" compiles on CUDA only. On this project's CPU workloads compiling won
    for the transformer step but costs ~30 s per model and shape up front, more than a studio session's
    first images take, so the CPU default stays eager (measured: see docs/gpu.md)."""
    check_compile(value)
    return device.type == "cuda" if value == "auto" else bool(value)


class CompiledCall:
    """A compiled stand-in for one bound method, with the eager one kept as fallback and reference.

    ``strict`` (compile=True): a compile failure is an error. Not strict ("auto"): it warns once and runs
    eagerly from then on. The first call of each input signature (shapes, dtypes) is when compiling
    happens; its time is added to ``compile_seconds``.
    """

    static_shapes = True  # see ``is_compiled``

    def __init__(self, name: str, eager, strict: bool, device: torch.device):
        self.name, self.eager, self.strict = name, eager, strict
        self.cuda_graphs = device.type == "cuda"
        mode = "reduce-overhead" if self.cuda_graphs else None
        self.compiled = torch.compile(eager, mode=mode, fullgraph=True, dynamic=False)
        self.failed = False
        self.compile_seconds = 0.0
        self._seen: set[tuple] = set()

    def _signature(self, args, kwargs) -> tuple:
        values = [*args, *kwargs.values()]
        return tuple((tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else type(v) for v in values)

    def __call__(self, *args, **kwargs):
        if self.failed:
            return self.eager(*args, **kwargs)
        kwargs.pop("kv_len", None)  # an eager-only hint: a compiled step keeps its static shapes
        signature = self._signature(args, kwargs)
        first = signature not in self._seen
        started = time.perf_counter()
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as error:  # inductor/dynamo raise many types; the message says which
            if self.strict:
                raise RuntimeError(
                    f"compile=True: compiling {self.name} failed ({type(error).__name__}: {error}); "
                    'use compile="auto" to fall back to eager decoding'
                ) from error
            warnings.warn(
                f"compiling {self.name} failed, decoding eagerly instead ({type(error).__name__}: {error})",
                stacklevel=2,
            )
            self.failed = True
            return self.eager(*args, **kwargs)
        if first:
            if self.cuda_graphs:
                torch.cuda.synchronize()
            self.compile_seconds += time.perf_counter() - started
            self._seen.add(signature)
        # CUDA graphs reuse their output buffers on the next replay: callers may hold outputs across steps
        # (speculative decoding keeps the verify forward's hidden states), so hand out copies.
        return _clone(out) if self.cuda_graphs else out


def _clone(out):
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, tuple):
        return tuple(_clone(o) for o in out)
    return out


def _targets(pipe) -> list[tuple[str, object, str]]:
    """(name, object, method) of every per-token computation the pipeline's models have."""
    generator = pipe.generator
    targets = [("generator.step", generator, "step")] if hasattr(generator, "step") else []
    head = getattr(generator, "head", None)
    separate_head = not getattr(generator, "step_includes_head", False)  # video's step runs its head
    fixed_rows = getattr(generator, "head_rows_fixed", True)  # MAR's head: other row counts every iteration
    if getattr(head, "kind", None) in ("diffusion", "flow") and separate_head and fixed_rows:
        targets.append(("generator.head", head, "forward"))
    drafter = getattr(pipe, "drafter", None)
    if drafter is not None and hasattr(drafter, "step"):  # a CSpD draft head has no trunk step
        targets.append(("drafter.step", drafter, "step"))
        drafter_head = getattr(drafter, "head", None)
        if getattr(drafter_head, "kind", None) in ("diffusion", "flow"):
            targets.append(("drafter.head", drafter_head, "forward"))
    for method, model in (getattr(pipe, "distilled", None) or {}).items():
        targets.append((f"{method}.forward", model, "forward"))
    return targets


def is_compiled(owner, method: str = "step") -> bool:
    """Whether ``owner``'s ``method`` runs compiled (its callers then keep shapes static: no eager-only
    ``kv_len`` cuts). A wrapper around a compiled call (a benchmark's timer) says so by the same flag."""
    return getattr(getattr(owner, method, None), "static_shapes", False)


def compile_method(owner, method: str, name: str, strict: bool = True) -> CompiledCall:
    """Compile one per-token method of a model instance in place (e.g. a bare ``ImageGenerator``'s
    ``step`` in a benchmark); the device is the owner's parameters'."""
    device = next(owner.parameters()).device
    call = CompiledCall(name, getattr(owner, method), strict, device)
    setattr(owner, method, call)  # an instance attribute: shadows the class's method
    return call


def compile_pipeline(pipe, strict: bool) -> Compilation:
    """Replace the pipeline's per-token methods by compiled ones (see the module docstring)."""
    return Compilation(
        [compile_method(owner, method, name, strict) for name, owner, method in _targets(pipe)]
    )


class Compilation:
    """What a pipeline compiled (``pipe.compilation``): its calls and the seconds spent compiling so far."""

    def __init__(self, calls: list[CompiledCall] | None = None):
        self.calls = calls or []

    @property
    def enabled(self) -> bool:
        return bool(self.calls) and not all(call.failed for call in self.calls)

    @property
    def seconds(self) -> float:
        return sum(call.compile_seconds for call in self.calls)

    def __repr__(self) -> str:
        names = ", ".join(call.name + (" (failed: eager)" if call.failed else "") for call in self.calls)
        return f"Compilation([{names}], seconds={self.seconds:.1f})"

"""Range checks of integer tensors (token ids, class labels, level ids), and the scope that skips them.

Checking that ids lie in range reads the tensor's min and max back to the host: on a GPU, a stream sync.
A pipeline call checks what the user gave on the host, before any tensor exists (``pipelines/inputs.py``),
and the ids, labels and levels its own decoding makes are in range by construction. So a pipeline runs
its stages inside ``trusted_values()``, where these checks skip the read; every other caller (a user's
``tokenizer.decode(ids)``, training, a model called directly) keeps them. A compiled graph skips them too:
a host read would break the graph (its inputs were checked by the eager call before it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_TRUSTED: ContextVar[bool] = ContextVar("arstudio_trusted_values", default=False)


@contextmanager
def trusted_values() -> Iterator[None]:
    """Inside: integer tensors handed to models are the pipeline's own (checked or made by it)."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def checks_skipped() -> bool:
    """True while compiling or inside ``trusted_values()``: range checks read nothing back."""
    return torch.compiler.is_compiling() or _TRUSTED.get()


def value_span(values: torch.Tensor) -> tuple[int, int] | None:
    """(min, max) of an integer tensor in one host read; None when it is empty or checks are skipped."""
    if values.numel() == 0 or checks_skipped():
        return None
    low, high = torch.stack([values.min(), values.max()]).tolist()
    return low, high


def check_id_range(ids: torch.Tensor, size: int, what: str = "token ids") -> None:
    """A one-line error unless every id is in 0..size-1 (one host read, none when checks are skipped)."""
    span = value_span(ids)
    if span is not None and (span[0] < 0 or span[1] >= size):
        raise ValueError(f"{what} span [{span[0]}, {span[1]}]; allowed are 0..{size - 1}")

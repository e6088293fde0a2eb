"""CPU inference fast path for ``nn.Linear``: ``x @ W^T`` against a contiguous copy of ``W^T``.

``F.linear`` on the CPU hands MKL a transposed weight, and at the few rows a decoding step carries that
costs: measured on this project's CPU (torch 2.13, one thread; ``python -m benchmarks.bench_linear``),
the shapes presets' layers take 1.3-1.55x as long at 8-16 rows as a plain matmul against a pre-transposed
copy, 1.1-1.2x at 4 and 32 rows, and about the same at 1-2 rows (where F.linear stays). A speculative verify forward carries (gamma + 1) x 2 rows per image
under guidance, so it pays most: this is the "verify costs more than a step" term of docs/speculation_cpu.md.

``PrepackedLinear`` keeps the module's parameters and state dict exactly as ``nn.Linear`` (it is the same
class with another ``forward``), and takes the fast path only where it is safe and pays: no autograd (a
training step must see the parameter itself), the CPU, not inside ``torch.compile`` (inductor packs weights
its own way). The transposed copy is remade whenever the weight changes (its storage or its in-place
version counter), so an optimiser step or ``load_state_dict`` between calls is seen. It costs one more copy
of each weight, so ``prepack_linears`` leaves large matrices alone (where MKL's transposed path is as fast
and the memory is not free).

Rounding: a matmul against the transposed copy sums in another order than ``F.linear``, so outputs differ
in the last bits, and a sampled token can differ where two logits tie to that precision; the laws sampled
are the same.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MAX_PREPACKED_NUMEL = (
    1 << 20
)  # 1M weights (4 MB in float32): every shapes-* layer, not an anchor's large ones
# At 1-2 rows the two are within ~15 % either way (2 rows: F.linear ahead), and the plain call has no
# cache to check: an AR step with guidance (2 rows per image) keeps F.linear.
MIN_PREPACKED_ROWS = 4


class PrepackedLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (
            x.numel() < MIN_PREPACKED_ROWS * self.in_features
            or torch.is_grad_enabled()
            or weight.device.type != "cpu"
            or torch.compiler.is_compiling()
        ):
            return F.linear(x, weight, self.bias)
        key = (weight.data_ptr(), weight._version, weight.dtype)
        cached = self.__dict__.get("_transposed")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_transposed"] = (key, weight.detach().t().contiguous())
        out = x @ cached[1]
        return out if self.bias is None else out + self.bias


def prepack_linears(model: nn.Module, enable: bool = True, max_numel: int = MAX_PREPACKED_NUMEL) -> int:
    """Turn ``model``'s plain ``nn.Linear`` layers of at most ``max_numel`` weights into ``PrepackedLinear``
    (or back, ``enable=False``, e.g. to time both side by side). Returns how many layers changed."""
    source, target = (nn.Linear, PrepackedLinear) if enable else (PrepackedLinear, nn.Linear)
    changed = 0
    for module in model.modules():
        if type(module) is source and module.weight.numel() <= max_numel:
            module.__class__ = target  # same parameters and state dict: only ``forward`` differs
            module.__dict__.pop("_transposed", None)
            changed += 1
    return changed

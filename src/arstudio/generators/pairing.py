"""Pairing a helper model (drafter, CSpD draft head, distilled student) with the target it was trained for.

A helper's config stores a short fingerprint of its target; loading it beside another target is a one-line
error rather than silently poor drafts. Fingerprints hash parameter names and shapes plus a few value tensors
(the embedding and the output layer), as float32 CPU copies rounded to bf16, so CPU/CUDA and fp32/bf16 copies
of one target agree; config fields are left out, so a new (defaulted) config option does not orphan every
trained helper.
"""

from __future__ import annotations

import hashlib
import weakref

import torch
from torch import nn


def stored_float32(tensor: torch.Tensor) -> torch.Tensor:
    """A detached float32 CPU copy: what pairing fingerprints and one-off solves read, so that they do not
    depend on the device or dtype a model was moved to."""
    return tensor.detach().to("cpu", torch.float32)


def weights_fingerprint(model: nn.Module, values: tuple[torch.Tensor, ...]) -> str:
    """16 hex digits over ``model``'s parameter names and shapes and the bf16-rounded ``values``."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
    for tensor in values:
        digest.update(stored_float32(tensor).to(torch.bfloat16).view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


def check_pairing(helper: nn.Module, target: nn.Module, fingerprint, mismatch: str) -> None:
    """Raise ``ValueError(mismatch.format(expected=..., found=...))`` unless ``target``'s fingerprint is the
    one in ``helper.config.target_fingerprint``. Checked once per target object: hashing a large head costs
    ~0.1 s, and pipelines check on every call."""
    checked = helper.__dict__.get("_checked_target")
    if checked is not None and checked() is target:
        return
    expected, found = helper.config.target_fingerprint, fingerprint(target)
    if expected != found:
        raise ValueError(mismatch.format(expected=repr(expected), found=repr(found)))
    # A weak reference kept outside nn.Module's attribute handling, which would adopt the target as a
    # submodule (and save its weights with the helper's).
    helper.__dict__["_checked_target"] = weakref.ref(target)

"""Weights on disk: a directory with ``config.json`` and ``model.safetensors``.

Only safetensors are read here. Official ``.pt`` checkpoints load through ``arstudio.convert`` with
``torch.load(weights_only=True)``; pickle files from users are never unpickled on this path.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, fields
from pathlib import Path

import torch
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, with a clear error for a missing file or a pickle checkpoint."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        state = load_file(str(path))
    except (SafetensorError, ValueError, OSError) as err:
        raise ValueError(
            f"{str(path)!r} is not a safetensors file ({err}). Pickle checkpoints (.pt/.pth/.bin) are not "
            "loaded here: official checkpoints go through arstudio.convert, which uses "
            "torch.load(weights_only=True)."
        ) from err
    return dequantize_int8(state)


# Storage formats of save_pretrained(dtype=...). int8 is not a compute dtype: matrices are stored as int8 with
# one float32 scale per output channel (row), everything else as float16; loading turns them back into float32.
INT8_SCALE_SUFFIX = ".int8_scale"
INT8_MIN_NUMEL = 4096  # smaller matrices (and all vectors) stay float16: they cost little and quantise worst
STORAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int8)


def quantize_int8(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: tensor (C, ...) -> (int8 values (C, ...), float32 scales (C,))."""
    flat = tensor.detach().float().reshape(tensor.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp_min(1e-12) / 127.0  # an all-zero row keeps a harmless scale
    values = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return values.view(tensor.shape), scale


def dequantize_int8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo ``quantize_int8`` for every ``name`` stored beside ``name + INT8_SCALE_SUFFIX`` (float32 out);
    other tensors pass through unchanged."""
    for key in [k for k in state if k.endswith(INT8_SCALE_SUFFIX)]:
        scale, name = state.pop(key), key[: -len(INT8_SCALE_SUFFIX)]
        values = state[name]
        state[name] = values.float() * scale.float().view(-1, *[1] * (values.ndim - 1))
    return state


def storage_state(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """``model``'s state dict on the CPU as it is stored: floating *parameters* cast to ``dtype`` (int8: see
    ``quantize_int8``); buffers (normalisation statistics, quantiser bin edges) keep their dtype, since
    they are small and a rounded bin edge would move token ids."""
    if dtype is not None and dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype={dtype} is not allowed; use one of {STORAGE_DTYPES} or None")
    parameters = {name for name, _ in model.named_parameters()}
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        if dtype is None or name not in parameters or not tensor.is_floating_point():
            state[name] = tensor
        elif dtype == torch.int8 and tensor.ndim >= 2 and tensor.numel() >= INT8_MIN_NUMEL:
            state[name], state[name + INT8_SCALE_SUFFIX] = quantize_int8(tensor)
        else:
            state[name] = tensor.to(torch.float16 if dtype == torch.int8 else dtype)
    return state


def check_state_dict(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    source: str = "checkpoint",
    allow_missing: tuple[str, ...] = (),
) -> None:
    """Raise if ``state`` does not match ``model`` key for key and shape for shape (``allow_missing``: keys
    that may be absent and keep the model's own values, e.g. a parameter added since a warm start's run).

    ``load_state_dict(strict=True)`` would also refuse, but its message buries the few names that matter.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state) - set(allow_missing))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: {tuple(state[k].shape)} in {source}, model wants {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}")
    if wrong:
        problems.append(f"wrong shapes ({len(wrong)}): {'; '.join(wrong[:8])}")
    if problems:
        raise ValueError(f"{source} does not fit {type(model).__name__}: " + " | ".join(problems))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so a crash never leaves half a file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes files owner-only; outputs and shipped weights are for everyone
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_pretrained(model: nn.Module, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Save ``model.config`` (a dataclass) as config.json and its weights as safetensors.

    Args:
        dtype: optional storage dtype for floating parameters: float16 halves shipped files, int8 stores
            matrices with per-channel scales (see ``storage_state``). Loading gives float32 either way.
    """
    from safetensors.torch import save

    directory = Path(directory)
    config = {"class": type(model).__name__, **asdict(model.config)}
    atomic_write_bytes(directory / WEIGHTS_NAME, save(storage_state(model, dtype)))
    atomic_write_bytes(directory / CONFIG_NAME, json.dumps(config, indent=2).encode())
    return directory


def read_config(directory: str | Path, config_cls, expected_class: str):
    """Build ``config_cls`` from a directory's config.json, refusing configs of another model class."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {str(directory)!r}")
    raw = json.loads(path.read_text())
    found = raw.pop("class", None)
    if found != expected_class:
        raise ValueError(f"{str(path)!r} describes a {found!r}, expected a {expected_class!r}")
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{str(path)!r} has unknown config fields {unknown}; allowed are {sorted(known)}")
    for key, value in raw.items():  # JSON turns tuples into lists; configs are frozen dataclasses of tuples
        if isinstance(value, list):
            raw[key] = tuple(value)
    return config_cls(**raw)


def load_weights_into(
    model: nn.Module, directory: str | Path, allow_missing: tuple[str, ...] = ()
) -> nn.Module:
    """Load ``directory/model.safetensors`` into ``model`` after checking every key and shape."""
    path = Path(directory) / WEIGHTS_NAME
    state = load_safetensors(path)
    check_state_dict(model, state, source=str(path), allow_missing=allow_missing)
    reference = model.state_dict()
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()}, strict=not allow_missing)
    return model


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for modules whose ``config`` is a frozen dataclass."""

    config_class: type

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        return save_pretrained(self, directory, dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path):
        config = read_config(directory, cls.config_class, cls.__name__)
        return load_weights_into(cls(config), directory).eval()

"""Reading official checkpoint files safely, and loading them into our modules in bounded memory.

Safety: pickle files are read with ``torch.load(weights_only=True)`` and only ``argparse.Namespace`` added to
its allowlist (LlamaGen saves its training args; a Namespace is a plain attribute bag, so allowing it lets no
code run). Anything else a pickle asks for is refused before it is built. Every error is one line naming the
file, what was expected and what was found.

Memory: a 3B-parameter checkpoint is 12 GB in fp32. ``torch.load(mmap=True)`` maps the file instead of
reading it, the model is built with its parameters on the meta device (no memory, no random init), and each
tensor is cast to the target dtype and device on its own and assigned in place. The only full copy in
process memory is the model itself; the mapped file is page cache the kernel can drop.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import pickle
import re
from collections import ChainMap
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from arstudio.io import check_state_dict

# Where official samplers look for the weights inside a checkpoint, in their order.
NESTINGS = ("model", "module", "state_dict")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _unpickling_error(path: Path, err: pickle.UnpicklingError) -> ValueError:
    found = re.search(r"GLOBAL (\S+)", str(err))
    if found:  # a class or function the allowlist refuses: building it could run code
        return ValueError(
            f"{str(path)!r} holds Python objects ({found.group(1)}) that torch.load(weights_only=True) "
            "refuses to unpickle, so it is not loaded: unpickling them could run arbitrary code. Expected only "
            "tensors, plain containers and argparse namespaces (official checkpoints hold nothing else); if you "
            "trust this file, re-save its state dict alone (torch.save(ckpt['model'], ...)) or as safetensors."
        )
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)\n", str(err) + "\n")
    reason = detail.group(1).strip() if detail else _first_line(err)
    return ValueError(f"{str(path)!r} is not a PyTorch checkpoint (unpickling failed: {reason})")


def torch_load(path: Path):
    """``torch.load(weights_only=True, mmap=True)`` (plain reading for pre-1.6 files, which cannot be
    mapped), with ``argparse.Namespace`` allowed; one-line errors for every way a file can be bad."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap can only be used" not in str(err):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _unpickling_error(path, err) from err
    except EOFError as err:
        raise ValueError(f"{str(path)!r} is not a PyTorch checkpoint (empty or truncated file)") from err
    except RuntimeError as err:
        if "zip archive" in str(err) or "PytorchStreamReader" in str(err):
            size = path.stat().st_size
            raise ValueError(
                f"{str(path)!r} is truncated or corrupt ({size:,} bytes; the zip archive torch.save writes cannot "
                f"be read: {_first_line(err).split('. ')[0]}); expected a complete PyTorch checkpoint: download "
                "it again"
            ) from err
        raise ValueError(
            f"{str(path)!r} is not a PyTorch checkpoint (RuntimeError: {_first_line(err)})"
        ) from err
    except Exception as err:  # torch.load fails on junk with KeyError, ValueError, ...
        raise ValueError(
            f"{str(path)!r} is not a PyTorch checkpoint ({type(err).__name__}: {_first_line(err)})"
        ) from err


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


class SafetensorsFile(Mapping):
    """A ``.safetensors`` file as a read-only mapping name -> tensor, read one tensor per lookup (bounded
    memory, like a mapped ``.pt``); ``shapes`` without reading any data."""

    def __init__(self, path: Path):
        from safetensors import SafetensorError, safe_open

        try:
            self._file = safe_open(str(path), framework="pt")
            self.shapes = {k: torch.Size(self._file.get_slice(k).get_shape()) for k in self._file.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(
                f"{str(path)!r} is not a readable safetensors file ({_first_line(err)}); expected a complete "
                "file: download it again"
            ) from err

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.shapes:
            raise KeyError(key)
        return self._file.get_tensor(key)

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def load_official_checkpoint(path: str | Path, use_ema: bool | None = False) -> Mapping[str, torch.Tensor]:
    """Read an official ``.pt`` checkpoint (or a ``.safetensors`` file) as a flat state dict on CPU, its
    tensors mapped from the file rather than read into memory.

    Nestings are unwrapped the way LlamaGen's samplers do: ``"model"``, then ``"module"``, then
    ``"state_dict"``, else the file itself when it is already a flat state dict (FSDP exports).

    Args:
        use_ema: take ``"ema"`` (the EMA weights some training runs save) instead of ``"model"``; an error
            if the checkpoint has none. LlamaGen's samplers use ``"model"``, hence the default. None: ``"ema"``
            when the file has it, else as False (Distilled Decoding's samplers run with ``--ema``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        return SafetensorsFile(path)
    obj = torch_load(path)
    trail = []
    if use_ema is None:
        use_ema = isinstance(obj, dict) and "ema" in obj
    if use_ema:
        if not isinstance(obj, dict) or "ema" not in obj:
            found = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{str(path)!r} has no 'ema' weights (top level: {found})")
        trail.append("ema")
        obj = obj["ema"]
    for _ in range(4):  # e.g. {"state_dict": {"model": {...}}}
        if _is_state_dict(obj):
            return dict(obj)
        key = next((k for k in NESTINGS if k in obj), None) if isinstance(obj, dict) else None
        if key is None:
            break
        trail.append(key)
        obj = obj[key]
    where = "".join(f"[{k!r}]" for k in trail) or "the top level"
    found = sorted(map(str, obj))[:12] if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(
        f"no state dict found in {str(path)!r}: at {where} it holds {found}; expected the weights under "
        f"one of {list(NESTINGS)} or a flat dict of tensors"
    )


def shapes_of(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Size]:
    """Every tensor's shape, without reading data from a lazily read file."""
    if isinstance(state, SafetensorsFile):
        return dict(state.shapes)
    if isinstance(state, ChainMap):  # e.g. a file plus tensors a converter adds (zero biases)
        return {k: v for part in reversed(state.maps) for k, v in shapes_of(part).items()}
    return {k: v.shape for k, v in state.items()}


@contextlib.contextmanager
def parameters_on_meta():
    """Build modules with every parameter on the meta device: no memory and no init work (the random init
    of a 3B model takes minutes and 12 GB, only to be overwritten). Buffers are built for real: they are
    computed (RoPE tables), not loaded."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _all_finite(tensor: torch.Tensor, chunk: int = 1 << 22) -> bool:
    """No NaN or inf in ``tensor``, checked in chunks: a temporary as large as a whole weight (isfinite's bool
    mask, an fp32 upcast) would be freed between weights the model keeps and stay resident as heap fragments
    (measured: +50% over the bf16 model for GPT-L). A chunk's sum is NaN/inf iff one of its values is
    (weights never sum past 1e38)."""
    return all(math.isfinite(part.sum(dtype=torch.float32)) for part in tensor.reshape(-1).split(chunk))


def materialise(
    build: Callable[[], nn.Module],
    state: Mapping[str, torch.Tensor],
    rename: Mapping[str, str],
    source: str,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """``build()`` with its parameters on meta, then filled from ``state``, one tensor at a time.

    Args:
        rename: our key -> the key in ``state`` (every key of the model; extra keys in state are ignored
            only if the caller left them out on purpose, so a stray key must be in ``rename`` to be refused).
        dtype: floating tensors are cast to it (None: the model's own dtype, fp32); ``device`` likewise.
    Raises:
        ValueError: missing, unexpected or mis-shaped keys (named), or non-finite values (a corrupt file).
    """
    with parameters_on_meta():
        model = build()
    shapes = shapes_of(state)
    stand_ins = {ours: torch.empty(shapes[theirs], device="meta") for ours, theirs in rename.items()}
    check_state_dict(model, stand_ins, source=source)
    reference = model.state_dict()
    loaded = {}
    for ours, theirs in rename.items():
        tensor = state[theirs]
        target = dtype if dtype is not None and tensor.is_floating_point() else reference[ours].dtype
        # copy=True: the parameter owns its memory, never a page of the mapped file
        loaded[ours] = tensor.to(device=device or "cpu", dtype=target, copy=True)
        if loaded[ours].is_floating_point() and not _all_finite(loaded[ours]):
            raise ValueError(
                f"{source} is corrupt: tensor {theirs!r} {tuple(tensor.shape)} holds NaN or infinite values; "
                "expected finite weights: download the file again"
            )
    model.load_state_dict(loaded, assign=True)
    if device is not None:
        model.to(device)  # the computed buffers
    return model.eval()


_SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def write_safetensors(
    tensors: Mapping[str, torch.Tensor], path: Path, dtype: torch.dtype | None = None
) -> None:
    """Write a safetensors file one tensor at a time (``safetensors.torch.save`` first builds the whole file in
    memory: a second full copy of a 3B model). Floating tensors are cast to ``dtype`` if given. Written
    through a temporary file and renamed, so a crash never leaves half a file at ``path``."""
    import json
    import os
    import struct

    def stored(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        return tensor.to("cpu").contiguous()

    header, offset = {}, 0
    for name, tensor in tensors.items():
        size = tensor.numel() * (
            tensor.element_size()
            if dtype is None or not tensor.is_floating_point()
            else torch.empty((), dtype=dtype).element_size()
        )
        kind = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[kind],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(struct.pack("<Q", len(blob)) + blob)
            for tensor in tensors.values():
                data = stored(tensor)
                # raw bytes through a uint8 view (numpy has no bfloat16)
                handle.write(data.reshape(-1).view(torch.uint8).numpy().data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_pretrained_bounded(
    model: nn.Module, directory: str | Path, dtype: torch.dtype | None = None
) -> Path:
    """``model.save_pretrained(directory, dtype)`` (the same config.json + model.safetensors) with the weights
    streamed to disk, for models too big to serialise twice in memory."""
    import json
    from dataclasses import asdict

    from arstudio.io import CONFIG_NAME, WEIGHTS_NAME, atomic_write_bytes

    directory = Path(directory)
    write_safetensors(model.state_dict(), directory / WEIGHTS_NAME, dtype)
    config = {"class": type(model).__name__, **asdict(model.config)}
    atomic_write_bytes(directory / CONFIG_NAME, json.dumps(config, indent=2).encode())
    return directory


def load_pretrained_bounded(
    cls, directory: str | Path, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> nn.Module:
    """``cls.from_pretrained(directory)`` (our config.json + model.safetensors) in bounded memory and straight in
    ``dtype`` on ``device``: ``from_pretrained`` builds and randomly initialises the fp32 model, then reads the
    whole file (a 3B converted cache: 12 GB + 6 GB and minutes of init); this reads one tensor at a time."""
    from arstudio.io import WEIGHTS_NAME, read_config

    config = read_config(directory, cls.config_class, cls.__name__)
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    state = SafetensorsFile(path)
    return materialise(lambda: cls(config), state, {k: k for k in state}, repr(str(path)), dtype, device)

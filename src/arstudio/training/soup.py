"""Model soups: the uniform weight average of runs fine-tuned from one starting model (Wortsman et al.,
"Model soups", 2022).

Why it is here: DD2 runs that start from the same DD1 and differ only in their seed land 0.05-0.09 apart in
verifier accuracy (docs/training.md), so picking the best run picks noise. The average of three seeds'
weights scored within 0.01 of the best seed's verifier accuracy on two probes, with a typical run's
FD-shapes (the best seed's was the worst). Nothing here is specific to DD2: it works on saved folders
(config.json + model.safetensors) of any model class.

What it checks: the same model class and config in every run (a DD model's config carries its teacher and
tokenizer fingerprints) and the same tensor names and shapes. What it cannot check: that the runs share a
starting point. Averaging independently initialised runs gives a broken model; the soup is only meant for
runs started from one model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from arstudio.io import CONFIG_NAME, WEIGHTS_NAME, atomic_write_bytes, load_safetensors


def average_runs(folders: list[str | Path], out: str | Path) -> Path:
    """Write the mean of ``folders``' weights (in float32, stored in the first run's dtypes) with the first
    run's config to ``out``; returns ``out``."""
    from safetensors.torch import save

    folders, out = [Path(f) for f in folders], Path(out)
    if len(folders) < 2:
        raise ValueError(f"a soup needs at least 2 runs to average, got {len(folders)}")
    if out.resolve() in {f.resolve() for f in folders}:
        raise ValueError(f"out={str(out)!r} is one of the runs; write the soup to a new folder")
    configs = [_read_config(folder) for folder in folders]
    for folder, config in zip(folders[1:], configs[1:], strict=True):
        differing = sorted(k for k in configs[0].keys() | config.keys() if configs[0].get(k) != config.get(k))
        if differing:
            raise ValueError(
                f"{str(folder)!r} differs from {str(folders[0])!r} in config fields {differing}: only runs of "
                "one model (same class and config) can be averaged"
            )
    states = [load_safetensors(folder / WEIGHTS_NAME) for folder in folders]
    first = states[0]
    first_shapes = {k: tuple(v.shape) for k, v in first.items()}
    for folder, state in zip(folders[1:], states[1:], strict=True):
        if {k: tuple(v.shape) for k, v in state.items()} != first_shapes:
            raise ValueError(f"{str(folder)!r} holds other tensor names or shapes than {str(folders[0])!r}")
    soup = {}
    for name, tensor in first.items():
        if not tensor.is_floating_point():  # counters and index buffers cannot be averaged
            if any(not torch.equal(state[name], tensor) for state in states[1:]):
                raise ValueError(f"non-float tensor {name!r} differs between runs; it cannot be averaged")
            soup[name] = tensor
            continue
        mean = torch.stack([state[name].float() for state in states]).mean(dim=0)
        soup[name] = mean.to(tensor.dtype).contiguous()
    atomic_write_bytes(out / WEIGHTS_NAME, save(soup))
    atomic_write_bytes(out / CONFIG_NAME, json.dumps(configs[0], indent=2).encode())
    return out


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {str(folder)!r}: not a saved model folder")
    return json.loads(path.read_text())

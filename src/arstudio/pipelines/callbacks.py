"""Step callbacks with diffusers' contract, turned into the samplers' per-step callback.

diffusers: ``callback_on_step_end(pipe, step, timestep, callback_kwargs) -> dict``, where callback_kwargs
holds the tensors named in ``callback_on_step_end_tensor_inputs``; a returned tensor replaces the running
one, and setting ``pipe.interrupt = True`` (or ``pipe._interrupt``) stops sampling. Here ``step`` counts
the callback's calls, ``timestep`` is the index of the newest decided token (the frame, for video), and
the one tensor is the tokens (or latents) decided so far, (B, timestep + 1, ...).

The samplers' own form, ``fn(step, num_steps, tokens_so_far)`` returning False to stop, is still taken as
``callback=`` for one release, with a DeprecationWarning.
"""

from __future__ import annotations

import inspect
import itertools
import warnings

from arstudio.decoding.types import StepCallback

CONTRACT = "fn(pipe, step, timestep, callback_kwargs) -> dict (diffusers' callback_on_step_end)"


def check_step_end_callback(fn, tensor_inputs, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The tensor names the callback gets; refuses, before any work, a callable of another contract and
    names the pipeline does not have."""
    names = allowed if tensor_inputs is None else tuple(tensor_inputs)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(
            f"callback_on_step_end_tensor_inputs has {unknown}; this pipeline offers {list(allowed)}"
        )
    if fn is None:
        return names
    if not callable(fn):
        raise ValueError(f"callback_on_step_end={fn!r} is not callable; it must be {CONTRACT}")
    try:
        inspect.signature(fn).bind(None, 0, 0, {})
    except TypeError:
        raise ValueError(
            f"callback_on_step_end {getattr(fn, '__name__', fn)!r} takes {inspect.signature(fn)}; it must be "
            f"{CONTRACT}. A fn(step, num_steps, tokens) callback goes to callback= (deprecated)."
        ) from None
    except ValueError:  # no signature to read (some builtins): trust it
        pass
    return names


def step_callback(pipe, fn, names: tuple[str, ...], legacy: StepCallback | None) -> StepCallback | None:
    """The samplers' callback for one call: the diffusers-form ``fn``, or the deprecated ``legacy`` one."""
    if legacy is not None:
        if fn is not None:
            raise ValueError("pass callback_on_step_end or the deprecated callback=, not both")
        warnings.warn(
            f"callback=fn(step, num_steps, tokens) is deprecated; use callback_on_step_end={CONTRACT}",
            DeprecationWarning,
            stacklevel=5,
        )
        return legacy
    if fn is None:
        return None
    calls = itertools.count()

    def on_step(index: int, total: int, so_far):
        returned = fn(pipe, next(calls), index, dict.fromkeys(names, so_far))
        if not isinstance(returned, dict):
            raise ValueError(
                f"callback_on_step_end returned {type(returned).__name__}; it must return a dict "
                "(the callback_kwargs it was given, changed or not)"
            )
        for name in names:
            new = returned.get(name, so_far)
            if new is not so_far:  # a replaced tensor: written into the running tokens
                so_far.copy_(new)
        return False if pipe.interrupt else None

    return on_step

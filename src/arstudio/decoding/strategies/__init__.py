"""The registry of decoding strategies: one file per strategy, one line each below.

The pipeline, the studio's lists, ``render`` and the CLI all read ``STRATEGIES``; a strategy added here
shows up everywhere (see ARCHITECTURE.md, "Decoding strategies", for a worked example).
"""

from __future__ import annotations

from arstudio.decoding.strategies import (
    autoregressive,
    continuous_speculative,
    distilled,
    distilled_hybrid,
    lantern,
    mar,
    speculative,
)
from arstudio.decoding.strategies.base import (
    SAMPLING_SETTINGS,
    DecodeRequest,
    DecodingParam,
    Strategy,
)

__all__ = [
    "SAMPLING_SETTINGS",
    "STRATEGIES",
    "DecodeRequest",
    "DecodingParam",
    "Strategy",
    "check_knobs",
    "get_strategy",
    "wanted_components",
]

# The order is the studio's order.
STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        autoregressive.STRATEGY,
        speculative.STRATEGY,
        lantern.STRATEGY,
        continuous_speculative.STRATEGY,
        distilled.DD1,
        distilled_hybrid.STRATEGY,
        distilled.DD2,
        mar.STRATEGY,
    )
}


def get_strategy(name: str) -> Strategy:
    if not isinstance(name, str) or name not in STRATEGIES:
        raise ValueError(f"decoding={name!r} is unknown; allowed: {tuple(STRATEGIES)}")
    return STRATEGIES[name]


def check_knobs(strategy: Strategy, given: dict) -> dict:
    """The strategy's knobs: given values checked against their ranges, defaults for the rest. A knob of
    another strategy is an error naming the strategies it belongs to, rather than silently ignored."""
    mine = {p.name: p for p in strategy.knobs}
    for name, value in given.items():
        if value is not None and name not in mine:
            users = [s.name for s in STRATEGIES.values() if name in {k.name for k in s.knobs}]
            if not users:
                raise TypeError(f"unexpected keyword argument {name!r}")
            raise ValueError(
                f"{name}={value!r} applies to decoding in {users}, not decoding={strategy.name!r} "
                f"(its knobs: {list(mine) or 'none'})"
            )
    return {n: p.default if given.get(n) is None else p.check(given[n]) for n, p in mine.items()}


def knob_names() -> set[str]:
    """Every knob name of every strategy: the keyword arguments a pipeline call passes on to them."""
    return {p.name for s in STRATEGIES.values() for p in s.knobs}


def wanted_components(generator, tokenizer) -> set[str]:
    """The components ("drafter", "dd1", ...) some strategy could run with for these models: loading loads
    only those."""
    return {s.needs for s in STRATEGIES.values() if s.needs and s.supports(generator, tokenizer) is None}

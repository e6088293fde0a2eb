"""The strategy registry: every strategy x every sampling setting is applied or refused, never ignored."""

import pytest
import torch

import arstudio
from arstudio.decoding import DECODING_PARAMS, STRATEGIES
from arstudio.decoding.strategies import SAMPLING_SETTINGS, wanted_components

# A value for each sampling setting far enough from the presets' defaults to change a tiny model's tokens.
PROBES = {"guidance_scale": 6.0, "temperature": 0.3, "top_k": 1, "top_p": 0.05, "cfg_interval": (0.5, 1.0)}
# Knobs that make a strategy's use of the settings visible on 16 tokens: the hybrid's teacher then draws
# tokens 0..4 rather than token 4 alone.
VISIBLE = {"dd1_hybrid": {"dd_hybrid_start": 0}}


def _conditioned_head(pipe):
    """Random presets' diffusion heads start with zero modulation, so their output ignores the condition
    and guidance cannot show; give those weights values (a test-only copy of the preset's pipeline)."""
    torch.manual_seed(0)
    for model in (pipe.generator, pipe.drafter):
        if model is None:  # (a MAR preset has no draft model)
            continue
        for param in model.head.parameters():
            if not param.any():
                torch.nn.init.normal_(param, std=0.5)
    return pipe


@pytest.fixture(scope="module")
def pipes():
    return {
        "test-tiny-c2i": arstudio.load_pipeline("test-tiny-c2i", device="cpu"),
        "test-tiny-continuous": _conditioned_head(
            arstudio.load_pipeline("test-tiny-continuous", device="cpu")
        ),
        "test-tiny-mar": _conditioned_head(arstudio.load_pipeline("test-tiny-mar", device="cpu")),
    }


def _cases(pipes):
    return [(name, strategy) for name, pipe in pipes.items() for strategy in pipe.decoding_strategies]


def test_every_registered_strategy_is_covered_by_a_test_preset(pipes):
    assert {strategy for _, strategy in _cases(pipes)} == set(STRATEGIES)
    assert DECODING_PARAMS == {name: s.knobs for name, s in STRATEGIES.items()}


def _run(pipe, strategy, **sampling):
    return pipe(
        class_labels=[0, 1],
        decoding=strategy,
        generator=torch.Generator().manual_seed(5),
        output_type="np",
        **VISIBLE.get(strategy, {}),
        **sampling,
    )


_REFERENCES = {}  # (preset, strategy, guidance) -> tokens: the unprobed call, shared by the settings


def _reference(pipe, strategy, **context):
    key = (pipe.preset.name, strategy, context.get("guidance_scale"))
    if key not in _REFERENCES:
        _REFERENCES[key] = _run(pipe, strategy, **context).tokens
    return _REFERENCES[key]


@pytest.mark.parametrize("setting", SAMPLING_SETTINGS)
def test_each_sampling_setting_is_applied_or_refused(pipes, setting):
    for name, strategy in _cases(pipes):
        pipe = pipes[name]
        # cfg_interval only shows when guidance is on: the settings are probed under strong guidance
        context = {} if setting == "guidance_scale" else {"guidance_scale": PROBES["guidance_scale"]}
        probe = {**context, setting: PROBES[setting]}
        refused = pipe.sampling_conflicts(strategy, probe)
        if refused:
            assert setting in refused or set(refused) <= set(context), (name, strategy, refused)
            with pytest.raises(ValueError, match="cannot apply"):
                _run(pipe, strategy, **probe)
            continue
        probed = _run(pipe, strategy, **probe)
        reference = _reference(pipe, strategy, **context)
        assert not torch.equal(probed.tokens, reference), f"{strategy} on {name} ignores {setting}"
        recorded = probed.metadata[0][setting]
        assert recorded == (list(PROBES[setting]) if setting == "cfg_interval" else PROBES[setting])


def test_refused_settings_are_absent_from_metadata(pipes):
    pipe = pipes["test-tiny-continuous"]
    meta = pipe(class_labels=[0], decoding="continuous_speculative", output_type="np").metadata[0]
    assert {"guidance_scale", "temperature", "cfg_interval"} <= set(meta) and not {"top_k", "top_p"} & set(
        meta
    )
    with pytest.raises(ValueError, match=r"cannot apply top_k=5 \(a diffusion head denoises vectors"):
        pipe(class_labels=[0], decoding="continuous_speculative", top_k=5)
    # a neutral value is no request: it passes
    pipe(class_labels=[0], decoding="continuous_speculative", top_k=0, top_p=1.0, output_type="np")


def test_unavailable_strategy_names_itself_the_reason_and_the_alternatives(pipes):
    continuous = pipes["test-tiny-continuous"]
    with pytest.raises(ValueError) as err:
        continuous(class_labels=[0], decoding="lantern")
    message = str(err.value)
    assert "decoding='lantern' is not available for preset 'test-tiny-continuous'" in message
    assert "vector tokens" in message and "allowed: ('ar', 'continuous_speculative')" in message
    control = arstudio.load_pipeline("test-tiny-control", device="cpu")
    with pytest.raises(
        ValueError, match=r"'speculative' is not available .*control preset decodes with decoding='ar' only"
    ):
        control(class_labels=[0], decoding="speculative")
    assert control.drafter is None and control.distilled == {}  # loading asked the strategies


def test_loading_loads_what_some_strategy_supports(pipes):
    c2i, continuous = pipes["test-tiny-c2i"], pipes["test-tiny-continuous"]
    assert wanted_components(c2i.generator, c2i.tokenizer) == {"drafter", "dd1", "dd2"}
    assert wanted_components(continuous.generator, continuous.tokenizer) == {"drafter"}
    control = arstudio.load_pipeline("test-tiny-control", device="cpu")
    assert wanted_components(control.generator, control.tokenizer) == set()


def test_a_knob_of_another_strategy_or_no_strategy_is_refused(pipes):
    pipe = pipes["test-tiny-c2i"]
    with pytest.raises(
        ValueError, match=r"lantern_k=3 applies to decoding in \['lantern'\], not decoding='ar'"
    ):
        pipe(class_labels=[0], lantern_k=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'lanternk'"):
        pipe(class_labels=[0], lanternk=3)


def test_a_new_strategy_is_one_class_and_one_registry_entry(pipes, monkeypatch):
    """The worked example of ARCHITECTURE.md: greedy decoding as plain AR at top_k=1."""
    from arstudio.decoding.strategies import autoregressive
    from arstudio.decoding.strategies.base import Strategy

    class Greedy(Strategy):
        name = "greedy"

        def cannot_apply(self, generator):
            return {
                "top_k": "greedy always takes the top token",
                "top_p": "greedy always takes the top token",
            }

        def run(self, pipe, request):
            from dataclasses import replace

            params = replace(request.params, top_k=1)
            return autoregressive.STRATEGY.run(pipe, replace(request, params=params))

    monkeypatch.setitem(STRATEGIES, "greedy", Greedy())
    pipe = pipes["test-tiny-c2i"]
    assert "greedy" in pipe.decoding_strategies
    out = pipe(
        class_labels=[0], decoding="greedy", generator=torch.Generator().manual_seed(0), output_type="np"
    )
    top1 = pipe(class_labels=[0], top_k=1, generator=torch.Generator().manual_seed(0), output_type="np")
    assert torch.equal(out.tokens, top1.tokens) and "top_k" not in out.metadata[0]
    with pytest.raises(ValueError, match="greedy always takes the top token"):
        pipe(class_labels=[0], decoding="greedy", top_k=5)

"""Input fuzzing (hypothesis) over the three ways in: the pipeline call, the CLI and the render-job parser.

The property is the same everywhere: any combination of values, types and sizes either gives finite,
valid images whose recipe records exactly what was asked, or one of the documented errors (ValueError /
TypeError; the CLI's exit status 2 with one ``arstudio: error:`` line) raised by our own checks with a
one-line message naming the value. Never a traceback from inside torch or the model, never NaN pixels,
never a silently changed value.

Budget: a fixed number of examples per test (``EXAMPLES``), tiny random-init presets; under ``CI=1`` the
"ci" profile is derandomized, so CI runs the same examples every time (< 60 s in all on 2 cores).
"""

from __future__ import annotations

import math
import os
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import arstudio
from arstudio.cli import main
from arstudio.export import read_png_metadata
from arstudio.limits import MAX_IMAGES_PER_CALL
from arstudio.render import JobError, parse_job

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

EXAMPLES = {"pipeline": 150, "cli": 100, "jobs": 1000}  # fixed: the CI budget (about 30 s in all on 2 cores)
ARSTUDIO = str(Path(arstudio.__file__).parent)
DECODINGS = ("ar", "speculative", "lantern", "dd1", "continuous_speculative", "nope")
PRESETS = ("test-tiny-c2i", "test-tiny-t2i", "test-tiny-continuous", "test-tiny-bridge", "test-tiny-control")
_PIPES: dict = {}


def _pipe(name):
    if name not in _PIPES:
        _PIPES[name] = arstudio.load_pipeline(name)
    return _PIPES[name]


# ---- values: the ordinary, the edge and the hostile ------------------------------------------------------
SPECIAL_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e-300, 1e300, 5e-324, -1.0])
NUMBERS = st.one_of(st.floats(-4, 8), st.integers(-3, 9), SPECIAL_FLOATS)
ODD = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.just([1.0]), st.just({"a": 1}))
KNOB = st.one_of(SPECIAL_FLOATS, NUMBERS, ODD)  # the non-finite and extreme floats a third of the time


def _single_line(message: str) -> bool:
    return bool(message.strip()) and "\n" not in message.strip()


def _raised_by_our_checks(err: BaseException) -> bool:
    """The deepest frame is a ``raise`` statement of ours: a deliberate, worded error, not one thrown by
    torch / numpy / PIL or by Python inside a model (a bad shape, an unhashable key, a failed unpack)."""
    frame = traceback.extract_tb(err.__traceback__)[-1]
    return frame.filename.startswith(ARSTUDIO) and (frame.line or "").startswith("raise ")


def _names_a_value(message: str, kwargs: dict) -> bool:
    """The message names one of the arguments given (by name, or by the value's repr)."""

    def reprs(value) -> list[str]:
        items = list(value) if isinstance(value, (list, tuple)) else []
        return [repr(value), *(repr(item) for item in items)]

    return any(name in message or any(r in message for r in reprs(value)) for name, value in kwargs.items())


# ---- the pipeline call ---------------------------------------------------------------------------------
HOSTILE = {  # per argument: values of the wrong type, size or range (KNOB adds the generic ones)
    "prompt": st.one_of(st.lists(st.text(max_size=6), max_size=3), st.just("a b, c; d and e")),
    "class_labels": st.one_of(st.lists(st.integers(-2, 30), max_size=3), st.just([[1]]), st.just([1.0])),
    "num_images_per_prompt": st.sampled_from([-1, 0, MAX_IMAGES_PER_CALL + 1, 1.0, "2", True]),
    "top_k": st.integers(-(2**70), 2**70),
    "cfg_interval": st.one_of(
        st.tuples(NUMBERS, NUMBERS), st.tuples(NUMBERS), st.tuples(NUMBERS, NUMBERS, NUMBERS)
    ),
    "decoding": st.sampled_from(DECODINGS),
}


@st.composite
def pipeline_calls(draw):
    """A valid call of a tiny preset, then one or two of its arguments swapped for hostile values: each
    example probes a few bad values in an otherwise good call, so a check that lets one through is found."""
    name = draw(st.sampled_from(PRESETS))
    unit, positive = st.floats(0, 1), st.floats(0.05, 8)
    valid = {
        "num_images_per_prompt": st.integers(1, 3),
        "guidance_scale": st.floats(0, 8),
        "temperature": positive,
        "top_p": st.floats(0.01, 1),
        "top_k": st.integers(0, 10**6),
        "cfg_interval": st.tuples(unit, unit).map(sorted).map(tuple),
    }
    if name == "test-tiny-t2i":
        valid["prompt"] = st.sampled_from(["a red circle", "a blue square and a red circle", "zzz"])
    else:
        valid["class_labels"] = st.lists(st.integers(0, 23), min_size=1, max_size=3)
    if name in ("test-tiny-c2i", "test-tiny-t2i"):
        valid["decoding"] = st.sampled_from(["ar", "speculative", "lantern"])
        valid["draft_tokens"] = st.integers(1, 16)
    if name == "test-tiny-continuous":
        valid["num_inference_steps"] = st.integers(1, 8)
    if name == "test-tiny-control":
        valid.update(control_strength=st.floats(0, 2), control_guidance_scale=st.floats(0, 8))
    required = {"prompt", "class_labels", "num_images_per_prompt"}
    kwargs = {k: draw(v) for k, v in valid.items() if k in required or draw(st.booleans())}
    if "control_strength" in kwargs or "control_guidance_scale" in kwargs:
        kwargs["control_image"] = np.zeros((16, 16), np.uint8)
    for knob in draw(st.lists(st.sampled_from(sorted(valid)), max_size=2, unique=True)):
        kwargs[knob] = draw(st.one_of(HOSTILE.get(knob, KNOB), KNOB))
    if kwargs.get("decoding") == "lantern":
        for knob, valid in (("lantern_delta", st.floats(0, 1)), ("lantern_k", st.integers(1, 64))):
            if draw(st.booleans()):
                kwargs[knob] = draw(st.one_of(valid, valid, KNOB))
    return name, kwargs


def _check_output(pipe, kwargs: dict, out) -> None:
    """A finished call: finite uint8 images of the preset's size, and a recipe with what was asked."""
    side = pipe.tokenizer.config.resolution
    assert len(out.images) == len(out.metadata) == len(out.seeds) >= 1
    for image in out.images:
        assert image.dtype == np.uint8 and image.shape == (side, side, 3)
    assert torch.isfinite(out.tokens.float()).all() if out.tokens.is_floating_point() else True
    per_prompt = kwargs.get("num_images_per_prompt", 1)
    assert len(out.images) % per_prompt == 0
    for meta in out.metadata:
        for key in (
            "guidance_scale",
            "temperature",
            "top_k",
            "top_p",
            "draft_tokens",
            "lantern_delta",
            "control_strength",
            "control_guidance_scale",
        ):
            if kwargs.get(key) is not None and key in meta:
                assert meta[key] == kwargs[key] and math.isfinite(meta[key]), (key, meta[key], kwargs[key])
        if kwargs.get("cfg_interval") is not None:  # None: the default, like every other knob
            assert tuple(meta["cfg_interval"]) == tuple(kwargs["cfg_interval"])


@settings(max_examples=EXAMPLES["pipeline"])
@given(pipeline_calls(), st.integers(0, 2**63 - 1))
def test_fuzz_the_pipeline_call(call, seed):
    name, kwargs = call
    pipe = _pipe(name)
    try:
        out = pipe(**kwargs, generator=torch.Generator().manual_seed(seed), output_type="np")
    except (ValueError, TypeError) as err:
        assert _raised_by_our_checks(err), "".join(traceback.format_exception(err))
        assert _single_line(str(err)) and _names_a_value(str(err), kwargs), str(err)
        return
    _check_output(pipe, kwargs, out)


NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    "preset, kwargs, message",
    [
        ("test-tiny-c2i", {"guidance_scale": NAN}, "guidance_scale=nan is not allowed: use a finite number"),
        ("test-tiny-c2i", {"guidance_scale": INF}, "guidance_scale=inf is not allowed"),
        ("test-tiny-c2i", {"temperature": INF}, "temperature=inf is not allowed"),
        ("test-tiny-c2i", {"top_p": NAN}, "top_p=nan is not allowed"),
        ("test-tiny-c2i", {"cfg_interval": (0.0, NAN)}, "cfg_interval=(0.0, nan) is not allowed"),
        (
            "test-tiny-c2i",
            {"decoding": "lantern", "lantern_delta": NAN},
            "lantern_delta=nan must be a number",
        ),
        (
            "test-tiny-c2i",
            {"decoding": "speculative", "draft_tokens": INF},
            "draft_tokens=inf must be an integer",
        ),
        (
            "test-tiny-control",
            {"control_image": np.zeros((16, 16), np.uint8), "control_strength": NAN},
            "control_strength=nan is not allowed",
        ),
        (
            "test-tiny-control",
            {"control_image": np.zeros((16, 16), np.uint8), "control_guidance_scale": INF},
            "control_guidance_scale=inf is not allowed",
        ),
        ("test-tiny-video", {"guidance_scale": NAN}, "guidance_scale=nan is not allowed"),
        ("test-tiny-video", {"temperature": -INF}, "temperature=-inf is not allowed"),
        ("test-tiny-video", {"temporal_decay": INF}, "temporal_decay=inf must be"),
    ],
)
def test_non_finite_knobs_are_refused_by_the_api(preset, kwargs, message):
    with pytest.raises(ValueError) as info:
        _pipe(preset)(class_labels=[1], **kwargs)
    assert message in str(info.value) and _single_line(str(info.value))


# ---- the command line ----------------------------------------------------------------------------------
CLI_TEXT = st.one_of(
    st.sampled_from(
        [
            "nan",
            "inf",
            "-inf",
            "-1",
            "0",
            "1e309",
            "abc",
            "",
            "2.5",
            "3",
            str(2**63 - 1),
            str(2**63),
            str(2**64),
        ]
    ),
    st.integers(-5, 40).map(str),
    st.floats(-2, 5, allow_nan=False).map(repr),
)
CLI_FLAGS = (
    "--guidance-scale",
    "--temperature",
    "--top-k",
    "--top-p",
    "--num-images-per-prompt",
    "--seed",
    "--class-labels",
    "--num-frames",
    "--control-strength",
    "--batch-size",
)


@settings(max_examples=EXAMPLES["cli"])
@given(flags=st.dictionaries(st.sampled_from(CLI_FLAGS), CLI_TEXT, max_size=4))
def test_fuzz_the_command_line(flags, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("cli")
    argv = ["generate", "--preset", "test-tiny-c2i", "--out", str(out), "--no-grid"]
    if "--class-labels" not in flags:
        argv += ["--class-labels", "1"]
    for flag, value in flags.items():
        argv += [f"{flag}={value}"]  # "=": a value such as "-1" is not taken for a flag
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse: a value of the wrong type, usage + one error line
        assert exit_.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith("arstudio generate: error: ")
        return
    err = capsys.readouterr().err
    if status == 2:
        assert err.startswith("arstudio: error: ") and _single_line(err), err
        assert any(
            value in err or flag.lstrip("-").replace("-", "_") in err or flag in err
            for flag, value in flags.items()
        ), err
        return
    assert status == 0, err
    pngs = sorted(out.glob("*.png"))
    assert pngs and all(np.asarray(read_png_metadata(p) is not None) for p in pngs)
    meta = read_png_metadata(pngs[0])
    for flag, key in (
        ("--guidance-scale", "guidance_scale"),
        ("--temperature", "temperature"),
        ("--top-p", "top_p"),
        ("--top-k", "top_k"),
    ):
        if flag in flags:
            asked = int(flags[flag]) if flag == "--top-k" else float(flags[flag])
            assert meta[key] == asked, (flag, flags[flag], meta[key])


# ---- the render-job parser -----------------------------------------------------------------------------
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(), st.text(max_size=5)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=4,
)
FLOATS = st.one_of(st.floats(-1, 5), SPECIAL_FLOATS)
JOB_FIELD_VALUES = {  # per key: values near its valid range (JSON_VALUES adds every other type)
    "preset": st.sampled_from(["test-tiny-c2i", "test-tiny-t2i", "test-tiny-video", "nope"]),
    "class": st.one_of(st.integers(-2, 30), st.sampled_from(["red circle", "a blue square", "nonsense"])),
    "prompt": st.sampled_from(["a red circle", "red circle", "", " "]),
    "negative_prompt": st.sampled_from(["a blue square", ""]),
    "seed": st.integers(-1, 2**64),
    "count": st.integers(-1, 20_000),
    "seeds": st.lists(st.integers(-1, 2**63), max_size=4),
    "guidance_scale": FLOATS,
    "temperature": FLOATS,
    "top_p": FLOATS,
    "top_k": st.integers(-1, 10**9),
    "cfg_interval": st.lists(FLOATS, max_size=3),
    "decoding": st.sampled_from(["ar", "speculative", "lantern", "far", "magic"]),
    "draft_tokens": st.one_of(st.integers(-1, 20), FLOATS),
    "lantern_delta": FLOATS,
    "num_frames": st.integers(-1, 40),
    "num_inference_steps": st.integers(-1, 40),
    "temporal_decay": FLOATS,
    "format": st.sampled_from(["gif", "mp4", "png"]),
}
GOOD = {"preset": "test-tiny-c2i", "class": "red circle", "seed": 0}


@st.composite
def job_lines(draw):
    """A valid job of an image or video preset, then one to three keys set (or removed) at random."""
    raw = dict(
        draw(
            st.sampled_from(
                [
                    GOOD,
                    {"preset": "test-tiny-t2i", "prompt": "a red circle", "seeds": [1, 2]},
                    {"preset": "test-tiny-video", "class": 3, "seed": 2, "count": 2},
                ]
            )
        )
    )
    for key in draw(
        st.lists(st.sampled_from([*JOB_FIELD_VALUES, "colour"]), min_size=1, max_size=3, unique=True)
    ):
        if draw(st.integers(0, 5)) == 0:
            raw.pop(key, None)
        else:
            raw[key] = draw(
                st.one_of(
                    JOB_FIELD_VALUES.get(key, JSON_VALUES),
                    JOB_FIELD_VALUES.get(key, JSON_VALUES),
                    JSON_VALUES,
                )
            )
    return raw


@settings(max_examples=EXAMPLES["jobs"])
@given(raw=job_lines())
def test_fuzz_the_render_job_parser(raw):
    try:
        job = parse_job(raw, line=3)
    except JobError as err:
        assert str(err).startswith("line 3: ") and _single_line(str(err)), str(err)
        assert isinstance(err, ValueError)
        return
    # Accepted: every value the job carries is the one given, finite, and the seeds are exact integers.
    for key, value in job.spec.items():
        if key in raw:
            assert value == raw[key] or (key == "cfg_interval" and list(value) == list(raw[key])), key
        if isinstance(value, float):
            assert math.isfinite(value), (key, value)
    assert all(isinstance(s, int) and 0 <= s < 2**63 for s in job.seeds)
    if "seeds" in raw:
        assert list(job.seeds) == raw["seeds"]

import subprocess
import sys

import pytest

from arstudio.cli import build_parser, main
from arstudio.export import read_png_metadata

SUBCOMMANDS = [
    [],
    ["generate"],
    ["presets"],
    ["train"],
    ["train", "tokenizer"],
    ["train", "generator"],
    ["train", "classifier"],
]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "arstudio")
def test_every_subcommand_has_help(words, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*words, "--help"])
    assert info.value.code == 0
    assert "usage: arstudio" in capsys.readouterr().out


def test_help_is_quick_because_imports_are_lazy():
    # torch must not be imported to print help.
    code = "import sys; from arstudio.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    )


def test_generate_writes_pngs_with_metadata_and_a_grid(tmp_path):
    assert (
        main(
            [
                "generate",
                "--preset",
                "test-tiny-c2i",
                "--class-labels",
                "0",
                "3",
                "--num-images-per-prompt",
                "2",
                "--seed",
                "4",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    pngs = sorted(p for p in tmp_path.glob("*.png") if p.name != "grid.png")
    assert len(pngs) == 4 and (tmp_path / "grid.png").is_file()
    meta = read_png_metadata(pngs[2])
    assert meta["class_label"] == 3 and meta["preset"] == "test-tiny-c2i"
    assert not list(tmp_path.glob("*.tmp"))


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    assert main(["generate", "--preset", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert (
        main(["generate", "--preset", "test-tiny-c2i", "--class-labels", "99", "--out", str(tmp_path)]) == 2
    )
    assert "class label 99 is out of range" in capsys.readouterr().err


def test_generate_from_a_text_preset(tmp_path):
    assert (
        main(
            [
                "generate",
                "--preset",
                "test-tiny-t2i",
                "--prompt",
                "a small red circle at the top",
                "--negative-prompt",
                "a blue square",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    meta = read_png_metadata(next(tmp_path.glob("0000_*.png")))
    assert meta["prompt"] == "a small red circle at the top" and meta["negative_prompt"] == "a blue square"


def test_generate_takes_a_control_image(tmp_path, capsys):
    import numpy as np
    import torch
    from PIL import Image

    import arstudio

    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask, mode="L").save(tmp_path / "mask.png")
    out = tmp_path / "out"
    assert (
        main(
            [
                "generate",
                "--preset",
                "test-tiny-control",
                "--class-labels",
                "5",
                "--seed",
                "3",
                "--no-grid",
                "--control-image",
                str(tmp_path / "mask.png"),
                "--control-type",
                "mask",
                "--control-strength",
                "1.5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    written = np.asarray(Image.open(next(out.glob("0000_*.png"))))
    pipe = arstudio.load_pipeline("test-tiny-control")
    api = pipe(
        class_labels=[5],
        generator=torch.Generator().manual_seed(3),
        control_image=mask,
        control_type="mask",
        control_strength=1.5,
        output_type="np",
    )
    assert np.array_equal(written, api.images[0])  # the same call as the API's
    plain = pipe(class_labels=[5], generator=torch.Generator().manual_seed(3), output_type="np")
    assert not np.array_equal(written, plain.images[0])  # the control was used, not dropped
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "rgb.png")
    assert (
        main(
            [
                "generate",
                "--preset",
                "test-tiny-control",
                "--control-image",
                str(tmp_path / "rgb.png"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "must have one channel" in capsys.readouterr().err
    assert main(["generate", "--preset", "test-tiny-c2i", "--control-type", "edges", "--out", str(out)]) == 2
    assert "control_type needs a control preset" in capsys.readouterr().err


# ---- issue 24: each defect found by trying the CLI as a user would ---------------------------------------
TINY = ["generate", "--preset", "test-tiny-c2i", "--class-labels", "0"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("arstudio: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--guidance-scale", "nan"),
        ("--guidance-scale", "inf"),
        ("--temperature", "inf"),
        ("--top-p", "nan"),
        ("--temperature", "-inf"),
        ("--control-strength", "nan"),
        ("--control-guidance-scale", "inf"),
    ],
)
def test_non_finite_numbers_are_refused_before_any_work(flag, value, tmp_path, capsys):
    assert main([*TINY, f"{flag}={value}", "--out", str(tmp_path / "out")]) == 2
    assert f"{flag}={float(value)} is not allowed: use a finite number" in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()  # nothing written, not even the folder


def test_every_float_flag_of_every_subcommand_is_checked(tmp_path, capsys):
    assert main(["train", "tokenizer", "--out", str(tmp_path), "--lr", "nan"]) == 2
    assert "--lr=nan is not allowed" in _one_line_error(capsys)


@pytest.mark.parametrize("command", ["generate", "render"])
def test_out_naming_an_existing_file_is_a_one_line_error(command, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    (tmp_path / "jobs.jsonl").write_text('{"preset": "test-tiny-c2i", "class": 0, "seed": 1}\n')
    args = TINY if command == "generate" else ["render", str(tmp_path / "jobs.jsonl"), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "taken")]) == 2
    assert "is an existing file; give a folder" in _one_line_error(capsys)
    assert main([*args, "--out", str(tmp_path / "taken" / "sub")]) == 2
    assert "lies under the file" in _one_line_error(capsys)


def test_the_unknown_preset_error_has_no_stray_quotes(tmp_path, capsys):
    assert main(["generate", "--preset", "nope", "--out", str(tmp_path)]) == 2
    assert _one_line_error(capsys).startswith("arstudio: error: unknown preset 'nope'; available presets: ")


def test_num_frames_on_an_image_preset_is_an_error(tmp_path, capsys):
    assert main([*TINY, "--num-frames", "5", "--out", str(tmp_path / "out")]) == 2
    assert "--num-frames=5: test-tiny-c2i makes images; only video presets take it" in _one_line_error(capsys)


def test_presets_are_listed_in_aligned_columns(capsys):
    from arstudio.presets import get_preset, list_presets

    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = list_presets()
    assert len(lines) == len(names)
    starts = {
        (line.index(get_preset(n).task, len(n)), line.index(get_preset(n).description))
        for line, n in zip(lines, names, strict=True)
    }
    assert len(starts) == 1  # task and description columns start at the same place on every line


@pytest.mark.parametrize("seed, ok", [(2**63 - 1, True), (2**63, False), (-1, False)])
def test_seeds_near_2_63_are_taken_exactly_or_refused(seed, ok, tmp_path, capsys):
    import torch

    import arstudio

    assert main([*TINY, "--seed", str(seed), "--no-grid", "--out", str(tmp_path)]) == (0 if ok else 2)
    if not ok:
        assert f"--seed={seed} must be an integer in [0, 2**63)" in _one_line_error(capsys)
        return
    (png,) = tmp_path.glob("*.png")
    api = arstudio.load_pipeline("test-tiny-c2i")(
        class_labels=[0], generator=torch.Generator().manual_seed(seed)
    )
    assert read_png_metadata(png)["seed"] == api.seeds[0]  # the same per-image seed, exact in the recipe


def test_compile_and_attention_backend_flags():
    from arstudio.cli import _loading_kwargs

    for command in (["generate"], ["render", "jobs.jsonl", "--out", "o"], ["ui"]):
        args = build_parser().parse_args([*command, "--compile", "off", "--attention-backend", "xformers"])
        assert _loading_kwargs(args) == {"compile": False, "attention_backend": "xformers"}
        on = build_parser().parse_args([*command, "--compile", "on"])
        assert _loading_kwargs(on) == {"compile": True}
        assert _loading_kwargs(build_parser().parse_args([*command, "--compile", "auto"])) == {
            "compile": "auto"
        }
        assert _loading_kwargs(build_parser().parse_args(command)) == {}  # the loader's own defaults


@pytest.mark.parametrize(
    "flag, value", [("--compile", "maybe"), ("--attention-backend", "flash"), ("--seed", "x")]
)
def test_a_bad_flag_value_is_a_one_line_error(flag, value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["generate", flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"arstudio generate: error: argument {flag}: invalid")


def _spy_on_calls(monkeypatch, out, stop_after=None):
    """Record each pipeline call's batch and the PNGs on disk when it starts; optionally die mid-run."""
    from arstudio.pipelines.image import ImagePipeline

    calls, real = [], ImagePipeline.__call__

    def spy(self, *args, **kwargs):
        if stop_after is not None and len(calls) == stop_after:
            raise KeyboardInterrupt  # as a kill would, between two batches
        calls.append((len(kwargs["generator"]), len(list(out.glob("*.png")))))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ImagePipeline, "__call__", spy)
    return calls


def test_a_large_request_is_made_in_batches_each_written_before_the_next(tmp_path, monkeypatch):
    import torch

    import arstudio

    out = tmp_path / "out"
    calls = _spy_on_calls(monkeypatch, out)
    assert (
        main(
            [
                *TINY,
                "3",
                "--num-images-per-prompt",
                "20",
                "--batch-size",
                "16",
                "--seed",
                "7",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert calls == [(16, 0), (16, 16), (8, 32)]  # never more than --batch-size at once; earlier ones on disk
    pngs = sorted(p for p in out.glob("*.png") if p.name != "grid.png")
    assert len(pngs) == 40 and [p.name[:4] for p in pngs] == [f"{i:04d}" for i in range(40)]
    metas = [read_png_metadata(p) for p in pngs]
    assert [m["class_label"] for m in metas] == [0] * 20 + [
        3
    ] * 20  # prompt by prompt, as one call orders them
    monkeypatch.undo()
    one_call = arstudio.load_pipeline("test-tiny-c2i")(
        class_labels=[0, 3], num_images_per_prompt=20, generator=torch.Generator().manual_seed(7)
    )
    assert [m["seed"] for m in metas] == one_call.seeds  # the same images as one API call names


def test_a_run_killed_between_batches_keeps_the_batches_it_finished(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _spy_on_calls(monkeypatch, out, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        main([*TINY, "--num-images-per-prompt", "10", "--batch-size", "4", "--out", str(out)])
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 8 and not list(out.glob(".*.tmp"))  # two whole batches, no half files
    assert all(read_png_metadata(p)["class_label"] == 0 for p in pngs)


def test_a_request_over_the_run_limit_is_refused_before_loading(tmp_path, capsys):
    from arstudio.limits import MAX_IMAGES_PER_RUN

    assert main([*TINY, "--num-images-per-prompt", str(MAX_IMAGES_PER_RUN + 1), "--out", str(tmp_path)]) == 2
    assert f"--num-images-per-prompt={MAX_IMAGES_PER_RUN + 1} must be >= 1" in _one_line_error(capsys)


# ---- --decoding and the strategies' knobs (issue 22): flags built from the registry -------------------------


def test_every_knob_of_every_strategy_is_a_flag_with_its_range(capsys):
    from arstudio.decoding.strategies import STRATEGIES

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--decoding {" + ",".join(STRATEGIES) + "}" in help_text
    for strategy in STRATEGIES.values():
        for knob in strategy.knobs:
            flag = "--" + knob.name.replace("_", "-")
            assert f"{flag} {'N' if knob.integer else 'X'}" in help_text
            assert f"in [{knob.low:g}, {knob.high:g}], default {knob.default:g}" in help_text


def test_generate_decodes_with_the_strategy_and_knobs_given(tmp_path):
    """The flags reach the pipeline: same image as the API call with the same seed, knobs in the recipe; and a
    render job with the same strategy and knobs makes the same image."""
    import json

    import numpy as np
    import torch
    from PIL import Image

    import arstudio
    from arstudio.cli import _per_image_seeds

    knobs = ["--draft-tokens", "2", "--lantern-k", "3", "--lantern-delta", "0.5"]
    assert (
        main(
            [
                *TINY,
                "--class-labels",
                "2",
                "--seed",
                "7",
                "--decoding",
                "lantern",
                *knobs,
                "--no-grid",
                "--out",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    (png,) = (tmp_path / "cli").glob("*.png")
    meta = read_png_metadata(png)
    assert (meta["decoding"], meta["draft_tokens"], meta["lantern_k"], meta["lantern_delta"]) == (
        "lantern",
        2,
        3,
        0.5,
    )
    api = arstudio.load_pipeline("test-tiny-c2i")(
        class_labels=[2],
        decoding="lantern",
        draft_tokens=2,
        lantern_k=3,
        lantern_delta=0.5,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    )
    assert np.array_equal(np.asarray(Image.open(png)), api.images[0])

    job = {
        "preset": "test-tiny-c2i",
        "class": 2,
        "seeds": _per_image_seeds(7, 1),
        "decoding": "lantern",
        "draft_tokens": 2,
        "lantern_k": 3,
        "lantern_delta": 0.5,
    }
    (tmp_path / "jobs.jsonl").write_text(json.dumps(job) + "\n")
    assert (
        main(["render", str(tmp_path / "jobs.jsonl"), "--out", str(tmp_path / "job"), "--no-progress"]) == 0
    )
    (rendered,) = (tmp_path / "job").glob("*.png")
    assert np.array_equal(np.asarray(Image.open(rendered)), api.images[0])


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--lantern-k", "3"],
            "--lantern-k=3 does not apply to --decoding ar (it takes no knob flags); "
            "--lantern-k is for --decoding lantern",
        ),
        (
            ["--decoding", "speculative", "--lantern-delta", "0.1"],
            "--lantern-delta=0.1 does not apply to --decoding speculative (it takes --draft-tokens, --draft-width)",
        ),
        (
            ["--decoding", "lantern", "--lantern-k", "0"],
            "--lantern-k: lantern_k=0 is out of range: allowed are [1, 4096]",
        ),
        (
            ["--decoding", "speculative", "--draft-tokens", "17"],
            "draft_tokens=17 is out of range: allowed are [1, 16]",
        ),
        (
            ["--decoding", "dd1", "--dd-hybrid-start", "2"],
            "--dd-hybrid-start=2 does not apply to --decoding dd1 (it takes --num-inference-steps)",
        ),
        (["--decoding", "dd2", "--num-inference-steps", "3"], "num_inference_steps=3 is out of range"),
        (
            ["--preset", "test-tiny-video", "--decoding", "ar", "--draft-tokens", "2"],
            "--decoding, --draft-tokens: video presets take none of these",
        ),
        (
            ["--preset", "test-tiny-video", "--cfg-interval", "0", "0.5"],
            "--cfg-interval: video presets take none",
        ),
        (["--cfg-interval", "0.6", "0.5"], "cfg_interval=(0.6, 0.5) is not allowed"),
    ],
)
def test_decoding_flags_are_checked_before_any_work(args, message, tmp_path, capsys):
    assert main([*TINY, *args, "--out", str(tmp_path / "out")]) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--preset", "test-tiny-continuous", "--decoding", "lantern"],
            "decoding='lantern' is not available for preset 'test-tiny-continuous' (its generator makes vector tokens",
        ),
        (
            ["--decoding", "dd1", "--temperature", "0.5"],
            "temperature=0.5 cannot apply (use decoding='dd1_hybrid'",
        ),
        (["--decoding", "continuous_speculative", "--cfg-interval", "0.2", "0.8"], "is not available"),
        (
            ["--decoding", "dd1", "--cfg-interval", "0.2", "0.8"],
            "cfg_interval=(0.2, 0.8) cannot apply (use decoding='dd1_hybrid' or 'ar' to change it)",
        ),
    ],
)
def test_a_strategy_or_setting_the_preset_cannot_run_is_refused_with_the_reason(
    args, message, tmp_path, capsys
):
    assert main([*TINY, *args, "--out", str(tmp_path / "out")]) == 2
    err = _one_line_error(capsys)
    assert message in err
    if "not available" in message:
        assert "allowed: ('ar'" in err  # the strategies this preset can run
    assert not list((tmp_path / "out").glob("*.png"))

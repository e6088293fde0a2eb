"""The studio served on 127.0.0.1 and driven through gradio_client, plus its pieces without a server."""

import ast
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import arstudio
from arstudio.export import png_bytes, read_png_metadata

gradio_client = pytest.importorskip("gradio_client")
UI_DIR = Path(arstudio.__file__).parent / "ui"
# The studio's allowed imports from arstudio: the top-level API and these public modules, nothing private.
PUBLIC_MODULES = {
    "arstudio",
    "arstudio.data.control",
    "arstudio.data.shapes",  # the caption vocabulary: which prompt words a shapes model knows
    "arstudio.export",
    "arstudio.decoding",
    "arstudio.evaluation.verifier",
    "arstudio.reconstruction",
    "arstudio.render",
}
PRESETS = ["test-tiny-c2i", "test-tiny-t2i", "test-tiny-continuous", "test-tiny-bridge", "llamagen-b-256"]
NEAR_2_63 = 2**63 - 3  # a browser number field would round it (doubles are exact only below 2^53)
KNOBS = [4, 1, 4, 1, 8, 0.2, 1.0, 3, 1.0]  # knob fields: speculative, lantern, continuous_speculative


def _request(preset="test-tiny-c2i", class_name="blue square", prompt="", seed="7", randomize=False, count=2,
             top_k=0, decoding="ar", knobs=KNOBS, guidance=2.0, steps=8):  # fmt: skip
    return [preset, class_name, 0, prompt, "", seed, randomize, count, guidance, 1.0, top_k, 1.0, steps, decoding,
            *knobs]  # fmt: skip


@pytest.fixture(scope="module")
def client():
    from arstudio.ui import create_app

    app = create_app(preset="test-tiny-c2i", presets=PRESETS)
    app.launch(
        server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, ssr_mode=False
    )
    try:
        assert app.local_url.startswith("http://127.0.0.1:")
        yield gradio_client.Client(app.local_url, verbose=False)
    finally:
        app.close()


def test_the_ui_imports_only_the_public_api():
    for path in UI_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("arstudio"):
                module, names = node.module, [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                module, names = None, [a.name for a in node.names if a.name.startswith("arstudio")]
            else:
                continue
            if module is None:  # import arstudio / import arstudio.ui.x
                assert all(n == "arstudio" or n.startswith("arstudio.ui") for n in names), (path.name, names)
                continue
            if module.startswith("arstudio.ui"):
                continue
            assert module in PUBLIC_MODULES, f"{path.name} imports {module}"
            assert not any(n.startswith("_") for n in names), f"{path.name} imports private {names}"
            if module == "arstudio":
                assert set(names) <= set(arstudio.__all__), f"{path.name}: {names} not in arstudio.__all__"
        assert "arstudio._" not in path.read_text() and "pipe._" not in path.read_text(), path.name


def test_generate_round_trips_images_and_recipes(client):
    gallery, seed, status, files = client.predict(*_request(), api_name="/generate")
    assert seed == "7" and "2 image(s)" in status and len(gallery) == len(files) == 2
    metas = [read_png_metadata(f) for f in files]
    assert [m["seed"] for m in metas] == [7, 8] and {m["class_name"] for m in metas} == {"blue square"}
    assert metas[0]["preset"] == "test-tiny-c2i" and metas[0]["decoding"] == "ar"
    # The UI's image is the Python API's image for the same recipe.
    pipe = arstudio.load_pipeline("test-tiny-c2i")
    api = pipe(prompt="blue square", num_images_per_prompt=2, guidance_scale=2.0, output_type="np",
               generator=[torch.Generator().manual_seed(s) for s in (7, 8)])  # fmt: skip
    from PIL import Image

    for path, expected in zip(files, api.images, strict=True):
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), expected)
    # Drop the PNG back in: the controls come back set to redo its batch (seed 7, 2 images) exactly.
    updates = client.predict(gradio_client.handle_file(files[1]), api_name="/load_recipe")
    values = {i: u.get("value") for i, u in enumerate(updates[:-1]) if isinstance(u, dict)}
    assert values[0] == "test-tiny-c2i" and values[1] == "blue square" and values[5] == "7" and values[7] == 2
    assert values[6] is False and "loaded the recipe of seed 8" in updates[-1] and "batch of 2" in updates[-1]


def test_a_strategy_and_its_knobs_travel_into_the_recipe_and_back(client):
    strategies = arstudio.load_pipeline("test-tiny-c2i").decoding_strategies
    if "lantern" not in strategies:
        pytest.skip(f"test-tiny-c2i offers only {strategies}")
    # speculative: draft_tokens, draft_width; lantern: draft_tokens, draft_width, k, delta, lambda
    knobs = [4, 1, 3, 2, 5, 0.4, 2.0]
    _, _, status, files = client.predict(*_request(decoding="lantern", knobs=knobs), api_name="/generate")
    meta = read_png_metadata(files[0])
    assert "lantern" in status and meta["decoding"] == "lantern"
    knob_names = ("draft_tokens", "draft_width", "lantern_k", "lantern_delta", "lantern_lambda")
    assert tuple(meta[k] for k in knob_names) == (3, 2, 5, 0.4, 2.0)
    updates = client.predict(gradio_client.handle_file(files[0]), api_name="/load_recipe")
    values = [u.get("value") for u in updates[:-1] if isinstance(u, dict)]
    assert "lantern" in values and 0.4 in values and 5 in values


def test_randomised_seed_is_reported(client):
    _, seed, _, files = client.predict(*_request(seed="0", randomize=True, count=1), api_name="/generate")
    assert read_png_metadata(files[0])["seed"] == int(seed) and seed != "0"


def test_bad_input_gets_a_readable_message_and_the_app_keeps_serving(client, tmp_path):
    errors = gradio_client.exceptions.AppError
    with pytest.raises(errors, match="needs the official checkpoints"):
        client.predict(*_request(preset="llamagen-b-256"), api_name="/generate")
    with pytest.raises(errors, match="write a prompt first"):
        client.predict(*_request(preset="test-tiny-t2i", prompt="  "), api_name="/generate")
    with pytest.raises(errors, match="-1 is less than minimum value 0"):  # Gradio's own range check
        client.predict(*_request(top_k=-1), api_name="/generate")
    with pytest.raises(errors, match="not a class of test-tiny-c2i"):
        client.predict(*_request(class_name="purple blob"), api_name="/generate")
    with pytest.raises(errors, match="decoding='magic' is not available for test-tiny-c2i"):
        client.predict(*_request(decoding="magic"), api_name="/generate")
    plain = tmp_path / "plain.png"
    plain.write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(errors, match="has no arstudio recipe"):
        client.predict(gradio_client.handle_file(str(plain)), api_name="/load_recipe")
    fake = tmp_path / "fake.png"
    fake.write_text("not a picture")
    with pytest.raises(errors, match="not a PNG image"):
        client.predict(gradio_client.handle_file(str(fake)), api_name="/load_recipe")
    with pytest.raises(errors, match="not an image"):
        client.predict(
            ["test-tiny-c2i"], "red circle", gradio_client.handle_file(str(fake)), api_name="/tokenize"
        )
    gallery, _, _, _ = client.predict(*_request(count=1), api_name="/generate")  # still serving
    assert len(gallery) == 1


def test_text_preset_through_the_ui(client):
    _, _, _, files = client.predict(*_request(preset="test-tiny-t2i", prompt="a red circle", count=1),
                                    api_name="/generate")  # fmt: skip
    meta = read_png_metadata(files[0])
    assert meta["prompt"] == "a red circle" and meta["preset"] == "test-tiny-t2i"


def test_labs(client):
    gallery, table = client.predict(["test-tiny-c2i"], "red circle", None, api_name="/tokenize")
    assert len(gallery) == 3 and table["data"][0][0] == "test-tiny-c2i" and table["data"][0][4] > 0  # PSNR
    gallery, table, _, _ = client.predict(*_request(count=1), api_name="/compare")
    assert [row[0] for row in table["data"]] == list(
        arstudio.load_pipeline("test-tiny-c2i").decoding_strategies
    )
    assert table["data"][0][2] == 16  # forwards: one per token of the 4x4 grid
    # Guidance other than the preset's (2.0): one-shot DD still runs, and its row says what it did not apply.
    request = _request(count=1)
    request[8] = 2.5
    _, table, _, _ = client.predict(*request, api_name="/compare")
    notes = {row[0]: row[-1] for row in table["data"]}
    assert notes["dd1"] == notes["dd2"] == "guidance_scale=2.5 not applied: distilled at 2.0"
    assert notes["ar"] == notes["dd1_hybrid"] == ""


def test_previews_stream_and_stop_halts_the_pipeline():
    from arstudio.ui.streaming import Done, Preview, generate_with_previews

    pipe = arstudio.load_pipeline("test-tiny-c2i")
    kwargs = {"prompt": "red circle", "generator": torch.Generator().manual_seed(0)}
    events = []
    for event in generate_with_previews(pipe, kwargs, previews=4, min_interval_s=0, max_share=1.0):
        events.append(event)
        time.sleep(0.05)  # a slow consumer: previews must not pile up behind it
    assert isinstance(events[-1], Done) and 1 <= len(events) - 1 <= 3
    assert all(e.step in (4, 8, 12) for e in events[:-1])
    assert events[0].images[0].size == (16, 16)

    answers = []

    class Slow:  # the real pipeline, 10 ms per token, recording what the callback answered
        preview = staticmethod(pipe.preview)

        def __call__(self, callback_on_step_end, **kw):
            def callback(*args):
                time.sleep(0.01)
                answers.append(callback_on_step_end(*args))
                return answers[-1]

            return pipe(callback_on_step_end=callback, **kw)

    stream = generate_with_previews(Slow(), kwargs, previews=8, min_interval_s=0, max_share=1.0)
    assert isinstance(next(stream), Preview)
    stream.close()  # what Gradio does on Stop
    assert pipe.interrupt and len(answers) < 16  # Stop interrupts the running call


def test_reconstruct_refuses_non_images_and_huge_images():
    from arstudio.reconstruction import load_image

    with pytest.raises(ValueError, match="not an image"):
        load_image(b"hello")
    with pytest.raises(ValueError, match="at most 100 pixels"):
        load_image(png_bytes(np.zeros((20, 20, 3), np.uint8)), max_pixels=100)


@pytest.mark.parametrize("command", ["ui", "render"])
def test_cli_subcommands_have_help(command, capsys):
    from arstudio.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([command, "--help"])
    assert info.value.code == 0 and f"usage: arstudio {command}" in capsys.readouterr().out


def test_ui_with_missing_hub_weights_fails_at_start_with_the_fix(capsys):
    from arstudio.cli import main

    assert main(["ui", "--preset", "llamagen-b-256", "--port", "0"]) == 2
    assert "needs the official checkpoints" in capsys.readouterr().err


def test_a_recipe_restores_its_batch_when_the_studio_can_redo_it():
    from arstudio.ui.controls import batch_of

    assert batch_of({"seed": 9, "batch_seeds": [7, 8, 9]}) == (7, 3)
    assert batch_of({"seed": 9, "batch_seeds": [9, 3]}) == (9, 1)  # a render chunk of non-consecutive seeds
    assert batch_of({"seed": 9}) == (9, 1)


def test_decoding_lab_quality_axis_where_a_judge_exists():
    from arstudio.ui.decoding_lab import verifier_accuracy

    def run(preset, **kw):
        pipe = arstudio.load_pipeline(preset)
        return pipe(num_images_per_prompt=2, generator=torch.Generator().manual_seed(3), **kw)

    assert (
        0.5 <= verifier_accuracy(run("shapes-c2i", prompt="blue square")) <= 1.0
    )  # shipped model: mostly right
    assert (
        verifier_accuracy(run("test-tiny-c2i", prompt="blue square")) is None
    )  # 16 px: not a verifier canvas
    assert verifier_accuracy(run("test-tiny-t2i", prompt="a blue square")) is None  # text: no class to judge


def test_spaces_entry_and_readme_first_command(monkeypatch):
    import runpy

    import gradio as gr

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    header = readme.split("---")[1]
    assert "sdk: gradio" in header and "app_file: app.py" in header
    first_command = readme.split("```bash\n")[1].split("```")[0]
    assert first_command.strip().endswith("arstudio ui")
    assert ".[ui,text]" in (root / "requirements.txt").read_text()
    monkeypatch.setenv("ARSTUDIO_PRESET", "test-tiny-c2i")
    app = runpy.run_path(str(root / "app.py"), run_name="spaces")["demo"]  # built, not launched
    assert isinstance(app, gr.Blocks)


def test_control_maps_from_drawings_and_pictures():
    from arstudio.ui.control_tab import control_map

    canvas = np.zeros((256, 256, 4), np.uint8)
    canvas[64:128, 64:128] = 255  # a white square drawn on the transparent canvas
    drawn = control_map({"composite": canvas}, "mask", 16, from_photo=False)
    assert drawn.shape == (16, 16) and drawn[4:8, 4:8].all() and drawn.sum() == 16
    photo = np.zeros((32, 32, 3), np.uint8)
    photo[8:24, 8:24] = (230, 50, 50)
    edges = control_map(photo, "edges", 32, from_photo=True)
    assert edges[8:24, 8:24].sum() > 0 and edges[12:20, 12:20].sum() == 0  # an outline, not a filled square
    with pytest.raises(ValueError, match="upload or draw a control image first"):
        control_map({"composite": None}, "edges", 16, from_photo=False)


def test_control_tab_generates_from_a_drawn_control(tmp_path):
    from PIL import Image

    from arstudio.ui import create_app

    app = create_app(preset="test-tiny-control", presets=["test-tiny-control", "test-tiny-c2i"])
    app.launch(
        server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, ssr_mode=False
    )
    try:
        client = gradio_client.Client(app.local_url, verbose=False)
        drawing = np.zeros((64, 64, 3), np.uint8)
        drawing[16:40, 16:40] = 255
        path = tmp_path / "drawing.png"
        Image.fromarray(drawing).save(path)
        file = gradio_client.handle_file(str(path))
        editor = {"background": file, "layers": [], "composite": file}
        used, gallery, seed, status = client.predict("test-tiny-control", "red circle", "mask", 1.0, 2.0, False,
                                                     3.0, "7", False, 2, False, editor,
                                                     api_name="/control_generate")  # fmt: skip
        assert len(gallery) == 2 and "mask control" in status and seed == "7"
        seen = np.asarray(Image.open(used).convert("L"))[::8, ::8] > 0  # the 16x16 map, shown 8x larger
        assert seen[4:10, 4:10].all() and seen.sum() == 36
        with pytest.raises(
            gradio_client.exceptions.AppError, match="2.5 is greater than maximum value 2.0"
        ):  # Gradio's own check
            client.predict("test-tiny-control", "red circle", "mask", 2.5, 2.0, False, 3.0, "7", False, 1, False,
                           editor, api_name="/control_generate")  # fmt: skip
    finally:
        app.close()


def test_seeds_near_2_63_round_trip_exactly_through_the_ui_and_the_recipe(client):
    _, seed, _, files = client.predict(*_request(seed=str(NEAR_2_63), count=2), api_name="/generate")
    assert seed == str(NEAR_2_63)
    assert [read_png_metadata(f)["seed"] for f in files] == [NEAR_2_63, NEAR_2_63 + 1]
    pipe = arstudio.load_pipeline("test-tiny-c2i")  # the pixels are those of the exact seeds
    api = pipe(prompt="blue square", num_images_per_prompt=2, guidance_scale=2.0, output_type="np",
               generator=[torch.Generator().manual_seed(s) for s in (NEAR_2_63, NEAR_2_63 + 1)])  # fmt: skip
    from PIL import Image

    assert all(
        np.array_equal(np.asarray(Image.open(f).convert("RGB")), a)
        for f, a in zip(files, api.images, strict=True)
    )
    updates = client.predict(gradio_client.handle_file(files[1]), api_name="/load_recipe")
    assert updates[5]["value"] == str(NEAR_2_63) and updates[6]["value"] is False
    errors = gradio_client.exceptions.AppError
    with pytest.raises(
        errors, match=f"seed='{2**63 - 1}' is not allowed: use an integer in \\[0, {2**63 - 2}\\]"
    ):
        client.predict(*_request(seed=str(2**63 - 1), count=2), api_name="/generate")  # seed + 1 overflows
    for bad in ("-1", "1e5", "seven", ""):
        with pytest.raises(errors, match="is not allowed: use an integer in"):
            client.predict(*_request(seed=bad), api_name="/generate")


def test_numbers_out_of_range_are_refused_with_a_message_never_clamped(client):
    from arstudio.ui.controls import check_number

    errors = gradio_client.exceptions.AppError
    with pytest.raises(errors, match=r"images=1000 is not allowed: use an integer in \[1, 16\]"):
        client.predict(*_request(count=1000), api_name="/generate")
    with pytest.raises(errors, match=r"guidance_scale=-5.0 is not allowed: use a number in \[0.0, inf\)"):
        client.predict(*_request(guidance=-5.0), api_name="/generate")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="guidance_scale=.* is not allowed"):
            check_number(bad, "guidance_scale", 0.0)


def test_a_preset_that_cannot_load_says_why_and_keeps_the_form(client):
    updates = client.predict("llamagen-b-256", api_name="/preset")  # no exception: an answer on the page
    shown = [u for u in updates if isinstance(u, dict)]
    assert shown[0]["value"] == "test-tiny-c2i"  # the dropdown goes back to the preset the form is set up for
    notice = next(u["value"] for u in shown if "cannot be loaded" in str(u.get("value")))
    assert "the form stays on test-tiny-c2i" in notice and "ARSTUDIO_WEIGHTS_DIR" in notice
    assert "download=True" in notice and "```" not in notice  # the fix, as wrapped text


def test_continuous_presets_get_diffusion_steps_instead_of_top_k_and_top_p(client):
    from arstudio.ui.controls import has_steps, is_continuous_preset

    pipe = arstudio.load_pipeline("test-tiny-continuous")
    assert has_steps(pipe) and is_continuous_preset(pipe)
    assert not has_steps(arstudio.load_pipeline("test-tiny-bridge"))  # a bridge head has no steps, but top-k
    _, _, _, files = client.predict(
        *_request(preset="test-tiny-continuous", count=1, steps=3), api_name="/generate"
    )
    assert read_png_metadata(files[0])["num_inference_steps"] == 3
    updates = client.predict(gradio_client.handle_file(files[0]), api_name="/load_recipe")
    assert updates[12]["value"] == 3 and updates[12]["visible"] is True  # the steps field comes back
    assert updates[10]["visible"] is False and updates[11]["visible"] is False  # top-k, top-p hidden


def test_a_prompt_with_no_known_word_warns_but_generates(client):
    from arstudio.ui.prompt_words import unknown_prompt_warning

    _, _, status, files = client.predict(*_request(preset="test-tiny-t2i", prompt="asdkjh qwe zzz 123", count=1),
                                         api_name="/generate")  # fmt: skip
    assert len(files) == 1 and "understood no word of 'asdkjh qwe zzz 123'" in status
    _, _, status, _ = client.predict(*_request(preset="test-tiny-t2i", prompt="a red circle", count=1),
                                     api_name="/generate")  # fmt: skip
    assert "understood no word" not in status
    shapes = type("Pipe", (), {"preset": arstudio.get_preset("shapes-t2i"), "text_encoder": object()})()
    assert "understood no word" in unknown_prompt_warning(shapes, "asdkjh qwe zzz 123")
    assert unknown_prompt_warning(shapes, "a small cyan diamond at the bottom") is None


def test_tokenizer_lab_fits_each_tokenizer_kind_and_a_failure_hides_nothing(client):
    names = ["test-tiny-c2i", "test-tiny-continuous", "test-tiny-bridge", "llamagen-b-256"]
    gallery, table = client.predict(names, "red circle", None, api_name="/tokenize")
    rows = {row[0]: row for row in table["data"]}
    assert len(gallery) == 9 and list(rows) == names  # three pictures per tokenizer that ran
    assert "codebook usage %" in rows["test-tiny-c2i"][5] and rows["test-tiny-c2i"][4] > 0
    assert "latent dims 4" in rows["test-tiny-continuous"][5] and "std" in rows["test-tiny-continuous"][5]
    assert "levels per dim 8" in rows["test-tiny-bridge"][5] and rows["test-tiny-bridge"][4] > 0
    assert rows["llamagen-b-256"][5].startswith(
        "error: preset 'llamagen-b-256' needs the official checkpoints"
    )


def test_decoding_lab_charts_keep_the_table_order():
    import pandas as pd

    from arstudio.ui.decoding_lab import COLUMNS, chart_updates

    frame = pd.DataFrame([["ar", 1.0], ["speculative", 0.5], ["dd1", 0.1]], columns=COLUMNS[:2])
    frame = frame.reindex(columns=COLUMNS)
    speed, quality = chart_updates(frame)
    assert speed["sort"] == quality["sort"] == ["ar", "speculative", "dd1"]  # not alphabetical
    assert speed["y_lim"] == [0, pytest.approx(1.15)] and quality["visible"] is False


def test_random_init_test_presets_are_hidden_unless_asked(monkeypatch):
    from arstudio.ui import offered_presets

    monkeypatch.delenv("ARSTUDIO_SHOW_TEST_PRESETS", raising=False)
    shown = offered_presets()
    assert "shapes-c2i" in shown and not any(name.startswith("test-") for name in shown)
    assert "test-tiny-c2i" in offered_presets(show_test_presets=True)
    monkeypatch.setenv("ARSTUDIO_SHOW_TEST_PRESETS", "1")
    assert "test-tiny-c2i" in offered_presets()


def test_stop_reaches_the_pipeline_between_previews():
    """Gradio can close a generator only between its items, and previews are rationed: the Stop button's
    switch must stop the pipeline by itself, within a token."""
    from arstudio.ui.streaming import Preview, StopSwitches, generate_with_previews

    pipe = arstudio.load_pipeline("test-tiny-c2i")
    answers = []

    class Slow:  # the real pipeline, 20 ms per token, recording what the callback answered
        preview = staticmethod(pipe.preview)

        def __call__(self, callback_on_step_end, **kw):
            def callback(*args):
                time.sleep(0.02)
                answers.append(callback_on_step_end(*args))
                return answers[-1]

            return pipe(callback_on_step_end=callback, **kw)

    switches = StopSwitches()
    kwargs = {"prompt": "red circle", "generator": torch.Generator().manual_seed(0)}
    stream = generate_with_previews(Slow(), kwargs, previews=8, min_interval_s=0, max_share=1.0,
                                    stop=switches.start("session-a"))  # fmt: skip
    assert isinstance(next(stream), Preview)
    switches.stop("session-b")  # another session's Stop changes nothing here
    switches.stop("session-a")
    rest = list(stream)  # the pipeline stops after its current token and the stream ends
    # diffusers' contract: the callback sets pipe.interrupt (and returns its dict); the run ends early
    assert isinstance(answers[-1], dict) and len(answers) < 16 and len(rest) <= 1

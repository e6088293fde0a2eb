"""The studio's Video tab, served on 127.0.0.1 and driven through gradio_client."""

import json

import numpy as np
import pytest
import torch

import arstudio
from arstudio.export import read_video, video_bytes

gradio_client = pytest.importorskip("gradio_client")


def _request(frames=3, count=1, seed="5", context=None, first_frame="video"):
    return [
        "test-tiny-video",
        "blue square",
        frames,
        count,
        seed,
        False,
        1.5,
        1.0,
        2,
        0.0,
        context,
        first_frame,
    ]


@pytest.fixture(scope="module")
def app():
    from arstudio.ui import create_app

    # A video preset asked for at start: the Video tab starts with it, the image tabs with the image preset.
    app = create_app(preset="test-tiny-video", presets=["test-tiny-c2i", "test-tiny-video"])
    app.launch(
        server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, ssr_mode=False
    )
    try:
        yield app
    finally:
        app.close()


@pytest.fixture(scope="module")
def client(app):
    return gradio_client.Client(app.local_url, verbose=False)


def test_video_tab_generates_the_api_video_with_downloads(client):
    preview, video, status, files = client.predict(*_request(), api_name="/generate_video")
    assert "1 video(s) x 3 frames" in status and "seed 5" in status
    suffixes = sorted(f.rsplit(".", 1)[1] for f in files)
    assert suffixes == ["gif", "json", "mp4"] or suffixes == ["gif", "json"]
    gif = read_video(next(f for f in files if f.endswith(".gif")))
    meta = json.loads(open(next(f for f in files if f.endswith(".json"))).read())
    assert meta["seed"] == 5 and meta["class_name"] == "blue square" and meta["num_frames"] == 3
    pipe = arstudio.load_pipeline("test-tiny-video")
    api = pipe(
        prompt="blue square",
        num_frames=3,
        num_inference_steps=2,
        guidance_scale=1.5,
        output_type="np",
        generator=[torch.Generator().manual_seed(5)],
    )
    assert np.array_equal(gif[:, ::4, ::4], api.frames[0])  # the UI's video is the API's (gif is lossless)
    _, _, _, files = client.predict(*_request(first_frame="image"), api_name="/generate_video")
    meta = json.loads(open(next(f for f in files if f.endswith(".json"))).read())
    assert meta["first_frame"] == "image"  # the keyframe image preset drew frame 0


def test_video_tab_predicts_from_an_uploaded_clip_and_refuses_bad_ones(client, tmp_path):
    clip = np.zeros((2, 16, 16, 3), np.uint8)
    clip[:, 4:9, 4:9] = (60, 100, 240)
    good = tmp_path / "context.gif"
    good.write_bytes(video_bytes(clip, "gif"))
    _, _, status, _ = client.predict(
        *_request(frames=4, context=gradio_client.handle_file(str(good))), api_name="/generate_video"
    )
    assert "x 4 frames" in status
    wrong_size = tmp_path / "big.gif"
    wrong_size.write_bytes(video_bytes(np.zeros((2, 32, 32, 3), np.uint8), "gif"))
    with pytest.raises(Exception, match="context_frames must be uint8 frames"):
        client.predict(
            *_request(context=gradio_client.handle_file(str(wrong_size))), api_name="/generate_video"
        )
    broken = tmp_path / "broken.gif"
    broken.write_bytes(b"GIF89a this is not really a gif")
    with pytest.raises(Exception) as info:
        client.predict(*_request(context=gradio_client.handle_file(str(broken))), api_name="/generate_video")
    # One clean line: the file as the user named it, not Gradio's temp path or the decoder's internals.
    assert str(info.value) == "context clip 'broken.gif' could not be decoded as a video: use an mp4 or gif"


def test_video_seeds_near_2_63_round_trip_exactly(client):
    seed = 2**63 - 2
    _, _, status, files = client.predict(*_request(seed=str(seed)), api_name="/generate_video")
    meta = json.loads(open(next(f for f in files if f.endswith(".json"))).read())
    assert f"seed {seed}" in status and meta["seed"] == seed
    with pytest.raises(Exception, match=f"seed='{seed + 1}' is not allowed"):  # video 2 would pass 2^63
        client.predict(*_request(seed=str(seed + 1), count=2), api_name="/generate_video")


def _components(app, kind):
    return [block for block in app.blocks.values() if type(block).__name__ == kind]


def test_a_video_preset_asked_for_at_start_starts_the_video_tab(app):
    from arstudio.ui import create_app

    dropdowns = {d.label: d.value for d in _components(app, "Dropdown")}
    assert dropdowns["Video preset"] == "test-tiny-video"
    assert dropdowns["Preset"] == "test-tiny-c2i"
    assert {t.id for t in _components(app, "Tab")} >= {"image", "video"}
    # Only video presets offered: a Video tab and no image tabs with empty preset lists.
    alone = create_app(preset="test-tiny-video", presets=["test-tiny-video"])
    assert {t.id for t in _components(alone, "Tab")} == {"video"}


def test_studio_cache_shares_the_keyframe_pipeline_with_the_image_tabs():
    from arstudio.ui.common import PipelineCache

    cache = PipelineCache("cpu")
    video = cache.get("test-tiny-video")
    assert video.keyframe_pipeline() is cache.get("test-tiny-continuous")  # one copy, not two
    # outside the studio the video pipeline loads its own
    own = arstudio.load_pipeline("test-tiny-video", device="cpu")
    assert own.keyframe_loader is None and own.keyframe_pipeline() is not cache.get("test-tiny-continuous")

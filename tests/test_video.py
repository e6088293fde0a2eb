"""FAR video generator, its sampler and the video pipeline (tiny random-init models)."""

import dataclasses

import numpy as np
import pytest
import torch

import arstudio
from arstudio.decoding.video import sample_video
from arstudio.generators.video import (
    VideoGenerator,
    block_mask,
    clean_copy_mask,
    frame_coords,
    pool_latents,
)
from arstudio.nn.rope import rope_axes_table
from arstudio.pipelines.video import FIRST_FRAME_SOURCES
from arstudio.presets import get_preset
from arstudio.training.common import seeded


@pytest.fixture(scope="module")
def model(device):
    config = get_preset("test-tiny-video").generator
    m = seeded(lambda: VideoGenerator(config), 0).eval()
    for p in m.head.parameters():  # the zero-init head would make every sample pure noise
        torch.nn.init.normal_(p, std=0.1)
    return m.to(device)


@pytest.fixture(scope="module")
def pipe(device):
    return arstudio.load_pipeline("test-tiny-video", device=device)


def _sample(model, **kwargs):
    generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
    kwargs = {"num_frames": 6, "num_inference_steps": 3, "guidance_scale": 2.0, **kwargs}
    labels = torch.tensor([3, 5], device=next(model.parameters()).device)
    return sample_video(model, labels, generators, **kwargs)


def test_block_mask_is_causal_between_frames_and_full_inside():
    frames = torch.tensor([-1, 0, 0, 1, 1])
    mask = block_mask(frames, frames)[0, 0]
    assert mask[1, 2] and mask[2, 1]  # both ways inside frame 0
    assert not mask[1, 3] and mask[3, 1]  # frame 0 never sees frame 1; frame 1 sees frame 0
    assert mask[:, 0].all() and not mask[0, 1:].any()  # prefix seen by all, sees only itself
    bias = block_mask(frames, torch.tensor([-1, 0, 1, -2]), temporal_decay=0.5)[0, 0]
    assert bias[3, 0] == 0 and bias[3, 1] == -0.5 and bias[3, 2] == 0  # prefix never decays
    assert torch.isinf(bias[3, 3]) and torch.isinf(bias[1, 2])  # empty slot, future frame


def test_3d_rope_is_relative_and_leaves_the_prefix_alone():
    coords = torch.tensor([[float("nan")] * 3, [0.0, 1, 2], [3.0, 1, 2], [5.0, 4, 6], [8.0, 4, 6]])
    table = torch.view_as_complex(rope_axes_table(coords, (2, 1, 1)).contiguous())
    assert torch.allclose(table[0], torch.ones(4, dtype=torch.complex64))
    # the rotation between two tokens depends only on their coordinate difference
    assert torch.allclose(table[2] * table[1].conj(), table[4] * table[3].conj(), atol=1e-5)
    pooled = frame_coords(2, 4, pool=2)
    assert pooled.shape == (4, 3) and pooled[0].tolist() == [2.0, 0.5, 0.5]


def test_pool_latents_groups_patches():
    latents = torch.arange(16.0).view(1, 1, 16, 1)  # a 4x4 grid, raster order
    pooled = pool_latents(latents, 2)
    assert pooled.shape == (1, 1, 4, 4) and pooled[0, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]


def test_frames_are_block_causal_in_training(model, device):
    latents = torch.randn(1, 3, 16, 4, device=device)
    labels, t = torch.tensor([2], device=device), torch.full((1, 3), 0.5, device=device)
    base = model.sequence_hidden(labels, None, latents, t)
    later = latents.clone()
    later[:, 2] += 1.0  # change only the last frame
    changed = model.sequence_hidden(labels, None, later, t)
    assert torch.allclose(base[:, :32], changed[:, :32], atol=1e-6)  # frames 0 and 1 do not see it
    assert not torch.allclose(base[:, 32:], changed[:, 32:])
    inside = latents.clone()
    inside[:, 1, 15] += 1.0  # the last token of frame 1 is seen by the first token of frame 1
    assert not torch.allclose(base[:, 16], model.sequence_hidden(labels, None, inside, t)[:, 16])


def test_clean_copy_training_sees_what_sampling_sees(model, device):
    """Teacher forcing: noisy frame j's output equals the sampling-time pass with frames < j clean."""
    labels = torch.tensor([2, 7], device=device)
    x, x_t = torch.randn(2, 3, 16, 4, device=device), torch.randn(2, 3, 16, 4, device=device)
    t = torch.tensor([[0.3, 0.6, 0.9], [0.5, 0.2, 0.8]], device=device)
    long = torch.randn(2, 1, 16, 4, device=device)
    taught = model.clean_copy_hidden(labels, long, x, x_t, t).view(2, 3, 16, -1)
    for j in range(3):
        frames = torch.cat([x[:, :j], x_t[:, j : j + 1]], dim=1)
        clean = torch.arange(j + 1, device=device).expand(2, -1) < j
        alone = model.sequence_hidden(labels, long, frames, t[:, : j + 1], clean)[:, -16:]
        assert torch.allclose(taught[:, j], alone, atol=1e-5)


def test_clean_copy_mask_hides_the_answer():
    frames = torch.tensor([-1, 0, 1, 0, 1, 2])
    noisy = torch.tensor([False, False, False, True, True, True])
    mask = clean_copy_mask(frames, noisy)[0, 0]
    assert mask[4, 1] and not mask[4, 2]  # noisy frame 1 sees clean frame 0, not clean frame 1
    assert mask[4, 4] and not mask[4, 3] and not mask[5, 4]  # only its own noisy frame
    assert mask[2, 1] and not mask[2, 3] and mask[:, 0].all()  # clean frames: block-causal, never noise


def test_context_mode_is_checked():
    config = get_preset("test-tiny-video").generator
    with pytest.raises(ValueError, match="context_mode='teacher'"):
        dataclasses.replace(config, context_mode="teacher")


@pytest.mark.parametrize("mode", ["stochastic", "clean_copy"])
def test_loss_trains(model, mode, device):
    m = seeded(lambda: VideoGenerator(dataclasses.replace(model.config, context_mode=mode)), 1).to(device)
    optimizer = torch.optim.AdamW(m.parameters(), lr=3e-3)
    latents, labels = torch.randn(2, 4, 16, 4, device=device), torch.tensor([0, 1], device=device)
    losses = []
    for _ in range(16):  # the same batch and noise every step: the loss must fall
        loss = m.loss(latents, labels, torch.Generator().manual_seed(0), num_long=1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0]


def test_kv_cache_matches_recompute(model):
    for decay in (0.0, 0.7):
        cached = _sample(model, short_frames=0, temporal_decay=decay)
        recomputed = _sample(model, short_frames=0, temporal_decay=decay, use_cache=False)
        assert torch.allclose(cached.tokens, recomputed.tokens, atol=1e-4)
    assert cached.stats["cache_slots"] == 1 + 6 * 16  # every frame stored once


def test_long_term_compression_bounds_the_cache(model):
    full = _sample(model, num_frames=12, short_frames=0)
    compressed = _sample(model, num_frames=12, short_frames=2)
    assert full.stats["cache_slots"] == 1 + 12 * 16
    assert compressed.stats["cache_slots"] == 1 + (12 - 3) * 4 + 3 * 16
    assert compressed.tokens.shape == full.tokens.shape and torch.isfinite(compressed.tokens).all()
    # the first frames (short window not yet full) are identical; later ones read compressed context
    assert torch.allclose(full.tokens[:, :3], compressed.tokens[:, :3], atol=1e-5)


def test_context_frames_are_kept_and_callback_stops(model, device):
    context = torch.randn(2, 2, 16, 4, device=device)
    out = _sample(model, context=context)
    assert torch.equal(out.tokens[:, :2], context)
    seen = []
    out = _sample(model, callback=lambda f, total, so_far: seen.append(so_far.shape[1]) or f < 2)
    assert seen == [1, 2, 3] and out.tokens.shape[1] == 3


def test_pipeline_is_seeded_and_returns_frames(pipe):
    a = pipe(class_labels=[4, 9], num_frames=5, generator=torch.Generator().manual_seed(7))
    b = pipe(
        prompt=["magenta circle", "a yellow square moving up-left"],
        num_frames=5,
        generator=torch.Generator().manual_seed(7),
    )
    assert len(a.frames) == 2 and len(a.frames[0]) == 5 and a.frames[0][0].size == (16, 16)
    assert torch.equal(a.latents, b.latents) and a.seeds == b.seeds
    assert a.latents.shape == (2, 5, 4, 4, 4)
    assert a.metadata[1]["class_name"] == "yellow square" and a.metadata[0]["num_frames"] == 5
    one = pipe(class_labels=[9], num_frames=5, generator=[torch.Generator().manual_seed(a.seeds[1])])
    assert torch.equal(one.latents[0], a.latents[1])  # a video is redone alone from its seed


def test_pipeline_call_reads_back_only_its_frames(pipe):
    """The frame loop is device-resident: slot tables, masks and RoPE rows never come back to the host or
    go to the device per frame; the one host read of a call is the finished frames."""
    from benchmarks.bench_dispatch import DispatchCounter

    call = dict(class_labels=[0, 1], num_frames=6, guidance_scale=2.0, temporal_decay=0.2, output_type="np")
    pipe(**call, generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    with DispatchCounter() as counter:
        pipe(**call, generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    tally = counter.tally
    assert tally.total_host_reads == 1 and "tensor_to_images" in next(iter(tally.host_reads))
    assert tally.total_literals == 1  # the labels, sent once


@pytest.mark.compile
def test_compiled_video_step_gives_the_eager_frames(device):
    """One Euler step's pass compiled with static shapes (one graph for every frame: masks cover the whole
    cache); inductor's fused kernels round differently, so close rather than equal. ~30-60 s on a CPU."""
    eager = arstudio.load_pipeline("test-tiny-video", device=device, compile=False)
    compiled = arstudio.load_pipeline("test-tiny-video", device=device, compile=True)
    call = dict(class_labels=[0, 1], num_frames=6, guidance_scale=2.0, output_type="np")
    expected = eager(**call, generator=[torch.Generator().manual_seed(s) for s in (0, 1)]).latents
    got = compiled(**call, generator=[torch.Generator().manual_seed(s) for s in (0, 1)]).latents
    assert torch.allclose(got, expected, atol=1e-5)
    assert [c.name for c in compiled.compilation.calls] == ["generator.step"]
    step = compiled.compilation.calls[0]
    assert compiled.compilation.enabled and len(step._seen) == 1  # one signature for all frames


def test_pipeline_video_prediction_keeps_the_context(pipe):
    context = np.zeros((2, 16, 16, 3), np.uint8)
    context[:, 4:10, 4:10] = (230, 50, 50)
    out = pipe(
        class_labels=[0],
        num_frames=4,
        context_frames=context,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    pixels = torch.from_numpy(context).permute(0, 3, 1, 2).float() / 127.5 - 1
    encoded = pipe.tokenizer.encode(pixels.to(pipe.device))
    assert torch.allclose(out.latents[0, :2], encoded, atol=1e-5)
    assert out.frames[0].shape == (4, 16, 16, 3) and out.metadata[0]["context_frames"] == 2


def test_pipeline_first_frame_from_the_keyframe_image_preset(pipe):
    video = pipe(
        class_labels=[3, 8], num_frames=4, first_frame="image", generator=torch.Generator().manual_seed(5)
    )
    image = arstudio.load_pipeline("test-tiny-continuous", device=pipe.device)(
        class_labels=[3, 8], generator=[torch.Generator().manual_seed(s) for s in video.seeds]
    )
    assert torch.allclose(video.latents[:, 0], image.tokens)  # frame 0 is the image preset's sample
    assert video.metadata[0]["first_frame"] == "image" and video.metadata[0]["context_frames"] == 0
    plain = pipe(
        class_labels=[3, 8], num_frames=4, generator=[torch.Generator().manual_seed(s) for s in video.seeds]
    )
    assert plain.metadata[0]["first_frame"] == "video" and not torch.allclose(
        plain.latents[:, 0], image.tokens
    )
    again = pipe(
        class_labels=[8],
        num_frames=4,
        first_frame="image",
        generator=[torch.Generator().manual_seed(video.seeds[1])],
    )
    assert torch.allclose(again.latents[0], video.latents[1], atol=1e-5)  # still one seed per video


def test_keyframe_preset_must_exist_and_share_the_tokenizer(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "preset", dataclasses.replace(pipe.preset, keyframe_preset=None))
    monkeypatch.setattr(pipe, "_keyframe", None, raising=False)
    with pytest.raises(ValueError, match="needs a keyframe image preset"):
        pipe(class_labels=[1], num_frames=2, first_frame="image")
    monkeypatch.setattr(pipe, "preset", dataclasses.replace(pipe.preset, keyframe_preset="test-tiny-bridge"))
    with pytest.raises(ValueError, match="another tokenizer"):
        pipe(class_labels=[1], num_frames=2, first_frame="image")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_frames": 0}, "num_frames"),
        ({"first_frame": "noise"}, "first_frame"),
        ({"num_frames": 17}, "num_frames"),
        ({"num_frames": 2.5}, "num_frames"),
        ({"num_frames": 3, "context_frames": np.zeros((3, 16, 16, 3), np.uint8)}, "context frames"),
        ({"context_frames": np.zeros((2, 8, 8, 3), np.uint8)}, "context_frames"),
        ({"context_frames": np.zeros((2, 16, 16, 3), np.float32)}, "context_frames"),
        ({"context_frames": np.zeros((3, 2, 16, 16, 3), np.uint8)}, "clips for 1 videos"),
        ({"temporal_decay": -1.0}, "temporal_decay"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"output_type": "mp4"}, "output_type"),
        ({"temperature": 0.0}, "temperature"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"guidance_scale": "abc"}, "guidance_scale"),
    ],
)
def test_pipeline_refuses_bad_input(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(class_labels=[1], **kwargs)


def test_pipeline_refuses_odd_video_files(pipe, tmp_path):
    garbage = tmp_path / "clip.mp4"
    garbage.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="could not be decoded"):
        pipe(class_labels=[1], context_frames=garbage)
    text = tmp_path / "clip.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a video file"):
        pipe(class_labels=[1], context_frames=text)
    with pytest.raises(FileNotFoundError):
        pipe(class_labels=[1], context_frames=tmp_path / "missing.gif")


def test_video_export_round_trips(pipe, tmp_path):
    from arstudio.export import read_video, save_videos, video_bytes

    out = pipe(class_labels=[2], num_frames=3, generator=torch.Generator().manual_seed(3))
    formats = ("gif", "mp4") if _has_ffmpeg() else ("gif",)
    paths = save_videos(out, tmp_path, formats=formats, scale=2)
    assert [p.suffix for p in paths] == [f".{f}" for f in formats] + [".json"]
    gif = read_video(paths[0])
    assert gif.shape == (3, 32, 32, 3)
    assert np.array_equal(
        gif[:, ::2, ::2], np.stack([np.asarray(f) for f in out.frames[0]])
    )  # gif is lossless
    if _has_ffmpeg():
        assert read_video(paths[1]).shape == (3, 32, 32, 3)
    with pytest.raises(ValueError, match="video format"):
        video_bytes(gif, "avi")
    with pytest.raises(ValueError, match="uint8"):
        video_bytes(gif.astype(np.float32))


def _has_ffmpeg() -> bool:
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def test_render_batch_takes_video_jobs(tmp_path):
    from arstudio.export import read_video
    from arstudio.render import read_manifest, render_batch

    jobs = [
        {
            "preset": "test-tiny-video",
            "class": "red circle",
            "seed": 3,
            "count": 2,
            "num_frames": 3,
            "num_inference_steps": 2,
        },
        {"preset": "test-tiny-video", "class": 1, "seed": 0, "num_frames": 99},
        {"preset": "test-tiny-video", "class": 1, "seed": 0, "top_k": 3},
        {"preset": "test-tiny-video", "class": 1, "seed": 0, "first_frame": "noise"},
        {"preset": "test-tiny-video", "class": 2, "seed": 1, "num_frames": 2, "first_frame": "image"},
    ]
    summary = render_batch(jobs, tmp_path, progress=False)
    assert summary.rendered == 3 and len(summary.failed) == 3
    assert "num_frames=99 is out of range" in summary.failed[0] and "top_k" in summary.failed[1]
    assert "first_frame='noise'" in summary.failed[2] and set(FIRST_FRAME_SOURCES) == {"video", "image"}
    entries = read_manifest(tmp_path)
    assert len(entries) == 3 and all(name.endswith(".gif") for name in entries)
    assert read_video(tmp_path / next(iter(entries))).shape == (3, 16, 16, 3)
    assert render_batch(jobs[:1], tmp_path, progress=False).skipped == 2  # resumable: nothing redone


def test_cli_generates_videos(tmp_path):
    from arstudio.cli import main

    assert (
        main(
            [
                "generate",
                "--preset",
                "test-tiny-video",
                "--class-labels",
                "3",
                "--num-frames",
                "2",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert len(list(tmp_path.glob("*.gif"))) == 1 and len(list(tmp_path.glob("*.json"))) == 1
    assert main(["generate", "--preset", "test-tiny-video", "--top-k", "3", "--out", str(tmp_path)]) == 2


def test_video_config_refuses_text_condition_and_bad_pooling():
    from dataclasses import replace

    config = get_preset("test-tiny-video").generator
    with pytest.raises(ValueError, match="class-conditioned"):
        replace(config, condition="text", text_dim=8)
    with pytest.raises(ValueError, match="long_pool=0"):
        replace(config, long_pool=0)

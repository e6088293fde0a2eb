"""Sprite clips and the clip verifier."""

import numpy as np
import pytest

from arstudio.data.shapes import COLOURS, SHAPES
from arstudio.data.sprites import (
    Sprite,
    check_num_frames,
    direction_name,
    make_caption_clip,
    make_class_clip,
    render_clip,
)
from arstudio.evaluation.clip_verifier import centroid_track, clip_acceptance, verify_clip


def test_class_clips_are_deterministic_and_well_formed():
    frames, label, sprite = make_class_clip(3, 7, num_frames=16, canvas=32)
    again, label2, sprite2 = make_class_clip(3, 7, num_frames=16, canvas=32)
    assert frames.shape == (16, 32, 32, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, again) and label == label2 and sprite == sprite2
    assert (sprite.vx, sprite.vy) != (0, 0)
    assert SHAPES[label // len(COLOURS)] == sprite.shape and COLOURS[label % len(COLOURS)] == sprite.colour
    other, _, _ = make_class_clip(3, 8)
    assert not np.array_equal(frames, other)
    big, _, _ = make_class_clip(3, 7, num_frames=4, canvas=64)
    assert big.shape == (4, 64, 64, 3)


def test_motion_is_constant_velocity_with_reflections():
    sprite = Sprite("square", "red", "small", 8, x0=20, y0=5, vx=2, vy=-1)
    xs = [sprite.position(f, 32)[0] for f in range(8)]
    ys = [sprite.position(f, 32)[1] for f in range(8)]
    assert xs == [20, 22, 24, 22, 20, 18, 16, 14]  # bounces off the right wall (x <= 32 - 8)
    assert ys == [5, 4, 3, 2, 1, 0, 1, 2]  # and off the top
    frames = render_clip([sprite], 8, 32)
    # every frame holds exactly the 8x8 square, inside the canvas
    assert all(int((f.max(axis=2) > 0).sum()) == 64 for f in frames)


def test_caption_clips_describe_motion_and_keep_objects_apart():
    texts = []
    for i in range(12):
        frames, text, sprites = make_caption_clip(0, i, num_frames=8)
        texts.append(text)
        assert text.count(" moving ") == len(sprites)
        assert verify_clip(frames, objects=sprites).accepted
    assert any(" and " in t for t in texts)
    assert direction_name(1, -2) == "up-right" and direction_name(-1, 0) == "left"


def test_verifier_accepts_clean_clips():
    clips, labels = zip(*[make_class_clip(1, i, num_frames=16)[:2] for i in range(30)], strict=True)
    assert clip_acceptance(np.stack(clips), list(labels)) == 1.0
    frames, label, sprite = make_class_clip(1, 0, num_frames=6, canvas=64)
    assert verify_clip(frames, label).accepted


def test_verifier_rejects_broken_clips():
    frames, label, _ = make_class_clip(2, 5, num_frames=16)
    wrong_label = (label + 1) % 24
    assert not verify_clip(frames, wrong_label).accepted
    static = np.repeat(frames[:1], 16, axis=0)
    verdict = verify_clip(static, label)
    assert all(verdict.frames_ok) and not verdict.motion_ok  # right object, but it never moves
    jumbled = frames[np.random.default_rng(0).permutation(16)]
    assert not verify_clip(jumbled, label).motion_ok
    missing = frames.copy()
    missing[9] = 0
    verdict = verify_clip(missing, label)
    assert not verdict.frames_ok[9] and not verdict.identity_kept and not verdict.accepted
    swapped = frames.copy()
    other, _, _ = make_class_clip(2, 5, num_frames=16, label=wrong_label)
    swapped[12:] = other[12:]
    assert not verify_clip(swapped, label).accepted
    track = centroid_track(frames, label)
    assert track.shape == (16, 2) and not np.isnan(track).any()


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="num_frames"):
        check_num_frames(0)
    with pytest.raises(ValueError, match="num_frames"):
        make_class_clip(0, 0, num_frames=10_000)
    with pytest.raises(ValueError, match="canvas"):
        make_class_clip(0, 0, canvas=48)
    with pytest.raises(ValueError, match="class label"):
        make_class_clip(0, 0, label=24)
    with pytest.raises(ValueError, match="clip"):
        verify_clip(np.zeros((32, 32, 3), np.uint8), 0)
    with pytest.raises(ValueError, match="exactly one"):
        verify_clip(np.zeros((2, 32, 32, 3), np.uint8))

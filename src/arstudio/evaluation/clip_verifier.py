"""Rule-based verifier for sprite clips: right objects in every frame, identity kept, plausible motion.

Built on the image verifier (``detect_objects``): each frame's objects are found and fitted to the spec's
templates. A clip is accepted when
- every frame holds exactly the expected objects (shape and colour; size and region change with motion),
- identity is kept (each expected object is found in every frame, so it never turns into another one),
- motion is plausible: each object's box centre moves by a near-constant displacement from frame to frame
  (within ``tolerance`` px, which absorbs a generated object's one-pixel extent wobble), except at a bounce,
  where the box is within reach of a wall, and it moves at all (sprites never stand still).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from arstudio.data.shapes import class_parts
from arstudio.evaluation.verifier import DetectedObject, check_image, detect_objects

MIN_MEAN_SPEED = 0.5  # px per frame (at 32 px): below this the object is standing still


@dataclass
class ClipVerdict:
    frames_ok: list[bool]  # per frame: exactly the expected objects
    identity_kept: bool
    motion_ok: bool
    centroids: dict = field(default_factory=dict)  # (shape, colour) -> (T, 2) box centres, NaN where missing

    @property
    def accepted(self) -> bool:
        return all(self.frames_ok) and self.identity_kept and self.motion_ok

    @property
    def frame_accuracy(self) -> float:
        return float(np.mean(self.frames_ok))


def check_clip(frames) -> int:
    """Validate clip frames (T, H, W, 3) uint8 and return the canvas size."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or len(frames) < 1:
        shape = frames.shape if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(f"a clip must be a uint8 array (T, H, W, 3) with T >= 1; got {shape}")
    return check_image(frames[0])


def expected_objects(label: int | None = None, objects=None) -> list[tuple[str, str]]:
    """(shape, colour) keys to look for: from a class id, or from objects with .shape / .colour."""
    if (label is None) == (objects is None):
        raise ValueError("pass exactly one of label (a class id) or objects (the sprites to expect)")
    if label is not None:
        return [class_parts(label)]
    return [(obj.shape, obj.colour) for obj in objects]


def _centre(obj: DetectedObject) -> tuple[float, float]:
    return obj.x0 + obj.w / 2, obj.y0 + obj.h / 2


def motion_plausible(centres: np.ndarray, sides: np.ndarray, canvas: int, tolerance: float) -> bool:
    """centres (T, 2) of one object, box sides (T,): constant displacement except near walls."""
    if len(centres) < 2 or np.isnan(centres).any():
        return len(centres) < 2 and not np.isnan(centres).any()
    steps = np.diff(centres, axis=0)  # (T-1, 2)
    if np.abs(steps).sum(axis=1).mean() < MIN_MEAN_SPEED * canvas / 32:
        return False
    for t in range(len(steps) - 1):
        change = np.abs(steps[t + 1] - steps[t])  # per axis
        for axis in range(2):
            if change[axis] <= tolerance:
                continue
            # A bounce: the box in the middle frame is within one step (plus slack) of a wall on this axis.
            reach = abs(steps[t, axis]) + tolerance + 1
            low = centres[t + 1, axis] - sides[t + 1] / 2
            high = centres[t + 1, axis] + sides[t + 1] / 2
            if not (low <= reach or high >= canvas - reach):
                return False
    return True


def verify_clip(
    frames: np.ndarray, label: int | None = None, objects=None, tolerance: float | None = None
) -> ClipVerdict:
    """Verdict on a clip (T, H, W, 3) uint8 against a class id or the expected sprites.

    ``tolerance``: allowed change of displacement between frames, px (default 1.5 at 32 px, scaled).
    """
    canvas = check_clip(frames)
    wanted = expected_objects(label, objects)
    tolerance = 1.5 * canvas / 32 if tolerance is None else tolerance
    frames_ok, found_all = [], True
    centres = {key: np.full((len(frames), 2), np.nan) for key in wanted}
    sides = {key: np.zeros(len(frames)) for key in wanted}
    for t, frame in enumerate(frames):
        found = detect_objects(frame)
        keys = [(obj.shape, obj.colour) for obj in found]
        frames_ok.append(sorted(keys) == sorted(wanted))
        for key in wanted:
            matches = [obj for obj in found if (obj.shape, obj.colour) == key]
            if len(matches) == 1:
                centres[key][t] = _centre(matches[0])
                sides[key][t] = max(matches[0].w, matches[0].h)
            else:
                found_all = False
    # Two identical objects cannot be told apart frame to frame: their tracks are not checked.
    distinct = [key for key in wanted if wanted.count(key) == 1]
    motion_ok = all(motion_plausible(centres[k], sides[k], canvas, tolerance) for k in distinct)
    return ClipVerdict(frames_ok, found_all, motion_ok, centres)


def clip_acceptance(clips, labels) -> float:
    """Share of class clips (N, T, H, W, 3) the verifier accepts for their labels (N,)."""
    if len(clips) != len(labels) or len(clips) == 0:
        raise ValueError(f"need as many labels as clips (at least one); got {len(clips)} and {len(labels)}")
    return float(np.mean([verify_clip(c, int(y)).accepted for c, y in zip(clips, labels, strict=True)]))


def centroid_track(frames: np.ndarray, label: int) -> np.ndarray:
    """(T, 2) box centre of the class's object per frame (NaN where it is not found exactly once)."""
    return verify_clip(frames, label).centroids[expected_objects(label)[0]]

"""A call's inputs, checked and turned into tensors: conditions, per-image generators, control maps.

Shared by the image and video pipelines; each function raises a one-line error naming the bad value.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import torch

from arstudio.data.control import check_control_map
from arstudio.decoding.guidance import ControlSignal
from arstudio.generators.control import check_strength
from arstudio.generators.text_encoders import check_prompts
from arstudio.limits import check_images_per_call


@dataclass
class Conditions:
    """What the generator is conditioned on, one row per image, and how to describe each row."""

    cond: torch.Tensor  # labels (B,) or text states (B, L, D)
    negative: torch.Tensor | None  # same shape as cond, or None for the model's null condition
    describe: list[dict]  # per image: class_label/class_name or prompt/negative_prompt


@dataclass(frozen=True)
class ControlRequest:
    """A call's control, checked: the maps still to encode, their type and strength."""

    maps: list
    kind: str
    strength: float
    guidance_scale: float | None

    def describe(self) -> dict:
        return {
            "control_type": self.kind,
            "control_strength": self.strength,
            "control_guidance_scale": self.guidance_scale,
        }


OUTPUT_TYPES = ("pil", "np")


def check_output(output_type: str, repeat, repeat_name: str) -> None:
    """The output type and the images (videos) per prompt of a call."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r} is not allowed; use one of {OUTPUT_TYPES}")
    check_images_per_call(repeat, repeat_name)


def as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _labels_from_names(pipe, prompt) -> list[int]:
    names = pipe.preset.class_names
    if not names:
        raise ValueError(
            f"{pipe.preset.name!r} has no class names: pass class_labels "
            f"(0..{pipe.generator.config.num_classes - 1})"
        )
    labels = []
    for text in as_list(prompt):
        key = str(text).strip().lower().removeprefix("a ").removeprefix("an ")
        if key not in names:
            raise ValueError(f"prompt {text!r} is not a class of {pipe.preset.name}; allowed: {list(names)}")
        labels.append(names.index(key))
    return labels


def _checked_labels(class_labels, num_classes: int) -> list[int]:
    labels = []
    for raw in as_list(class_labels.tolist() if isinstance(class_labels, torch.Tensor) else class_labels):
        if isinstance(raw, bool) or not isinstance(raw, (int, np.integer)):
            raise ValueError(f"class label {raw!r} is not an integer")
        if not 0 <= raw < num_classes:
            raise ValueError(f"class label {raw} is out of range: allowed are 0..{num_classes - 1}")
        labels.append(int(raw))
    return labels


def class_conditions(pipe, prompt, class_labels, negative_prompt, repeat: int) -> Conditions:
    """Class ids from ``class_labels`` or class names in ``prompt``, each repeated ``repeat`` times."""
    if (prompt is None) == (class_labels is None):
        raise ValueError("pass exactly one of prompt (class names) or class_labels (class ids)")
    if negative_prompt is not None:
        raise ValueError(
            f"negative_prompt needs a text-to-image preset; {pipe.preset.name!r} is class-conditional"
        )
    if prompt is not None:
        labels = _labels_from_names(pipe, prompt)
    else:
        labels = _checked_labels(class_labels, pipe.generator.config.num_classes)
    if not labels:
        raise ValueError(
            f"{'prompt' if prompt is not None else 'class_labels'}=[] is empty: give at least one"
        )
    labels = [label for label in labels for _ in range(repeat)]
    names = pipe.preset.class_names
    describe = [{"class_label": lab, "class_name": names[lab] if names else None} for lab in labels]
    return Conditions(torch.tensor(labels, dtype=torch.long, device=pipe.device), None, describe)


def text_conditions(pipe, prompt, class_labels, negative_prompt, repeat: int) -> Conditions:
    """Text states of ``prompt`` (and ``negative_prompt``: one, or one per prompt), each repeated."""
    if class_labels is not None:
        raise ValueError(f"{pipe.preset.name!r} is text-to-image: pass prompt, not class_labels")
    if prompt is None:
        raise ValueError(f"{pipe.preset.name!r} needs a prompt, e.g. 'a large red circle at the top left'")
    prompts = check_prompts(prompt)
    negatives = None
    if negative_prompt is not None:
        negatives = check_prompts(negative_prompt)
        negatives = negatives * len(prompts) if len(negatives) == 1 else negatives
        if len(negatives) != len(prompts):
            raise ValueError(
                f"got {len(negatives)} negative prompts for {len(prompts)} prompts; pass 1 or one each"
            )

    def encode(texts: list[str]) -> torch.Tensor:
        states = pipe.text_encoder(texts).to(device=pipe.device, dtype=pipe.dtype)
        return states.repeat_interleave(repeat, dim=0)

    describe = [
        {"prompt": p, "negative_prompt": negatives[i] if negatives else None}
        for i, p in enumerate(prompts)
        for _ in range(repeat)
    ]
    return Conditions(encode(prompts), encode(negatives) if negatives else None, describe)


def per_image_generators(generator, count: int) -> tuple[list[torch.Generator], list[int]]:
    """One CPU generator per image, and the seed each was started from."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != count:
            raise ValueError(f"got {len(generator)} generators for {count} images; pass one per image")
        seeds = [g.initial_seed() for g in generator]
    elif isinstance(generator, torch.Generator):
        # Derive per-image seeds from the one generator, so a call is reproducible and each image can be
        # redone alone from its seed.
        seeds = [int(s) for s in torch.randint(0, 2**62, (count,), generator=generator)]
    elif generator is None:
        seeds = [secrets.randbits(62) for _ in range(count)]
    else:
        raise ValueError(
            f"generator must be a torch.Generator, a list of them or None, got {type(generator)}"
        )
    return [torch.Generator().manual_seed(s) for s in seeds], seeds


def check_control(pipe, control_image, control_type, control_strength, control_guidance_scale):
    """A call's control knobs checked against the generator's control encoder: a ``ControlRequest``, or None
    without a control image."""
    encoder = getattr(pipe.generator, "control_encoder", None)
    given = {
        "control_image": control_image,
        "control_type": control_type,
        "control_guidance_scale": control_guidance_scale,
        "control_strength": None if control_strength == 1.0 else control_strength,
    }
    used = [name for name, value in given.items() if value is not None]
    if encoder is None:
        if used:
            raise ValueError(f"{used[0]} needs a control preset; {pipe.preset.name!r} takes no control")
        return None
    kind = encoder.config.types[0] if control_type is None else control_type
    if kind not in encoder.config.types:
        raise ValueError(f"control_type={kind!r} is unknown; allowed: {encoder.config.types}")
    strength = check_strength(control_strength)
    if control_image is None:
        if used:
            raise ValueError("control_type / control_strength / control_guidance_scale need a control_image")
        return None
    ControlSignal(None, None, control_guidance_scale)  # checks the scale before any work
    return ControlRequest(as_list(control_image), kind, float(strength), control_guidance_scale)


def control_signal(pipe, request: ControlRequest | None, count: int, repeat: int) -> ControlSignal | None:
    """The control tokens for ``count`` images, ``repeat`` per prompt (one map for all or one per prompt)."""
    if request is None:
        return None
    encoder, prompts = pipe.generator.control_encoder, count // repeat
    if len(request.maps) not in (1, prompts):
        raise ValueError(
            f"got {len(request.maps)} control images for {prompts} prompts/labels; pass 1 or one each"
        )
    arrays = [check_control_map(m, encoder.config.resolution) for m in request.maps]
    arrays = arrays * (prompts if len(arrays) == 1 else 1)
    batch = torch.from_numpy(np.stack(arrays)).repeat_interleave(repeat, dim=0)[:, None]  # (B, 1, R, R)
    batch = batch.to(device=pipe.device, dtype=pipe.dtype)
    tokens = pipe.generator.encode_control(batch, [request.kind] * count, request.strength)
    return ControlSignal(tokens, encoder.null(count), request.guidance_scale)

"""Video pipeline: KL tokenizer (frame-wise latents) + FAR video generator -> frames and metadata.

Class conditions, seeds and generators follow ``ImagePipeline`` (``pipelines/inputs.py``): class names
("red circle", also "a red circle moving right": the motion words are not conditioned on) or class ids,
one CPU generator per video. ``context_frames`` turns generation into video prediction.

First frames (``first_frame``): ``"video"`` has the video model draw frame 0 from nothing, as it does every
other frame; ``"image"`` has the preset's keyframe image preset draw it (same tokenizer, so its latents are
a frame the video model continues) and the video model predict the rest. An image is a one-frame video, and
a frame with no past is exactly the image task, which an image model spends all its training on.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from arstudio.checks import trusted_values
from arstudio.decoding.continuous import check_num_inference_steps
from arstudio.decoding.logits import check_sampling_params
from arstudio.decoding.types import DecodeResult
from arstudio.decoding.video import sample_video
from arstudio.images import images_to_tensor, tensor_to_images
from arstudio.pipelines.callbacks import check_step_end_callback, step_callback
from arstudio.pipelines.image import ImagePipeline
from arstudio.pipelines.inputs import Conditions, check_output, class_conditions, per_image_generators

MOTION_WORDS = re.compile(r"\s+moving\s+[a-z-]+\s*$")
FIRST_FRAME_SOURCES = ("video", "image")


def same_model(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Same config and the same weights (compared in float32, so dtype casts do not count)."""
    if getattr(a, "config", None) != getattr(b, "config", None):
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float().cpu(), sb[k].float().cpu()) for k in sa)


@dataclass
class VideoOutput:
    frames: list  # per video: a list of PIL images ("pil") or a uint8 (T, H, W, 3) array ("np")
    latents: torch.Tensor  # (num_videos, T, h, w, d)
    seeds: list[int]
    timings: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    metadata: list[dict] = field(default_factory=list)  # one dict per video

    def to_tuple(self) -> tuple:
        return self.frames, self.latents, self.seeds, self.timings, self.stats, self.metadata


@dataclass(frozen=True)
class VideoPlan:
    """A video call after ``check_inputs``."""

    num_frames: int
    guidance_scale: float
    temperature: float
    num_inference_steps: int
    temporal_decay: float
    short_frames: int | None
    use_cache: bool
    first_frame: str  # "video" or "image"; "context" once context frames are given
    output_type: str
    repeat: int
    callback: object


class VideoPipeline(ImagePipeline):
    """``pipe(class_labels=[3], num_frames=16)`` or ``pipe(prompt="red circle")``; ``context_frames`` (uint8
    (C, H, W, 3) for every video, (B, C, H, W, 3) one clip each, a list of frames, or an mp4/gif path) are
    kept as the first C frames and the rest is predicted.

    Call arguments (``pipe(...)``):
        prompt / class_labels: class names or ids, as for class-to-image presets.
        num_frames: frames per video, 1..``max_frames`` (the model trained on ``train_frames``; longer
            clips extrapolate, where ``temporal_decay`` helps).
        context_frames: given first frames (see above); they must be fewer than num_frames.
        generator: one torch.Generator, one per video, or None (fresh seeds, in ``.seeds``).
        guidance_scale, temperature, num_inference_steps: CFG on the velocity, initial-noise scale,
            Euler steps per frame; None takes the preset's defaults.
        temporal_decay: FlexRoPE-style test-time decay (attention bias -decay x frame distance); 0 is off.
        short_frames: frames kept at full resolution as context (None: the model's; 0: never compress).
        use_cache: the frame KV cache; False recomputes the context every step (speed baseline).
        return_dict: False returns ``VideoOutput.to_tuple()`` (frames first).
        callback_on_step_end: ``fn(pipe, step, timestep, callback_kwargs) -> dict`` after each frame
            (timestep: the frame; callback_kwargs["latents"]: (B, frame + 1, N, d)); set
            ``pipe.interrupt = True`` to stop early. ``callback=`` takes the deprecated
            ``fn(frame, num_frames, latents_so_far)``.
        first_frame: who draws frame 0 when no context is given: "video" or "image" (the keyframe image
            preset, see the module docstring); None takes the preset's default.
    """

    _keyframe: ImagePipeline | None = None  # the keyframe image pipeline, loaded on first use
    # Preset name -> image pipeline, asked before loading one: the studio sets its pipeline cache here, so a
    # keyframe preset already open in the image tab is shared rather than loaded a second time.
    keyframe_loader: Callable[[str], ImagePipeline] | None = None
    load_options: dict = {}  # load_pipeline's engine options (compile, attention_backend); set by the loader

    def __repr__(self) -> str:
        return f"VideoPipeline(preset={self.preset.name!r}, device={self.device}, dtype={self.dtype})"

    @property
    def decoding_strategies(self) -> tuple[str, ...]:
        return ("far",)

    @property
    def max_frames(self) -> int:
        return self.generator.config.max_frames

    def keyframe_pipeline(self) -> ImagePipeline:
        """The image pipeline that draws first frames for ``first_frame="image"``, loaded once per device."""
        cached = self._keyframe
        if cached is not None and cached.device == self.device and cached.dtype == self.dtype:
            return cached
        name = self.preset.keyframe_preset
        if name is None:
            raise ValueError(
                f"first_frame='image' needs a keyframe image preset; {self.preset.name!r} has none: use 'video'"
            )
        pipe = None if self.keyframe_loader is None else self.keyframe_loader(name)
        if pipe is None or (pipe.device, pipe.dtype) != (self.device, self.dtype):
            # The engine options the video pipeline was loaded with (compile, attention backend) apply too.
            pipe = self.loader(name, device=self.device, dtype=self.dtype, **self.load_options)
        if not same_model(pipe.tokenizer, self.tokenizer):  # other latents would be noise to the video model
            raise ValueError(f"keyframe preset {name!r} has another tokenizer than {self.preset.name!r}")
        self._keyframe = pipe
        return pipe

    def _keyframes(self, labels: list[int], generators: list[torch.Generator]) -> torch.Tensor:
        """First-frame latents (B, 1, N, d) from the keyframe preset (its own sampling defaults) for labels."""
        out = self.keyframe_pipeline()(class_labels=labels, generator=generators, output_type="np")
        return out.tokens.flatten(1, 2)[:, None].to(self.device)  # (B, h, w, d) -> (B, 1, h * w, d)

    def decode_frames(self, latents: torch.Tensor) -> np.ndarray:
        """(B, T, N, d) latents -> uint8 (B, T, H, W, 3)."""
        frames = rearrange(latents, "b t (gh gw) d -> (b t) gh gw d", gh=self.tokenizer.grid_size)
        pixels = tensor_to_images(self.tokenizer.decode(frames.to(self.dtype)).float())
        return rearrange(pixels, "(b t) h w c -> b t h w c", b=latents.shape[0])

    def preview(self, latents_so_far: torch.Tensor) -> list:
        """The newest frame of each video (B, T, N, d) as PIL images: the studio's per-frame progress."""
        from PIL import Image

        return [Image.fromarray(video[-1]) for video in self.decode_frames(latents_so_far[:, -1:])]

    def _context_latents(self, context_frames, count: int, num_frames: int) -> torch.Tensor | None:
        if context_frames is None:
            return None
        if isinstance(context_frames, (str, Path)):
            from arstudio.export import read_video

            context_frames = read_video(context_frames, max_frames=self.max_frames)
        if isinstance(context_frames, (list, tuple)):
            context_frames = np.stack([np.asarray(f) for f in context_frames])
        r = self.tokenizer.config.resolution
        array = context_frames
        if (
            not isinstance(array, np.ndarray)
            or array.dtype != np.uint8
            or array.ndim not in (4, 5)
            or tuple(array.shape[-3:]) != (r, r, 3)
        ):
            shape = getattr(array, "shape", type(array).__name__)
            raise ValueError(
                f"context_frames must be uint8 frames ({r}, {r}, 3): (C, {r}, {r}, 3) or (videos, C, {r}, {r}, 3); "
                f"got {shape}"
            )
        if array.ndim == 4:
            array = np.repeat(array[None], count, axis=0)
        if array.shape[0] != count:
            raise ValueError(
                f"context_frames hold {array.shape[0]} clips for {count} videos; pass 1 or one each"
            )
        given = array.shape[1]
        if not 1 <= given < num_frames:
            raise ValueError(
                f"{given} context frames for num_frames={num_frames}: give 1..{num_frames - 1} frames"
            )
        pixels = images_to_tensor(np.ascontiguousarray(array.reshape(-1, r, r, 3))).to(
            self.device, self.dtype
        )
        latents = self.tokenizer.encode(pixels)  # (count * given, h, w, d)
        return latents.reshape(count, given, -1, latents.shape[-1])

    def check_inputs(
        self,
        num_frames,
        guidance_scale,
        temperature,
        num_inference_steps,
        temporal_decay,
        short_frames,
        use_cache,
        first_frame,
        output_type,
        repeat,
        callbacks,
    ) -> VideoPlan:
        """Every check a video call makes before any work; preset defaults filled in."""
        from arstudio.data.sprites import check_num_frames

        num_frames = check_num_frames(num_frames, self.max_frames)
        check_output(output_type, repeat, "num_videos_per_prompt")
        if (
            isinstance(temporal_decay, bool)
            or not isinstance(temporal_decay, (int, float))
            or not 0 <= temporal_decay < float("inf")  # also refuses nan
        ):
            raise ValueError(f"temporal_decay={temporal_decay!r} must be a number >= 0 (0 turns it off)")
        defaults = self.preset.defaults
        guidance = defaults.get("guidance_scale", 1.0) if guidance_scale is None else guidance_scale
        temp = defaults.get("temperature", 1.0) if temperature is None else temperature
        check_sampling_params(guidance, temp, 0, 1.0)  # top-k / top-p do not apply to the flow head
        steps = (
            defaults.get("num_inference_steps", 20) if num_inference_steps is None else num_inference_steps
        )
        check_num_inference_steps(steps, self.generator.head)
        source = defaults.get("first_frame", "video") if first_frame is None else first_frame
        if source not in FIRST_FRAME_SOURCES:
            raise ValueError(f"first_frame={source!r} is not allowed; use one of {FIRST_FRAME_SOURCES}")
        fn, names, legacy = callbacks
        callback = step_callback(
            self, fn, check_step_end_callback(fn, names, self.callback_tensor_inputs), legacy
        )
        return VideoPlan(
            num_frames,
            float(guidance),
            float(temp),
            steps,
            float(temporal_decay),
            short_frames,
            use_cache,
            source,
            output_type,
            repeat,
            callback,
        )

    def encode_conditions(self, prompt, class_labels, negative_prompt, repeat: int) -> Conditions:
        """Class conditions; a prompt's trailing motion words ("moving right") are not conditioned on."""
        if isinstance(prompt, str):
            prompt = MOTION_WORDS.sub("", prompt)
        elif isinstance(prompt, (list, tuple)):
            prompt = [MOTION_WORDS.sub("", str(p)) for p in prompt]
        return class_conditions(self, prompt, class_labels, negative_prompt, repeat)

    def sample(self, plan: VideoPlan, conditions: Conditions, generators, context) -> DecodeResult:
        p = plan
        self._interrupt, self.num_timesteps = False, p.num_frames
        return sample_video(
            self.generator,
            conditions.cond,
            generators,
            p.num_frames,
            context,
            p.guidance_scale,
            p.temperature,
            p.num_inference_steps,
            p.temporal_decay,
            p.short_frames,
            p.use_cache,
            p.callback,
        )

    def decode(self, result: DecodeResult, output_type: str) -> list:
        pixels = self.decode_frames(result.tokens)
        if output_type == "np":
            return list(pixels)
        from PIL import Image

        return [[Image.fromarray(f) for f in video] for video in pixels]

    def describe(self, plan: VideoPlan, conditions: Conditions, seeds, result, context) -> list[dict]:
        shared = {
            "preset": self.preset.name,
            "num_frames": int(result.tokens.shape[1]),
            "context_frames": 0
            if context is None or plan.first_frame != "context"
            else int(context.shape[1]),
            "first_frame": plan.first_frame,
            "guidance_scale": plan.guidance_scale,
            "temperature": plan.temperature,
            "num_inference_steps": plan.num_inference_steps,
            "temporal_decay": plan.temporal_decay,
            "short_frames": self.generator.config.short_frames
            if plan.short_frames is None
            else plan.short_frames,
            "decoding": "far",
            "resolution": self.tokenizer.config.resolution,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        return [{**shared, **row, "seed": s} for row, s in zip(conditions.describe, seeds, strict=True)]

    def _first_frames(self, plan: VideoPlan, context_frames, conditions: Conditions, generators):
        """(plan with who drew frame 0, given context latents (B, C, N, d) or None)."""
        context = self._context_latents(context_frames, len(generators), plan.num_frames)
        if context is not None:
            return replace(plan, first_frame="context"), context
        if plan.first_frame == "image":  # the generators draw the keyframe first, then the rest: one seed
            labels = [row["class_label"] for row in conditions.describe]  # the host's copy: no read back
            return plan, self._keyframes(labels, generators)
        return plan, None

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        class_labels: int | list[int] | torch.Tensor | None = None,
        num_frames: int = 16,
        context_frames=None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        num_inference_steps: int | None = None,
        temporal_decay: float = 0.0,
        short_frames: int | None = None,
        use_cache: bool = True,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        first_frame: str | None = None,
        callback=None,
    ) -> VideoOutput | tuple:
        """Generate videos; the arguments are in the class docstring."""
        t0 = time.perf_counter()
        plan = self.check_inputs(
            num_frames,
            guidance_scale,
            temperature,
            num_inference_steps,
            temporal_decay,
            short_frames,
            use_cache,
            first_frame,
            output_type,
            num_videos_per_prompt,
            (callback_on_step_end, callback_on_step_end_tensor_inputs, callback),
        )
        conditions = self.encode_conditions(prompt, class_labels, None, num_videos_per_prompt)
        generators, seeds = per_image_generators(generator, len(conditions.describe))
        plan, context = self._first_frames(plan, context_frames, conditions, generators)
        with trusted_values():  # labels were checked on the host: no range reads (checks.py)
            result = self.sample(plan, conditions, generators, context)
            t1 = time.perf_counter()
            frames = self.decode(result, output_type)
        t2 = time.perf_counter()
        total_frames = result.tokens.shape[1] * len(seeds)
        timings = {
            "sampling_s": t1 - t0,
            "decode_s": t2 - t1,
            "total_s": t2 - t0,
            "frames_per_s": total_frames / (t2 - t0),
        }
        latents = rearrange(result.tokens, "b t (gh gw) d -> b t gh gw d", gh=self.tokenizer.grid_size)
        description = self.describe(plan, conditions, seeds, result, context)
        out = VideoOutput(frames, latents, seeds, timings, result.stats, description)
        return out if return_dict else out.to_tuple()

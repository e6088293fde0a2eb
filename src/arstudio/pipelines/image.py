"""Image pipeline: tokenizer + generator + decoding strategy -> images and everything to reproduce them."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from arstudio.decoding import DECODING_STRATEGIES
from arstudio.decoding.autoregressive import sample_autoregressive
from arstudio.decoding.logits import SamplingParams
from arstudio.training.common import tensor_to_images

OUTPUT_TYPES = ("pil", "np")


@dataclass
class ImageOutput:
    images: list  # PIL images ("pil") or uint8 (H, W, 3) arrays ("np")
    tokens: torch.Tensor  # (num_images, h, w) token ids
    seeds: list[int]  # seed of each image's generator: generator=[torch.Generator().manual_seed(s)] redoes it
    timings: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    metadata: list[dict] = field(default_factory=list)  # one dict per image


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


class ImagePipeline:
    """Call with ``class_labels`` (ids) or ``prompt`` (class names such as "red circle")."""

    def __init__(self, tokenizer, generator, preset, device: torch.device, dtype: torch.dtype):
        self.tokenizer = tokenizer
        self.generator = generator
        self.preset = preset
        self.device = device
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"ImagePipeline(preset={self.preset.name!r}, device={self.device}, dtype={self.dtype})"

    # ---- input handling -------------------------------------------------------------------------
    def _labels(self, prompt, class_labels) -> list[int]:
        if (prompt is None) == (class_labels is None):
            raise ValueError("pass exactly one of prompt (class names) or class_labels (class ids)")
        names = self.preset.class_names
        num_classes = self.generator.config.num_classes
        if prompt is not None:
            labels = []
            for text in _as_list(prompt):
                key = str(text).strip().lower().removeprefix("a ").removeprefix("an ")
                if key not in names:
                    raise ValueError(
                        f"prompt {text!r} is not a class of {self.preset.name}; allowed: {list(names)}"
                    )
                labels.append(names.index(key))
            return labels
        labels = [int(x) for x in torch.as_tensor(class_labels).reshape(-1).tolist()]
        for raw, label in zip(_as_list(class_labels), labels, strict=False):
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(f"class label {raw!r} is not an integer")
            if not 0 <= label < num_classes:
                raise ValueError(f"class label {label} is out of range: allowed are 0..{num_classes - 1}")
        return labels

    @staticmethod
    def _generators(generator, count: int) -> tuple[list[torch.Generator], list[int]]:
        """One CPU generator per image, and the seed each was started from."""
        if isinstance(generator, (list, tuple)):
            if len(generator) != count:
                raise ValueError(f"got {len(generator)} generators for {count} images; pass one per image")
            seeds = [g.initial_seed() for g in generator]
        elif isinstance(generator, torch.Generator):
            # Derive per-image seeds from the one generator, so a call is reproducible and each image
            # can be redone alone from its seed.
            seeds = [int(s) for s in torch.randint(0, 2**62, (count,), generator=generator)]
        elif generator is None:
            seeds = [secrets.randbits(62) for _ in range(count)]
        else:
            raise ValueError(
                f"generator must be a torch.Generator, a list of them or None, got {type(generator)}"
            )
        return [torch.Generator().manual_seed(s) for s in seeds], seeds

    # ---- the call -----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        class_labels: int | list[int] | torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_interval: tuple[float, float] = (0.0, 1.0),
        decoding: str = "ar",
        output_type: str = "pil",
        callback_on_step_end=None,
    ) -> ImageOutput:
        """Generate images.

        Args:
            prompt: class names of the preset (e.g. "red circle"), one per image group.
            class_labels: class ids instead of names.
            num_images_per_prompt: images per label; they get consecutive places in the output.
            generator: one torch.Generator (per-image seeds are drawn from it), a list with one per image,
                or None (fresh random seeds, reported in ``.seeds``).
            guidance_scale, temperature, top_k, top_p: sampling; None takes the preset's default.
            cfg_interval: guide only tokens whose index / N lies in [lo, hi).
            decoding: strategy name, one of ``arstudio.decoding.DECODING_STRATEGIES``.
            output_type: "pil" or "np" (uint8 H x W x 3 arrays).
            callback_on_step_end: ``fn(step, num_steps, tokens_so_far)``; return False to stop early.
        """
        t0 = time.perf_counter()
        defaults = self.preset.defaults
        params = SamplingParams(
            guidance_scale=defaults.get("guidance_scale", 1.0) if guidance_scale is None else guidance_scale,
            temperature=defaults.get("temperature", 1.0) if temperature is None else temperature,
            top_k=defaults.get("top_k", 0) if top_k is None else top_k,
            top_p=defaults.get("top_p", 1.0) if top_p is None else top_p,
            cfg_interval=tuple(cfg_interval),
        )
        if decoding not in DECODING_STRATEGIES:
            raise ValueError(f"decoding={decoding!r} is not available; allowed: {DECODING_STRATEGIES}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not allowed; use one of {OUTPUT_TYPES}")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt={num_images_per_prompt!r} must be an integer >= 1")
        labels = [lab for lab in self._labels(prompt, class_labels) for _ in range(num_images_per_prompt)]
        generators, seeds = self._generators(generator, len(labels))

        label_tensor = torch.tensor(labels, dtype=torch.long, device=self.device)
        result = sample_autoregressive(self.generator, label_tensor, generators, params, callback_on_step_end)
        t1 = time.perf_counter()
        grid = self.tokenizer.grid_size
        tokens = result.tokens
        complete = tokens.shape[1] == grid * grid
        if complete:
            pixels = tensor_to_images(self.tokenizer.decode(tokens.view(-1, grid, grid)).float())
        else:  # stopped early by the callback: nothing to decode yet
            pixels = np.zeros((len(labels), 0, 0, 3), dtype=np.uint8)
        t2 = time.perf_counter()
        if output_type == "pil":
            from PIL import Image

            images = [Image.fromarray(p) for p in pixels] if complete else []
        else:
            images = list(pixels) if complete else []
        timings = {"sampling_s": t1 - t0, "decode_s": t2 - t1, "total_s": time.perf_counter() - t0,
                   "images_per_s": len(labels) / (time.perf_counter() - t0)}  # fmt: skip
        metadata = [
            {
                "preset": self.preset.name,
                "class_label": label,
                "class_name": self.preset.class_names[label] if self.preset.class_names else None,
                "seed": seed,
                "guidance_scale": params.guidance_scale,
                "temperature": params.temperature,
                "top_k": params.top_k,
                "top_p": params.top_p,
                "cfg_interval": list(params.cfg_interval),
                "decoding": decoding,
                "resolution": self.tokenizer.config.resolution,
                "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."),
            }
            for label, seed in zip(labels, seeds, strict=True)
        ]
        return ImageOutput(
            images=images,
            tokens=tokens.view(-1, grid, grid) if complete else tokens,
            seeds=seeds,
            timings=timings,
            stats=result.stats,
            metadata=metadata,
        )

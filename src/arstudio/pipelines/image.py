"""Image pipeline: tokenizer + generator + decoding strategy -> images and everything to reproduce them."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from arstudio.data.control import check_control_map
from arstudio.decoding import DECODING_PARAMS, DISTILLED_STRATEGIES, FIXED_SAMPLING_STRATEGIES
from arstudio.decoding.autoregressive import sample_autoregressive
from arstudio.decoding.continuous import sample_continuous
from arstudio.decoding.continuous_speculative import (
    ContinuousSpeculativeParams,
    sample_continuous_speculative,
)
from arstudio.decoding.distilled import draw_noise, sample_distilled, sample_distilled_hybrid
from arstudio.decoding.guidance import ControlSignal
from arstudio.decoding.lantern import latent_neighbours
from arstudio.decoding.logits import SAMPLING_KEYS, SamplingParams
from arstudio.decoding.speculative import SpeculativeParams, sample_speculative
from arstudio.generators.control import check_strength
from arstudio.generators.text_encoders import check_prompts
from arstudio.images import tensor_to_images

OUTPUT_TYPES = ("pil", "np")


@dataclass
class ImageOutput:
    images: list  # PIL images ("pil") or uint8 (H, W, 3) arrays ("np")
    tokens: torch.Tensor  # (num_images, h, w) token ids; (num_images, h, w, d) latents or level ids
    seeds: list[int]  # seed of each image's generator: generator=[torch.Generator().manual_seed(s)] redoes it
    timings: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    metadata: list[dict] = field(default_factory=list)  # one dict per image


@dataclass
class Conditions:
    """What the generator is conditioned on, one row per image, and how to describe each row."""

    cond: torch.Tensor  # labels (B,) or text states (B, L, D)
    negative: torch.Tensor | None  # same shape as cond, or None for the model's null condition
    describe: list[dict]  # per image: class_label/class_name or prompt/negative_prompt


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


class ImagePipeline:
    """Class presets take ``class_labels`` (ids) or ``prompt`` (class names such as "red circle");
    text presets take ``prompt`` (free text) and optionally ``negative_prompt``."""

    def __init__(
        self, tokenizer, generator, preset, device: torch.device, dtype: torch.dtype, text_encoder=None,
        drafter=None, distilled: dict | None = None,
    ):  # fmt: skip
        self.tokenizer = tokenizer
        self.generator = generator
        self.preset = preset
        self.device = device
        self.dtype = dtype
        self.text_encoder = text_encoder
        self.drafter = drafter  # speculative decoding's draft model, checked against the generator at load
        self._neighbours: dict[int, torch.Tensor] = {}  # LANTERN's latent-neighbour tables, per k
        self.distilled = distilled or {}  # "dd1" / "dd2": DDGenerator, checked against generator + tokenizer

    def __repr__(self) -> str:
        return f"ImagePipeline(preset={self.preset.name!r}, device={self.device}, dtype={self.dtype})"

    @property
    def decoding_strategies(self) -> tuple[str, ...]:
        """Strategies this preset can run: plain AR always; the others need a drafter for its generator,
        and LANTERN a tokenizer with a codebook (its latent neighbourhoods); distilled decoding a DD model."""
        distilled = (("dd1", "dd1_hybrid") if "dd1" in self.distilled else ()) + (
            ("dd2",) if "dd2" in self.distilled else ()
        )
        if self.drafter is None:
            return ("ar", *distilled)
        if getattr(self.generator, "token_kind", "discrete") != "discrete":
            return ("ar", "continuous_speculative")
        if not hasattr(self.tokenizer, "codebook_vectors"):  # DD maps noise into the codebook space too
            return ("ar", "speculative")
        return ("ar", "speculative", "lantern", *distilled)

    def _decoding_knobs(self, decoding: str, given: dict) -> dict:
        """The strategy's knobs: given values checked against their ranges, defaults for the rest. A knob
        the strategy does not use is an error rather than silently ignored."""
        params = {p.name: p for p in DECODING_PARAMS[decoding]}
        for name, value in given.items():
            if value is not None and name not in params:
                users = [s for s, knobs in DECODING_PARAMS.items() if name in {k.name for k in knobs}]
                raise ValueError(
                    f"{name}={value!r} applies to decoding in {users}, not decoding={decoding!r}"
                )
        knobs = {}
        for name, param in params.items():
            value = given.get(name)
            knobs[name] = param.default if value is None else param.check(value)
        return knobs  # lantern_k against the codebook size: latent_neighbours checks it, before sampling

    def _lantern_neighbours(self, k: int) -> torch.Tensor:
        if k not in self._neighbours:
            self._neighbours[k] = latent_neighbours(self.tokenizer.codebook_vectors(), k).to(self.device)
        return self._neighbours[k]

    def preview(self, tokens_so_far: torch.Tensor) -> list:
        """Decode a partial raster-order token sequence (B, n) to PIL images for progress previews.

        Positions not generated yet are filled with token 0 for the decoder and then painted mid-grey, so
        the preview shows exactly the part of the image that exists.
        """
        from PIL import Image

        grid = self.tokenizer.grid_size
        batch, done = tokens_so_far.shape[:2]
        rest = tokens_so_far.shape[2:]  # () for ids, (d,) for vector tokens
        full = tokens_so_far.new_zeros(batch, grid * grid, *rest)
        full[:, :done] = tokens_so_far
        pixels = tensor_to_images(self.tokenizer.decode(full.view(-1, grid, grid, *rest)).float())
        scale = pixels.shape[1] // grid  # pixels per token side
        known = (torch.arange(grid * grid) < done).view(grid, grid).numpy()
        known = known.repeat(scale, axis=0).repeat(scale, axis=1)  # (H, W) True where generated
        pixels[:, ~known] = 128
        return [Image.fromarray(p) for p in pixels]

    # ---- input handling -------------------------------------------------------------------------
    def _class_conditions(self, prompt, class_labels, negative_prompt, repeat: int) -> Conditions:
        if (prompt is None) == (class_labels is None):
            raise ValueError("pass exactly one of prompt (class names) or class_labels (class ids)")
        if negative_prompt is not None:
            raise ValueError(
                f"negative_prompt needs a text-to-image preset; {self.preset.name!r} is class-conditional"
            )
        names = self.preset.class_names
        num_classes = self.generator.config.num_classes
        if prompt is not None and not names:
            raise ValueError(
                f"{self.preset.name!r} has no class names: pass class_labels (0..{num_classes - 1})"
            )
        if prompt is not None:
            labels = []
            for text in _as_list(prompt):
                key = str(text).strip().lower().removeprefix("a ").removeprefix("an ")
                if key not in names:
                    raise ValueError(
                        f"prompt {text!r} is not a class of {self.preset.name}; allowed: {list(names)}"
                    )
                labels.append(names.index(key))
        else:
            labels = []
            for raw in _as_list(
                class_labels.tolist() if isinstance(class_labels, torch.Tensor) else class_labels
            ):
                if isinstance(raw, bool) or not isinstance(raw, (int, np.integer)):
                    raise ValueError(f"class label {raw!r} is not an integer")
                if not 0 <= raw < num_classes:
                    raise ValueError(f"class label {raw} is out of range: allowed are 0..{num_classes - 1}")
                labels.append(int(raw))
        labels = [label for label in labels for _ in range(repeat)]
        describe = [{"class_label": lab, "class_name": names[lab] if names else None} for lab in labels]
        cond = torch.tensor(labels, dtype=torch.long, device=self.device)
        return Conditions(cond, None, describe)

    def _text_conditions(self, prompt, class_labels, negative_prompt, repeat: int) -> Conditions:
        if class_labels is not None:
            raise ValueError(f"{self.preset.name!r} is text-to-image: pass prompt, not class_labels")
        if prompt is None:
            raise ValueError(
                f"{self.preset.name!r} needs a prompt, e.g. 'a large red circle at the top left'"
            )
        prompts = check_prompts(prompt)
        negatives = None
        if negative_prompt is not None:
            negatives = check_prompts(negative_prompt)
            if len(negatives) == 1:
                negatives = negatives * len(prompts)
            if len(negatives) != len(prompts):
                raise ValueError(
                    f"got {len(negatives)} negative prompts for {len(prompts)} prompts; pass 1 or one each"
                )

        def encode(texts: list[str]) -> torch.Tensor:
            states = self.text_encoder(texts).to(device=self.device, dtype=self.dtype)
            return states.repeat_interleave(repeat, dim=0)

        describe = [
            {"prompt": p, "negative_prompt": negatives[i] if negatives else None}
            for i, p in enumerate(prompts)
            for _ in range(repeat)
        ]
        return Conditions(encode(prompts), encode(negatives) if negatives else None, describe)

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

    def _head_steps(self, head: str, num_inference_steps) -> int | None:
        """Head sampling steps for continuous heads (the bridge head's are its d dimensions); None selects
        the discrete sampler."""
        if head in ("diffusion", "flow"):
            steps = self.preset.defaults.get("num_inference_steps", 25)
            return steps if num_inference_steps is None else num_inference_steps
        if num_inference_steps is not None:
            raise ValueError(
                f"num_inference_steps={num_inference_steps!r} applies to diffusion/flow heads; preset "
                f"{self.preset.name!r} has a {head} head: leave it None"
            )
        return self.generator.config.token_dim if head == "bridge" else None

    def sampling_conflicts(self, decoding: str, settings: dict) -> dict[str, tuple]:
        """{name: (asked, distilled)} for each sampling setting in ``settings`` (guidance_scale,
        temperature, top_k, top_p; other keys and None values are ignored) that ``decoding`` cannot apply:
        one-shot distilled decoding (``FIXED_SAMPLING_STRATEGIES``) samples the teacher at the settings it
        was distilled with. Empty for every other strategy."""
        if decoding not in FIXED_SAMPLING_STRATEGIES:
            return {}
        distilled_at = SamplingParams.from_defaults(self.preset.defaults)
        return {
            k: (v, getattr(distilled_at, k))
            for k, v in settings.items()
            if k in SAMPLING_KEYS and v is not None and v != getattr(distilled_at, k)
        }

    def _sample_distilled(self, decoding, knobs, conditions: Conditions, generators, params, noise):
        """dd1 / dd2 (1 or 2 forwards) or dd1_hybrid; noise from each image's generator unless given."""
        model = self.distilled[decoding.removesuffix("_hybrid")]
        codebook = self.tokenizer.codebook_vectors().detach()
        if noise is None:
            noise = draw_noise(generators, model.seq_len, model.config.token_dim, self.device)
        noise = noise.to(self.device)
        if decoding == "dd1_hybrid":
            return sample_distilled_hybrid(model, self.generator, conditions.cond, noise, codebook, params,
                                           knobs["dd_hybrid_start"], conditions.negative)  # fmt: skip
        return sample_distilled(model, conditions.cond, noise, codebook, knobs["num_inference_steps"])

    def _control_signal(self, control_image, control_type, control_strength, control_guidance_scale,
                        decoding: str, count: int, repeat: int) -> ControlSignal | None:  # fmt: skip
        """The control tokens of a call (None without a control image), after checking every control knob."""
        encoder = getattr(self.generator, "control_encoder", None)
        given = {"control_image": control_image, "control_type": control_type,
                 "control_guidance_scale": control_guidance_scale}  # fmt: skip
        if control_strength != 1.0:
            given["control_strength"] = control_strength
        if encoder is None:
            used = [name for name, value in given.items() if value is not None]
            if used:
                raise ValueError(f"{used[0]} needs a control preset; {self.preset.name!r} takes no control")
            return None
        kind = encoder.config.types[0] if control_type is None else control_type
        if kind not in encoder.config.types:
            raise ValueError(f"control_type={kind!r} is unknown; allowed: {encoder.config.types}")
        strength = check_strength(control_strength)
        if control_image is None:
            if control_type is not None or control_guidance_scale is not None or control_strength != 1.0:
                raise ValueError(
                    "control_type / control_strength / control_guidance_scale need a control_image"
                )
            return None
        if decoding != "ar":
            raise ValueError(
                f"control works with decoding='ar' only (the drafters take no control), got {decoding!r}"
            )
        maps = control_image if isinstance(control_image, (list, tuple)) else [control_image]
        prompts = count // repeat
        if len(maps) not in (1, prompts):
            raise ValueError(
                f"got {len(maps)} control images for {prompts} prompts/labels; pass 1 or one each"
            )
        resolution = encoder.config.resolution
        arrays = [check_control_map(m, resolution) for m in maps] * (prompts if len(maps) == 1 else 1)
        batch = torch.from_numpy(np.stack(arrays)).repeat_interleave(repeat, dim=0)[:, None]  # (B, 1, R, R)
        batch = batch.to(device=self.device, dtype=self.dtype)
        tokens = self.generator.encode_control(batch, [kind] * count, strength)
        return ControlSignal(tokens, encoder.null(count), control_guidance_scale)

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
        negative_prompt: str | list[str] | None = None,
        draft_tokens: int | None = None,
        lantern_k: int | None = None,
        lantern_delta: float | None = None,
        lantern_lambda: float | None = None,
        cspd_inner_temperature: float | None = None,
        num_inference_steps: int | None = None,
        dd_hybrid_start: int | None = None,
        noise: torch.Tensor | None = None,
        control_image=None,
        control_type: str | None = None,
        control_strength: float = 1.0,
        control_guidance_scale: float | None = None,
    ) -> ImageOutput:
        """Generate images.

        Args:
            prompt: text for text presets; class names of the preset (e.g. "red circle") for class presets.
            class_labels: class ids instead of names (class presets).
            num_images_per_prompt: images per prompt/label; they get consecutive places in the output.
            generator: one torch.Generator (per-image seeds are drawn from it), a list with one per image,
                or None (fresh random seeds, reported in ``.seeds``).
            guidance_scale, temperature, top_k, top_p: sampling; None takes the preset's default.
            cfg_interval: guide only tokens whose index / N lies in [lo, hi).
            decoding: strategy name, one of ``self.decoding_strategies``.
            output_type: "pil" or "np" (uint8 H x W x 3 arrays).
            callback_on_step_end: ``fn(step, num_steps, tokens_so_far)``; return False to stop early.
            negative_prompt: text presets only: what guidance steers away from (one, or one per prompt);
                None uses the learned null condition. Needs guidance_scale != 1 to have an effect.
            draft_tokens: speculative/lantern: tokens drafted per target forward (default 4).
            lantern_k, lantern_delta, lantern_lambda: LANTERN's neighbourhood size, total-variation budget
                per token (0 = exact) and LANTERN++ cap (1 = off); see ``arstudio.decoding.lantern``.
            cspd_inner_temperature: continuous_speculative: 1 is the exact acceptance test, > 1 relaxes it
                (see ``arstudio.decoding.continuous_speculative``).
            num_inference_steps: sampling steps of a diffusion/flow head per token (None: the preset's
                default); with decoding "dd1"/"dd2" the DD model's forwards (1 or 2, default 1); other
                heads have no such steps and refuse it.
            dd_hybrid_start: dd1_hybrid: tokens kept from the first DD step before the teacher continues
                (see ``arstudio.decoding.distilled``).
            noise: dd1/dd1_hybrid/dd2: the (images, tokens, codebook dims) noise to map, instead of drawing
                it from each image's generator.
            control_image: control presets: a one-channel map at the tokenizer's resolution (uint8/bool/float
                array (H, W), PIL "L"), one for all images or a list with one per prompt/label; see
                ``arstudio.data.control`` (``make_control`` computes one from an RGB image).
            control_type: one of the model's control types (e.g. "edges", "mask"); default the first.
            control_strength: scales the control tokens, in [0, 2]: null + s * (control - null).
            control_guidance_scale: guidance over the control on its own scale (three CFG streams); None
                guides class/text and control jointly with ``guidance_scale``.
        """
        t0 = time.perf_counter()
        defaults = self.preset.defaults
        asked = {"guidance_scale": guidance_scale, "temperature": temperature, "top_k": top_k, "top_p": top_p}
        params = SamplingParams.from_defaults(defaults, **asked, cfg_interval=tuple(cfg_interval))
        if decoding not in DECODING_PARAMS:
            raise ValueError(f"decoding={decoding!r} is unknown; allowed: {tuple(DECODING_PARAMS)}")
        if decoding not in self.decoding_strategies:
            why = "it ships no drafter" if self.drafter is None else "its tokenizer has no codebook"
            if decoding in DISTILLED_STRATEGIES:
                why = f"it ships no {decoding.removesuffix('_hybrid')} model"
            if getattr(self.generator, "control_encoder", None) is not None:
                why = "a control preset decodes with decoding='ar' only"
            raise ValueError(
                f"decoding={decoding!r} is not available for preset {self.preset.name!r} ({why}); "
                f"allowed: {self.decoding_strategies}"
            )
        knobs = self._decoding_knobs(decoding, {"draft_tokens": draft_tokens, "lantern_k": lantern_k,
                                                "lantern_delta": lantern_delta, "lantern_lambda": lantern_lambda,
                                                "cspd_inner_temperature": cspd_inner_temperature,
                                                "dd_hybrid_start": dd_hybrid_start})  # fmt: skip
        distilled = decoding in DISTILLED_STRATEGIES
        if distilled and decoding != "dd1_hybrid":  # here num_inference_steps counts DD forwards
            knobs.update(self._decoding_knobs(decoding, {"num_inference_steps": num_inference_steps}))
        elif distilled and num_inference_steps is not None:
            raise ValueError(f"num_inference_steps={num_inference_steps!r} does not apply to dd1_hybrid (its "
                             "forwards follow from dd_hybrid_start); leave it None")  # fmt: skip
        conflicts = self.sampling_conflicts(decoding, asked)
        if conflicts:
            distilled_at = SamplingParams.from_defaults(defaults)
            raise ValueError(
                f"decoding={decoding!r} samples the teacher's default sampling it was distilled with "
                f"({', '.join(f'{k}={getattr(distilled_at, k)!r}' for k in asked)}); "
                f"{', '.join(f'{k}={v[0]!r}' for k, v in conflicts.items())} cannot apply "
                "(use decoding='dd1_hybrid' or 'ar' to change it)"
            )
        if noise is not None and not distilled:
            raise ValueError(
                f"noise= applies to decoding in {DISTILLED_STRATEGIES}, not decoding={decoding!r}"
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not allowed; use one of {OUTPUT_TYPES}")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt={num_images_per_prompt!r} must be an integer >= 1")
        make = self._text_conditions if self.text_encoder is not None else self._class_conditions
        conditions = make(prompt, class_labels, negative_prompt, num_images_per_prompt)
        count = len(conditions.describe)
        generators, seeds = self._generators(generator, count)
        control = self._control_signal(control_image, control_type, control_strength, control_guidance_scale,
                                       decoding, count, num_images_per_prompt)  # fmt: skip

        head = getattr(self.generator.head, "kind", "categorical")
        steps = None if distilled else self._head_steps(head, num_inference_steps)
        if distilled:
            result = self._sample_distilled(decoding, knobs, conditions, generators, params, noise)
        elif decoding == "continuous_speculative":
            spec = ContinuousSpeculativeParams(knobs["draft_tokens"], steps, knobs["cspd_inner_temperature"])
            result = sample_continuous_speculative(self.generator, self.drafter, conditions.cond, generators,
                                                   params, spec, conditions.negative, callback_on_step_end)  # fmt: skip
        elif steps is not None:  # vector tokens: the continuous sampler
            result = sample_continuous(self.generator, conditions.cond, generators, params, steps,
                                       callback_on_step_end, negative_cond=conditions.negative,
                                       control=control)  # fmt: skip
        elif decoding == "ar":
            result = sample_autoregressive(self.generator, conditions.cond, generators, params,
                                           callback_on_step_end, negative_cond=conditions.negative,
                                           control=control)  # fmt: skip
        else:
            lantern = decoding == "lantern"
            spec = SpeculativeParams(knobs["draft_tokens"], knobs.get("lantern_delta", 0.0),
                                     knobs.get("lantern_lambda", 1.0))  # fmt: skip
            neighbours = self._lantern_neighbours(knobs["lantern_k"]) if lantern else None
            result = sample_speculative(self.generator, self.drafter, conditions.cond, generators, params, spec,
                                        neighbours, conditions.negative, callback_on_step_end)  # fmt: skip
        t1 = time.perf_counter()
        grid = self.tokenizer.grid_size
        tokens = result.tokens
        complete = tokens.shape[1] == grid * grid
        grid_shape = (-1, grid, grid, *tokens.shape[2:])  # (B, N, ...) raster order -> (B, h, w, ...)
        images = []
        if complete:  # a callback may have stopped sampling early: then there is nothing to decode
            if result.vectors is not None:  # distilled decoding's regressed positions go to the decoder as is
                decoded = self.tokenizer.decode_vectors(
                    result.vectors.view(-1, grid, grid, result.vectors.shape[-1])
                )
            else:
                decoded = self.tokenizer.decode(tokens.view(grid_shape))
            pixels = tensor_to_images(decoded.float())
            if output_type == "pil":
                from PIL import Image

                images = [Image.fromarray(p) for p in pixels]
            else:
                images = list(pixels)
        t2 = time.perf_counter()
        timings = {
            "sampling_s": t1 - t0,
            "decode_s": t2 - t1,
            "total_s": t2 - t0,
            "images_per_s": count / (t2 - t0),
        }
        shared = {
            "preset": self.preset.name,
            "guidance_scale": params.guidance_scale,
            "temperature": params.temperature,
            "top_k": params.top_k,
            "top_p": params.top_p,
            "cfg_interval": list(params.cfg_interval),
            "decoding": decoding,
            **knobs,
            "tokenizer": type(self.tokenizer).__name__,
            "head": head,
            "num_inference_steps": knobs.get(
                "num_inference_steps", None if head in ("categorical", "bridge") else steps
            ),
            "resolution": self.tokenizer.config.resolution,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        if control is not None:
            kind = control_type or self.generator.control_encoder.config.types[0]
            shared.update(control_type=kind, control_strength=float(control_strength),
                          control_guidance_scale=control_guidance_scale)  # fmt: skip
        metadata = [
            {**shared, **row, "seed": seed} for row, seed in zip(conditions.describe, seeds, strict=True)
        ]
        return ImageOutput(
            images=images,
            tokens=tokens.view(grid_shape) if complete else tokens,
            seeds=seeds,
            timings=timings,
            stats=result.stats,
            metadata=metadata,
        )

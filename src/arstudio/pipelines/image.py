"""Image pipeline: tokenizer + generator + decoding strategy -> images and everything to reproduce them.

A call runs in stages, as diffusers' pipelines do: ``check_inputs`` (every check, before any work) ->
``encode_conditions`` -> ``prepare_control`` -> ``sample`` (the strategy's ``run``) -> ``decode`` ->
``describe`` (metadata). The strategies are ``arstudio.decoding.strategies.STRATEGIES``.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from arstudio.checks import trusted_values
from arstudio.decoding.guidance import ControlSignal
from arstudio.decoding.logits import SamplingParams
from arstudio.decoding.speculative_defaults import write_defaults
from arstudio.decoding.strategies import (
    STRATEGIES,
    DecodeRequest,
    Strategy,
    check_knobs,
    get_strategy,
    knob_names,
)
from arstudio.decoding.types import DecodeResult, StepCallback
from arstudio.images import tensor_to_images
from arstudio.io import atomic_write_bytes
from arstudio.pipelines.callbacks import check_step_end_callback, step_callback
from arstudio.pipelines.inputs import (
    Conditions,
    ControlRequest,
    check_control,
    check_output,
    class_conditions,
    control_signal,
    per_image_generators,
    text_conditions,
)

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
PIPELINE_FILE = "pipeline.json"  # the preset name and the components of a saved pipeline folder


@dataclass
class ImageOutput:
    images: list  # PIL images ("pil") or uint8 (H, W, 3) arrays ("np")
    tokens: torch.Tensor  # (num_images, h, w) token ids; (num_images, h, w, d) latents or level ids
    seeds: list[int]  # seed of each image's generator: generator=[torch.Generator().manual_seed(s)] redoes it
    timings: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    metadata: list[dict] = field(default_factory=list)  # one dict per image

    def to_tuple(self) -> tuple:
        return self.images, self.tokens, self.seeds, self.timings, self.stats, self.metadata


@dataclass(frozen=True)
class Plan:
    """A call after ``check_inputs``: the strategy and everything it runs with except the tensors."""

    strategy: Strategy
    params: SamplingParams
    knobs: dict
    head_steps: int | None
    latents: torch.Tensor | None
    callback: StepCallback | None
    control: ControlRequest | None
    output_type: str
    repeat: int  # images per prompt / label


class ImagePipeline:
    """Class presets take ``class_labels`` (ids) or ``prompt`` (class names such as "red circle");
    text presets take ``prompt`` (free text) and optionally ``negative_prompt``.

    Call arguments (``pipe(...)``):
        prompt: text for text presets; class names of the preset (e.g. "red circle") for class presets.
        class_labels: class ids instead of names (class presets).
        num_images_per_prompt: images per prompt/label; they get consecutive places in the output.
        generator: one torch.Generator (per-image seeds are drawn from it), a list with one per image,
            or None (fresh random seeds, reported in ``.seeds``).
        guidance_scale, temperature, top_k, top_p: sampling; None takes the preset's default.
        cfg_interval: guide only tokens whose index / N lies in [lo, hi); None guides every token.
            A setting the strategy cannot apply (top-k/p on a diffusion head, any change to one-shot
            distilled decoding) is refused, never ignored.
        decoding: strategy name, one of ``self.decoding_strategies``.
        output_type: "pil" or "np" (uint8 H x W x 3 arrays).
        return_dict: False returns ``ImageOutput.to_tuple()`` (images first), as diffusers does.
        callback_on_step_end: ``fn(pipe, step, timestep, callback_kwargs) -> dict`` (diffusers' contract,
            see ``arstudio.pipelines.callbacks``); set ``pipe.interrupt = True`` in it to stop early.
        callback_on_step_end_tensor_inputs: names in ``callback_kwargs``: ``self.callback_tensor_inputs``.
        negative_prompt: text presets only: what guidance steers away from (one, or one per prompt);
            None uses the learned null condition. Needs guidance_scale != 1 to have an effect.
        num_inference_steps: sampling steps of a diffusion/flow head per token (None: the preset's
            default); with decoding "dd1"/"dd2" the DD model's forwards (1 or 2, default 1); other
            heads have no such steps and refuse it.
        latents: dd1/dd1_hybrid/dd2: the (images, tokens, codebook dims) noise to map, instead of drawing
            it from each image's generator.
        control_image: control presets: a one-channel map at the tokenizer's resolution (uint8/bool/float
            array (H, W), PIL "L"), one for all images or a list with one per prompt/label; see
            ``arstudio.data.control`` (``make_control`` computes one from an RGB image).
        control_type: one of the model's control types (e.g. "edges", "mask"); default the first.
        control_strength: scales the control tokens, in [0, 2]: null + s * (control - null).
        control_guidance_scale: guidance over the control on its own scale (three CFG streams); None
            guides class/text and control jointly with ``guidance_scale``.
        callback: deprecated: ``fn(step, num_steps, tokens_so_far)``, False stops early.
        noise: deprecated name of ``latents``.
        **decoding_knobs: the strategy's knobs (``arstudio.decoding.DECODING_PARAMS``), e.g. draft_tokens,
            lantern_k, lantern_delta, lantern_lambda, cspd_inner_temperature, dd_hybrid_start.
    """

    # Builds a pipeline from (preset name, weights folder, device, dtype): pipelines/loading.py sets it, as it
    # imports this module (which therefore cannot import it). ``from_pretrained`` and video keyframes use it.
    loader: Callable[..., ImagePipeline] | None = None

    def __init__(
        self,
        tokenizer,
        generator,
        preset,
        device: torch.device,
        dtype: torch.dtype,
        text_encoder=None,
        drafter=None,
        distilled: dict | None = None,
    ):
        self.tokenizer = tokenizer
        self.generator = generator
        self.preset = preset
        self.device = device
        self.dtype = dtype
        self.text_encoder = text_encoder
        self.drafter = drafter  # speculative decoding's draft model, checked against the generator at load
        self.distilled = distilled or {}  # "dd1" / "dd2": DDGenerator, checked against generator + tokenizer
        self.cache: dict = {}  # tables strategies derive from the models (LANTERN's neighbours); ``to`` empties it
        self.knob_defaults: dict = {}  # {strategy: {knob: value}} a preset's tuned defaults (loading sets them)
        self._interrupt = False
        self.num_timesteps = 0  # tokens (frames, for video) the running call decodes, as in diffusers

    def __repr__(self) -> str:
        return f"{type(self).__name__}(preset={self.preset.name!r}, device={self.device}, dtype={self.dtype})"

    # ---- components, devices, folders ------------------------------------------------------------------
    @property
    def components(self) -> dict[str, torch.nn.Module]:
        """The models this pipeline holds, by the folder name each is saved under."""
        parts = {"tokenizer": self.tokenizer, "generator": self.generator, "drafter": self.drafter}
        parts.update(self.distilled)
        return {name: model for name, model in parts.items() if model is not None}

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ImagePipeline:
        """Move every model (and the text encoder) to ``device`` and cast the models to ``dtype``; in place."""
        if isinstance(device, torch.dtype):  # pipe.to(torch.float16), as diffusers allows
            device, dtype = None, device
        device = self.device if device is None else torch.device(device)
        dtype = self.dtype if dtype is None else dtype
        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype={dtype} is not supported; use one of {SUPPORTED_DTYPES}")
        self.tokenizer = self.tokenizer.to(device=device, dtype=dtype)
        self.generator = self.generator.to(device=device, dtype=dtype)
        if self.drafter is not None:
            self.drafter = self.drafter.to(device=device, dtype=dtype)
        self.distilled = {
            name: model.to(device=device, dtype=dtype) for name, model in self.distilled.items()
        }
        if self.text_encoder is not None:  # frozen, read in float32: only its device follows
            self.text_encoder = self.text_encoder.to(device)
        self.device, self.dtype, self.cache = device, dtype, {}
        return self

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write every model (``<name>/config.json`` + ``model.safetensors``) and ``pipeline.json`` (the
        preset); ``from_pretrained(folder)`` or ``load_pipeline(preset, weights=folder)`` loads it back."""
        paired = [name for name in self.components if name not in ("tokenizer", "generator")]
        if self.dtype != torch.float32 and paired:
            raise ValueError(
                f"save_pretrained needs a float32 pipeline: {paired} check their pairing with the "
                f"generator's float32 weights, which {self.dtype} has rounded; load it in float32"
            )
        folder = Path(folder)
        for name, model in self.components.items():
            model.save_pretrained(folder / name)
        info = {"class": type(self).__name__, "preset": self.preset.name, "components": list(self.components)}
        atomic_write_bytes(folder / PIPELINE_FILE, json.dumps(info, indent=2).encode())
        if self.knob_defaults:  # tuned speculative defaults travel with the drafter they were measured for
            write_defaults(folder, self.knob_defaults, {"saved_from": self.preset.name})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device=None, dtype=None, **load_options) -> ImagePipeline:
        """The pipeline ``save_pretrained`` wrote to ``folder``, its models checked against its preset;
        ``load_options`` go to ``load_pipeline`` as they are."""
        path = Path(folder) / PIPELINE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no {PIPELINE_FILE}: it was not written by save_pretrained")
        info = json.loads(path.read_text())
        pipe = cls.loader(info["preset"], device=device, dtype=dtype, weights=folder, **load_options)
        if not isinstance(pipe, cls):
            raise ValueError(f"{folder} holds a {type(pipe).__name__}, not a {cls.__name__}")
        return pipe

    # ---- strategies ---------------------------------------------------------------------------------------
    @property
    def decoding_strategies(self) -> tuple[str, ...]:
        """The strategies this pipeline can run, in the registry's order (see each one's ``available``)."""
        return tuple(name for name, s in STRATEGIES.items() if s.available(self) is None)

    def strategy(self, name: str) -> Strategy:
        """The strategy ``name``, refused with the reason when this pipeline cannot run it."""
        strategy = get_strategy(name)
        why = strategy.available(self)
        if why is not None:
            raise ValueError(
                f"decoding={name!r} is not available for preset {self.preset.name!r} ({why}); "
                f"allowed: {self.decoding_strategies}"
            )
        return strategy

    def sampling_conflicts(self, decoding: str, settings: dict) -> dict[str, tuple]:
        """{name: (asked, used instead)} for each sampling setting in ``settings`` that ``decoding`` cannot
        apply here (None values and other keys are ignored); a call with any of them is refused."""
        return get_strategy(decoding).sampling(self, settings)[1]

    @property
    def interrupt(self) -> bool:
        """Set True (from a step callback) to stop the running call after this step, as in diffusers."""
        return self._interrupt

    @interrupt.setter
    def interrupt(self, value: bool) -> None:
        self._interrupt = bool(value)

    @property
    def callback_tensor_inputs(self) -> tuple[str, ...]:
        """What ``callback_on_step_end_tensor_inputs`` may name: the tokens decided so far."""
        return ("latents",) if self.generator.token_kind == "continuous" else ("tokens",)

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

    # ---- the stages of a call --------------------------------------------------------------------------
    def check_inputs(
        self,
        decoding: str,
        sampling: dict,
        knobs: dict,
        num_inference_steps,
        latents,
        output_type: str,
        repeat: int,
        callbacks: tuple,
        control: tuple,
    ) -> Plan:
        """Every check a call makes before any work; the plan the later stages follow."""
        check_output(output_type, repeat, "num_images_per_prompt")
        strategy = self.strategy(decoding)
        params, conflicts = strategy.sampling(self, sampling)
        if conflicts:
            raise ValueError(strategy.refusal(self, conflicts))
        steps_is_knob = "num_inference_steps" in {p.name for p in strategy.knobs}
        given = {**knobs, "num_inference_steps": num_inference_steps} if steps_is_knob else knobs
        published = self.preset.knob_defaults.get(strategy.name, {})  # the model's authors' setting
        tuned = self.knob_defaults.get(strategy.name, {})  # measured by `arstudio tune-speculative`
        given = {k: v for k, v in given.items() if v is not None}
        knobs = check_knobs(strategy, {**published, **tuned, **given})
        head_steps = strategy.head_steps(self, None if steps_is_knob else num_inference_steps)
        latents_name, latents = latents
        if latents is not None and not strategy.takes_latents:
            users = [s.name for s in STRATEGIES.values() if s.takes_latents]
            raise ValueError(f"{latents_name}= applies to decoding in {users}, not decoding={decoding!r}")
        fn, names, legacy = callbacks
        names = check_step_end_callback(fn, names, self.callback_tensor_inputs)
        callback = step_callback(self, fn, names, legacy)
        control = check_control(self, *control)
        return Plan(strategy, params, knobs, head_steps, latents, callback, control, output_type, repeat)

    def encode_conditions(self, prompt, class_labels, negative_prompt, repeat: int) -> Conditions:
        make = text_conditions if self.text_encoder is not None else class_conditions
        return make(self, prompt, class_labels, negative_prompt, repeat)

    def prepare_control(self, plan: Plan, count: int) -> ControlSignal | None:
        return control_signal(self, plan.control, count, plan.repeat)

    def sample(self, plan: Plan, conditions: Conditions, generators, control) -> DecodeResult:
        """The plan's strategy, run on the conditions with one generator per image."""
        request = DecodeRequest(
            conditions.cond,
            conditions.negative,
            generators,
            plan.params,
            plan.knobs,
            plan.head_steps,
            plan.callback,
            control,
            plan.latents,
        )
        self._interrupt = False
        self.num_timesteps = self.generator.seq_len
        return plan.strategy.run(self, request)

    def decode(self, result: DecodeResult, output_type: str) -> list:
        """Images of a complete result; none when a callback stopped sampling early."""
        grid = self.tokenizer.grid_size
        if result.tokens.shape[1] != grid * grid:
            return []
        if result.vectors is not None:  # distilled decoding's regressed positions go to the decoder as is
            decoded = self.tokenizer.decode_vectors(
                result.vectors.view(-1, grid, grid, result.vectors.shape[-1])
            )
        else:
            decoded = self.tokenizer.decode(result.tokens.view(-1, grid, grid, *result.tokens.shape[2:]))
        pixels = tensor_to_images(decoded.float())
        if output_type == "np":
            return list(pixels)
        from PIL import Image

        return [Image.fromarray(p) for p in pixels]

    def describe(self, plan: Plan, conditions: Conditions, seeds: list[int]) -> list[dict]:
        """One metadata dict per image: what was applied to make it (a setting the strategy cannot apply
        was refused, so it is absent here rather than recorded as if applied)."""
        applied = plan.strategy.applied_settings(self.generator)
        sampling = {k: getattr(plan.params, k) for k in applied}
        if "cfg_interval" in sampling:
            sampling["cfg_interval"] = list(sampling["cfg_interval"])
        shared = {
            "preset": self.preset.name,
            **sampling,
            "decoding": plan.strategy.name,
            **plan.strategy.applied_knobs(self.generator, plan.knobs),
            "tokenizer": type(self.tokenizer).__name__,
            "head": getattr(self.generator.head, "kind", "categorical"),
            "num_inference_steps": plan.knobs.get("num_inference_steps", self._recorded_head_steps(plan)),
            "resolution": self.tokenizer.config.resolution,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        if plan.control is not None:
            shared.update(plan.control.describe())
        return [{**shared, **row, "seed": seed} for row, seed in zip(conditions.describe, seeds, strict=True)]

    def _recorded_head_steps(self, plan: Plan) -> int | None:
        """Head steps worth recording: a diffusion/flow head's (the bridge's d dimensions are not a choice)."""
        return (
            None
            if getattr(self.generator.head, "kind", "categorical") in ("categorical", "bridge")
            else plan.head_steps
        )

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
        cfg_interval: tuple[float, float] | None = None,
        decoding: str = "ar",
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        latents: torch.Tensor | None = None,
        control_image=None,
        control_type: str | None = None,
        control_strength: float = 1.0,
        control_guidance_scale: float | None = None,
        callback: StepCallback | None = None,
        noise: torch.Tensor | None = None,
        **decoding_knobs,
    ) -> ImageOutput | tuple:
        """Generate images; the arguments are in the class docstring."""
        t0 = time.perf_counter()
        sampling = {
            "guidance_scale": guidance_scale,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "cfg_interval": cfg_interval,
        }
        plan = self.check_inputs(
            decoding,
            sampling,
            _known_knobs(decoding_knobs),
            num_inference_steps,
            _latents(latents, noise),
            output_type,
            num_images_per_prompt,
            (callback_on_step_end, callback_on_step_end_tensor_inputs, callback),
            (control_image, control_type, control_strength, control_guidance_scale),
        )
        conditions = self.encode_conditions(prompt, class_labels, negative_prompt, num_images_per_prompt)
        generators, seeds = per_image_generators(generator, len(conditions.describe))
        control = self.prepare_control(plan, len(conditions.describe))
        with trusted_values():  # labels were checked on the host, ids are the sampler's: no range reads
            result = self.sample(plan, conditions, generators, control)
            t1 = time.perf_counter()
            images = self.decode(result, output_type)
        times = (t0, t1, time.perf_counter())
        out = self._output(images, result, plan, conditions, seeds, times)
        return out if return_dict else out.to_tuple()

    def _output(self, images, result: DecodeResult, plan: Plan, conditions, seeds, times) -> ImageOutput:
        tokens = self._grid_tokens(result.tokens)
        metadata = self.describe(plan, conditions, seeds)
        return ImageOutput(images, tokens, seeds, _timings(*times, len(seeds)), result.stats, metadata)

    def _grid_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, ...) raster order -> (B, h, w, ...) when complete; a stopped call's (B, n, ...) as is."""
        grid = self.tokenizer.grid_size
        return tokens.view(-1, grid, grid, *tokens.shape[2:]) if tokens.shape[1] == grid * grid else tokens


def _known_knobs(given: dict) -> dict:
    """Keyword arguments a call passes on to the strategies; any other name is refused as Python would."""
    unknown = sorted(set(given) - knob_names())
    if unknown:
        raise TypeError(
            f"unexpected keyword argument {unknown[0]!r}; strategy knobs are {sorted(knob_names())}"
        )
    return given


def _latents(latents, noise) -> tuple[str, torch.Tensor | None]:
    """(the name the caller used, the given noise): ``noise=`` is the deprecated name of ``latents=``."""
    if noise is None:
        return "latents", latents
    if latents is not None:
        raise ValueError("pass latents= or its deprecated name noise=, not both")
    warnings.warn("noise= is deprecated; pass latents=", DeprecationWarning, stacklevel=4)
    return "noise", noise


def _timings(t0: float, t1: float, t2: float, count: int) -> dict:
    return {"sampling_s": t1 - t0, "decode_s": t2 - t1, "total_s": t2 - t0, "images_per_s": count / (t2 - t0)}

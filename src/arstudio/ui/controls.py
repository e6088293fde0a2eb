"""The request controls (preset, condition, seed, sampling, decoding strategy and its knobs) and the one
function that turns their values into a pipeline call. The Image tab and the Decoding lab share both.

Strategy knobs are built from ``arstudio.decoding.DECODING_PARAMS``: a strategy added there gets its
controls here with no UI change, and a preset shows only the strategies its pipeline supports.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

import gradio as gr
import torch

from arstudio.decoding import DECODING_PARAMS
from arstudio.ui.common import MAX_IMAGES, PipelineCache, is_text_preset

SEED_LIMIT = 2**63  # seeds are integers in [0, 2^63), as the CLI and the API draw them
MAX_STEPS = 1000  # diffusion/flow steps per token


@dataclass
class Controls:
    preset: gr.Dropdown
    class_name: gr.Dropdown
    class_id: gr.Number
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    seed: gr.Textbox
    randomize: gr.Checkbox
    num_images: gr.Number
    guidance_scale: gr.Number
    temperature: gr.Number
    top_k: gr.Number
    top_p: gr.Slider
    num_inference_steps: gr.Number
    decoding: gr.Dropdown
    knobs: dict = field(default_factory=dict)  # (strategy, param name) -> component
    knob_groups: dict = field(default_factory=dict)  # strategy -> gr.Group holding its knobs

    def values(self) -> list:
        """The value-carrying components, in a fixed order."""
        plain = [v for k, v in vars(self).items() if k not in ("knobs", "knob_groups")]
        return [*plain, *self.knobs.values()]

    def inputs(self) -> set:
        """As a set, so handlers get one dict {component: value} (Gradio's idiom for many inputs)."""
        return set(self.values())

    def updatable(self) -> list:
        """Everything a preset change or a loaded recipe may update: values and the knob groups."""
        return [*self.values(), *self.knob_groups.values()]


NEEDS_WEIGHTS = " (needs weights)"


def preset_choices(presets: list[str]) -> list[tuple[str, str]]:
    """(label, name) per preset: hub presets without a local copy of their files are marked; picking one
    shows the loader's message, which says where to get the files and where to put them."""
    import arstudio

    return [(name + NEEDS_WEIGHTS if arstudio.needs_weights(name) else name, name) for name in presets]


def build_controls(presets: list[str], start) -> Controls:
    """Lay out the controls (inside the caller's ``gr.Blocks`` context), set up for pipeline ``start``.

    Dropdowns accept custom values because their choices change with the preset; ``build_request`` and
    the pipeline check every value and say what is allowed. Numbers a user types are plain number fields,
    not sliders: a slider clamps 1000 images to 16 without a word, a field's value is checked and refused
    with a message. The seed is a text field: the browser's numbers are doubles, exact only below 2^53.
    """
    text, names, defaults = is_text_preset(start), list(start.preset.class_names), start.preset.defaults
    with gr.Row():
        preset_box = gr.Dropdown(
            preset_choices(presets), value=start.preset.name, label="Preset", scale=1, elem_id="preset"
        )
        class_name = gr.Dropdown(
            names,
            value=names[0] if names else None,
            label="Class",
            scale=2,
            elem_id="class-name",
            visible=not text and bool(names),
            allow_custom_value=True,
        )
        class_id = gr.Number(0, precision=0, label="Class id", visible=not text and not names, scale=2)
        prompt = gr.Textbox(
            label="Prompt",
            visible=text,
            scale=3,
            placeholder="a large red circle at the top left",
            elem_id="prompt",
        )
    negative_prompt = gr.Textbox(label="Negative prompt (optional)", visible=text)
    with gr.Row():
        seed = seed_box("Seed (image i uses seed + i)", elem_id="seed")
        randomize = gr.Checkbox(True, label="Randomise seed", elem_id="randomize")
        num_images = gr.Number(4, precision=0, step=1, label=f"Images (1-{MAX_IMAGES})", elem_id="num-images")
        guidance_scale = gr.Number(
            defaults.get("guidance_scale", 1.0),
            step=0.1,
            label="Guidance scale (1 = off)",
            elem_id="guidance",
        )
    continuous = is_continuous_preset(start)
    with gr.Accordion("Advanced sampling and decoding", open=False):
        with gr.Row():
            temperature = gr.Number(defaults.get("temperature", 1.0), step=0.05, label="Temperature (> 0)")
            top_k = gr.Number(
                defaults.get("top_k", 0),
                precision=0,
                minimum=0,
                label="Top-k (0 = off)",
                visible=not continuous,
            )
            top_p = gr.Slider(
                0.01,
                1.0,
                value=defaults.get("top_p", 1.0),
                step=0.01,
                label="Top-p (1 = off)",
                visible=not continuous,
            )
            steps = gr.Number(
                defaults.get("num_inference_steps", 25),
                precision=0,
                step=1,
                label=f"Diffusion steps per token (1-{MAX_STEPS})",
                visible=has_steps(start),
                elem_id="num-steps",
            )
        decoding = gr.Dropdown(
            list(start.decoding_strategies), value="ar", label="Decoding strategy", allow_custom_value=True
        )
        knobs, groups = {}, {}
        for strategy, params in DECODING_PARAMS.items():
            if not params:
                continue
            with gr.Group(visible=False) as groups[strategy], gr.Row():
                for p in params:
                    step = 1 if p.integer else 0.01
                    knobs[(strategy, p.name)] = gr.Number(
                        p.default,
                        minimum=p.low,
                        maximum=p.high,
                        step=step,
                        label=f"{strategy}: {p.name}",
                        info=p.help,
                    )
    controls = Controls(
        preset_box,
        class_name,
        class_id,
        prompt,
        negative_prompt,
        seed,
        randomize,
        num_images,
        guidance_scale,
        temperature,
        top_k,
        top_p,
        steps,
        decoding,
        knobs,
        groups,
    )
    decoding.change(
        lambda s: strategy_visibility(controls, s), decoding, list(groups.values()), api_name=False
    )
    return controls


def seed_box(label: str, value: int = 0, **kwargs) -> gr.Textbox:
    """A seed field: text, because a browser number field rounds integers above 2^53 (a 63-bit seed lost
    its last digits); ``parse_seed`` checks it."""
    return gr.Textbox(str(value), label=label, max_lines=1, **kwargs)


def parse_seed(value, count: int = 1) -> int:
    """The seed in a seed field: an integer in [0, 2^63 - count] (image i uses seed + i, each a valid seed)."""
    high = SEED_LIMIT - count
    text = str(value).strip() if value is not None else ""
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    if not text.isdigit() or int(text) > high:
        raise ValueError(f"seed={text or value!r} is not allowed: use an integer in [0, {high}]")
    return int(text)


def random_seed(count: int = 1) -> int:
    return secrets.randbelow(SEED_LIMIT - count + 1)


def check_number(value, name: str, low: float, high: float = math.inf, low_open: bool = False) -> float:
    """A finite number in [low, high] ((low, high] when ``low_open``), or a one-line error naming it."""
    ok = isinstance(value, (int, float)) and math.isfinite(value) and value <= high
    ok = ok and (value > low if low_open else value >= low)
    if not ok:
        span = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise ValueError(f"{name}={value!r} is not allowed: use a number in {span}".replace("inf]", "inf)"))
    return float(value)


def is_continuous_preset(pipe) -> bool:
    """Vector tokens from a diffusion/flow head: no logits, so top-k and top-p mean nothing there."""
    return pipe.tokenizer.kind == "continuous"


def has_steps(pipe) -> bool:
    return "num_inference_steps" in pipe.preset.defaults


def strategy_visibility(controls: Controls, strategy: str) -> dict:
    return {group: gr.update(visible=name == strategy) for name, group in controls.knob_groups.items()}


def preset_updates(controls: Controls, pipe) -> dict:
    """Show the inputs this preset takes, its sampling defaults and the strategies it supports."""
    text = is_text_preset(pipe)
    names = list(pipe.preset.class_names)
    defaults = pipe.preset.defaults
    return {
        controls.class_name: gr.update(
            visible=not text and bool(names), choices=names, value=names[0] if names else None
        ),
        controls.class_id: gr.update(
            visible=not text and not names, maximum=None if text else pipe.generator.config.num_classes - 1
        ),
        controls.prompt: gr.update(visible=text),
        controls.negative_prompt: gr.update(visible=text),
        controls.guidance_scale: gr.update(value=defaults.get("guidance_scale", 1.0)),
        controls.temperature: gr.update(value=defaults.get("temperature", 1.0)),
        controls.top_k: gr.update(value=defaults.get("top_k", 0), visible=not is_continuous_preset(pipe)),
        controls.top_p: gr.update(value=defaults.get("top_p", 1.0), visible=not is_continuous_preset(pipe)),
        controls.num_inference_steps: gr.update(
            value=defaults.get("num_inference_steps", 25), visible=has_steps(pipe)
        ),
        controls.decoding: gr.update(choices=list(pipe.decoding_strategies), value="ar"),
        **strategy_visibility(controls, "ar"),
    }


def check_integer(value, name: str, low: int, high: int) -> int:
    finite = isinstance(value, (int, float)) and math.isfinite(value)
    if not finite or value != int(value) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} is not allowed: use an integer in [{low}, {high}]")
    return int(value)


@dataclass
class Request:
    pipe: object
    kwargs: dict  # for pipe(**kwargs), minus the callback
    seed: int  # seed of the first image; image i uses seed + i
    knobs: dict  # the decoding strategy's knobs (also written into each image's recipe)


def build_request(
    cache: PipelineCache, controls: Controls, values: dict, decoding: str | None = None
) -> Request:
    """Validate the control values and build the pipeline call. ``decoding`` overrides the chosen strategy."""
    v = {name: values[c] for name, c in vars(controls).items() if name not in ("knobs", "knob_groups")}
    pipe = cache.get(v["preset"])
    count = check_integer(v["num_images"], "images", 1, MAX_IMAGES)
    kwargs = {
        "guidance_scale": check_number(v["guidance_scale"], "guidance_scale", 0.0),
        "temperature": check_number(v["temperature"], "temperature", 0.0, low_open=True),
    }
    if not is_continuous_preset(pipe):
        kwargs.update(
            top_k=check_integer(v["top_k"], "top_k", 0, 1_000_000),
            top_p=check_number(v["top_p"], "top_p", 0.0, 1.0, low_open=True),
        )
    if has_steps(pipe):
        kwargs["num_inference_steps"] = check_integer(
            v["num_inference_steps"], "diffusion steps", 1, MAX_STEPS
        )
    if is_text_preset(pipe):
        if not (v["prompt"] or "").strip():
            raise ValueError("write a prompt first, e.g. 'a large red circle at the top left'")
        kwargs["prompt"] = v["prompt"].strip()
        kwargs["negative_prompt"] = (v["negative_prompt"] or "").strip() or None
    elif pipe.preset.class_names:
        if not v["class_name"]:
            raise ValueError(f"pick a class of {v['preset']}")
        kwargs["prompt"] = v["class_name"]
    else:
        kwargs["class_labels"] = [
            check_integer(v["class_id"], "class id", 0, pipe.generator.config.num_classes - 1)
        ]
    seed = random_seed(count) if v["randomize"] else parse_seed(v["seed"], count)
    strategy = decoding or v["decoding"]
    if strategy not in pipe.decoding_strategies:
        raise ValueError(
            f"decoding={strategy!r} is not available for {v['preset']}; "
            f"allowed: {list(pipe.decoding_strategies)}"
        )
    knobs = {p.name: p.check(values[controls.knobs[(strategy, p.name)]]) for p in DECODING_PARAMS[strategy]}
    kwargs.update(
        num_images_per_prompt=count,
        decoding=strategy,
        output_type="pil",
        **knobs,
        generator=[torch.Generator().manual_seed(seed + i) for i in range(count)],
    )
    return Request(pipe, kwargs, seed, knobs)


def recipe_updates(controls: Controls, pipe, meta: dict) -> dict:
    """Controls set to reproduce the image whose recipe ``meta`` is.

    Batch composition can change pixels (batched matmuls round differently), so when the recipe names the
    batch the image was made in (``batch_seeds``, consecutive as the studio makes them) the whole batch is
    restored; otherwise the image alone, from its own seed.
    """
    updates = preset_updates(controls, pipe)
    updates[controls.preset] = gr.update(value=meta["preset"])
    if "prompt" in meta and is_text_preset(pipe):
        updates[controls.prompt] = gr.update(visible=True, value=meta["prompt"])
        updates[controls.negative_prompt] = gr.update(visible=True, value=meta.get("negative_prompt") or "")
    elif meta.get("class_name"):
        updates[controls.class_name] = gr.update(
            visible=True, choices=list(pipe.preset.class_names), value=meta["class_name"]
        )
    elif "class_label" in meta:
        updates[controls.class_id] = gr.update(visible=True, value=meta["class_label"])
    first, count = batch_of(meta)
    updates[controls.seed] = gr.update(value=str(first))
    updates[controls.randomize] = gr.update(value=False)
    updates[controls.num_images] = gr.update(value=count)
    for key in ("guidance_scale", "temperature", "top_k", "top_p", "num_inference_steps"):
        if key in meta and (key != "num_inference_steps" or has_steps(pipe)):  # dd's steps are its knob
            updates[getattr(controls, key)]["value"] = meta[key]  # keeps the preset's visibility
    strategy = meta.get("decoding", "ar")
    updates[controls.decoding] = gr.update(choices=list(pipe.decoding_strategies), value=strategy)
    updates.update(strategy_visibility(controls, strategy))
    for p in DECODING_PARAMS.get(strategy, ()):
        if p.name in meta:
            updates[controls.knobs[(strategy, p.name)]] = gr.update(value=meta[p.name])
    return updates


def batch_of(meta: dict) -> tuple[int, int]:
    """(first seed, number of images) of the request that reproduces ``meta``'s image exactly."""
    seeds = meta.get("batch_seeds")
    consecutive = (
        isinstance(seeds, list) and seeds == list(range(seeds[0], seeds[0] + len(seeds))) if seeds else False
    )
    if consecutive and meta["seed"] in seeds and len(seeds) <= MAX_IMAGES:
        return seeds[0], len(seeds)
    return meta["seed"], 1

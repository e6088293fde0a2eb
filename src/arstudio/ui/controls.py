"""The request controls (preset, condition, seed, sampling, decoding strategy and its knobs) and the one
function that turns their values into a pipeline call. The Image tab and the Decoding lab share both.

Strategy knobs are built from ``arstudio.decoding.DECODING_PARAMS``: a strategy added there gets its
controls here with no UI change, and a preset shows only the strategies its pipeline supports.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import gradio as gr
import torch

from arstudio.decoding import DECODING_PARAMS
from arstudio.ui.common import MAX_IMAGES, PipelineCache, is_text_preset

SEED_LIMIT = 2**62  # per-image seeds are seed, seed + 1, ...; this keeps them in torch's range


@dataclass
class Controls:
    preset: gr.Dropdown
    class_name: gr.Dropdown
    class_id: gr.Number
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    seed: gr.Number
    randomize: gr.Checkbox
    num_images: gr.Slider
    guidance_scale: gr.Slider
    temperature: gr.Slider
    top_k: gr.Number
    top_p: gr.Slider
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


def build_controls(presets: list[str], start) -> Controls:
    """Lay out the controls (inside the caller's ``gr.Blocks`` context), set up for pipeline ``start``.

    Dropdowns accept custom values because their choices change with the preset; ``build_request`` and
    the pipeline check every value and say what is allowed.
    """
    text, names, defaults = is_text_preset(start), list(start.preset.class_names), start.preset.defaults
    with gr.Row():
        preset_box = gr.Dropdown(presets, value=start.preset.name, label="Preset", scale=1)
        class_name = gr.Dropdown(names, value=names[0] if names else None, label="Class", scale=2,
                                 visible=not text and bool(names), allow_custom_value=True)  # fmt: skip
        class_id = gr.Number(0, precision=0, label="Class id", visible=not text and not names, scale=2)
        prompt = gr.Textbox(
            label="Prompt", visible=text, scale=3, placeholder="a large red circle at the top left"
        )
    negative_prompt = gr.Textbox(label="Negative prompt (optional)", visible=text)
    with gr.Row():
        seed = gr.Number(0, precision=0, label="Seed (image i uses seed + i)", minimum=0)
        randomize = gr.Checkbox(True, label="Randomise seed")
        num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Images")
        guidance_scale = gr.Slider(0.0, 10.0, value=defaults.get("guidance_scale", 1.0), step=0.1,
                                   label="Guidance scale (1 = off)")  # fmt: skip
    with gr.Accordion("Advanced sampling and decoding", open=False):
        with gr.Row():
            temperature = gr.Slider(
                0.05, 2.0, value=defaults.get("temperature", 1.0), step=0.05, label="Temperature"
            )
            top_k = gr.Number(defaults.get("top_k", 0), precision=0, minimum=0, label="Top-k (0 = off)")
            top_p = gr.Slider(0.01, 1.0, value=defaults.get("top_p", 1.0), step=0.01, label="Top-p (1 = off)")
        decoding = gr.Dropdown(list(start.decoding_strategies), value="ar", label="Decoding strategy",
                               allow_custom_value=True)  # fmt: skip
        knobs, groups = {}, {}
        for strategy, params in DECODING_PARAMS.items():
            if not params:
                continue
            with gr.Group(visible=False) as groups[strategy], gr.Row():
                for p in params:
                    step = 1 if p.integer else 0.01
                    knobs[(strategy, p.name)] = gr.Number(p.default, minimum=p.low, maximum=p.high, step=step,
                                                          label=f"{strategy}: {p.name}", info=p.help)  # fmt: skip
    controls = Controls(preset_box, class_name, class_id, prompt, negative_prompt, seed, randomize, num_images,
                        guidance_scale, temperature, top_k, top_p, decoding, knobs, groups)  # fmt: skip
    decoding.change(
        lambda s: strategy_visibility(controls, s), decoding, list(groups.values()), api_name=False
    )
    return controls


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
        ),  # fmt: skip
        controls.class_id: gr.update(
            visible=not text and not names, maximum=None if text else pipe.generator.config.num_classes - 1
        ),  # fmt: skip
        controls.prompt: gr.update(visible=text),
        controls.negative_prompt: gr.update(visible=text),
        controls.guidance_scale: gr.update(value=defaults.get("guidance_scale", 1.0)),
        controls.temperature: gr.update(value=defaults.get("temperature", 1.0)),
        controls.top_k: gr.update(value=defaults.get("top_k", 0)),
        controls.top_p: gr.update(value=defaults.get("top_p", 1.0)),
        controls.decoding: gr.update(choices=list(pipe.decoding_strategies), value="ar"),
        **strategy_visibility(controls, "ar"),
    }


def _integer(value, name: str, low: int, high: int) -> int:
    if value is None or value != int(value) or not low <= value <= high:
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
    kwargs = {"guidance_scale": float(v["guidance_scale"]), "temperature": float(v["temperature"]),
              "top_k": _integer(v["top_k"], "top_k", 0, 1_000_000), "top_p": float(v["top_p"])}  # fmt: skip
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
            _integer(v["class_id"], "class id", 0, pipe.generator.config.num_classes - 1)
        ]
    count = _integer(v["num_images"], "images", 1, MAX_IMAGES)
    seed = (
        secrets.randbelow(2**31)
        if v["randomize"]
        else _integer(v["seed"], "seed", 0, SEED_LIMIT - MAX_IMAGES)
    )
    strategy = decoding or v["decoding"]
    if strategy not in pipe.decoding_strategies:
        raise ValueError(f"decoding={strategy!r} is not available for {v['preset']}; "
                         f"allowed: {list(pipe.decoding_strategies)}")  # fmt: skip
    knobs = {p.name: p.check(values[controls.knobs[(strategy, p.name)]]) for p in DECODING_PARAMS[strategy]}
    kwargs.update(num_images_per_prompt=count, decoding=strategy, output_type="pil", **knobs,
                  generator=[torch.Generator().manual_seed(seed + i) for i in range(count)])  # fmt: skip
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
        updates[controls.class_name] = gr.update(visible=True, choices=list(pipe.preset.class_names),
                                                 value=meta["class_name"])  # fmt: skip
    elif "class_label" in meta:
        updates[controls.class_id] = gr.update(visible=True, value=meta["class_label"])
    first, count = batch_of(meta)
    updates[controls.seed] = gr.update(value=first)
    updates[controls.randomize] = gr.update(value=False)
    updates[controls.num_images] = gr.update(value=count)
    for key in ("guidance_scale", "temperature", "top_k", "top_p"):
        if key in meta:
            updates[getattr(controls, key)] = gr.update(value=meta[key])
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

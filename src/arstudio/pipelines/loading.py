"""Build a pipeline from a preset: shipped weights, hub weights (local copy or an asked-for download, see
``arstudio.convert.hub``), a local override (``weights=``), or a seeded random init for ``test-*`` presets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from arstudio.decoding.compiled import Compilation, check_compile, compile_pipeline, resolve_compile
from arstudio.decoding.continuous_speculative import check_draft_for_cspd
from arstudio.decoding.drafting import check_draft_model
from arstudio.decoding.speculative_defaults import read_defaults
from arstudio.decoding.strategies import wanted_components
from arstudio.generators.backbone import check_attention_backend
from arstudio.generators.continuous import ContinuousGeneratorConfig, ContinuousImageGenerator
from arstudio.generators.distilled import DDGenerator
from arstudio.generators.draft_head import DraftHead
from arstudio.generators.drafter import Drafter, DrafterConfig
from arstudio.generators.image import ImageGenerator
from arstudio.generators.mar import MARConfig, MARGenerator
from arstudio.generators.text_encoders import load_text_encoder
from arstudio.generators.video import VideoGenerator, VideoGeneratorConfig
from arstudio.nn.prepacked import prepack_linears
from arstudio.pipelines.image import SUPPORTED_DTYPES, ImagePipeline
from arstudio.pipelines.video import VideoPipeline
from arstudio.presets import WEIGHTS_ROOT, Preset, get_preset
from arstudio.seeding import seeded
from arstudio.tokenizers.bridge import BridgeConfig, BridgeTokenizer
from arstudio.tokenizers.kl import KLConfig, KLTokenizer
from arstudio.tokenizers.vq import VQTokenizer


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _tokenizer_class(config):
    """The tokenizer class of a preset's tokenizer config: VQ ids, KL latents, or TokenBridge level ids."""
    return {KLConfig: KLTokenizer, BridgeConfig: BridgeTokenizer}.get(type(config), VQTokenizer)


def _generator_class(config):
    if isinstance(config, VideoGeneratorConfig):
        return VideoGenerator
    if isinstance(config, MARConfig):
        return MARGenerator
    return ContinuousImageGenerator if isinstance(config, ContinuousGeneratorConfig) else ImageGenerator


def _random_generator(config):
    generator = _generator_class(config)(config)
    # Heads start at zero (uniform logits, zero noise prediction); give random presets non-trivial outputs.
    for name, param in generator.head.named_parameters():
        if name.endswith("output.weight"):
            torch.nn.init.normal_(param, std=0.02)
    # Control fusion starts at zero too (a warm start begins unchanged); random presets should feel the control.
    if generator.control_encoder is not None and generator.config.control.mode == "fusion":
        for layer in generator.control_encoder.fusion:
            torch.nn.init.normal_(layer.weight, std=0.2)
    return generator


def _source(preset: Preset, weights, download: bool):
    """Where a preset's models come from: a ``WeightsSource`` (hub or override), its shipped folder, or None
    for a seeded random init."""
    if preset.hub is not None:
        from arstudio.convert.hub import resolve_weights

        return resolve_weights(preset, weights, download)
    if weights is not None:
        folder = Path(weights).expanduser()
        if not ((folder / "tokenizer").is_dir() and (folder / "generator").is_dir()):
            raise FileNotFoundError(
                f"weights={str(weights)!r} for preset {preset.name!r} must be a folder holding tokenizer/ and "
                "generator/ (each config.json + model.safetensors, as save_pretrained writes them)"
            )
        return folder
    return preset.weights_dir


def _tokenizer_source(preset: Preset, source):
    """Where the tokenizer comes from: a fine-tune that kept its base's tokenizer (``shared_tokenizer``)
    reads the base's shipped folder unless a ``weights=`` override brings its own."""
    if preset.shared_tokenizer is not None and source == preset.weights_dir:
        return WEIGHTS_ROOT / preset.shared_tokenizer
    return source


def _load_component(preset: Preset, part: str, cls, config, random_init, device, dtype, source):
    """One model of a preset: from ``source`` (checked against the preset's config) or a seeded init."""
    if source is None:
        offset = {"tokenizer": 0, "generator": 1}[part]
        model = seeded(lambda: random_init(config), preset.init_seed + offset)
    elif not isinstance(source, Path):  # a hub WeightsSource
        from arstudio.convert.hub import converter_for

        path = source.path(part)
        # Hub models can be big (GPT-3B: 12 GB in fp32): built on meta and filled one tensor at a time, straight
        # in the asked dtype and on the device, so no full fp32 copy is ever held.
        if source.layout == "official":
            converter = converter_for(preset)
            load = converter.load_tokenizer if part == "tokenizer" else converter.load_generator
            model = load(path, config, dtype=dtype, device=device)
        else:
            model = _from_folder(
                cls, path, config, f"the {part} in {path} ({source.origin})", preset, bounded=(dtype, device)
            )
    else:
        if not (source / part).is_dir():
            raise FileNotFoundError(
                f"the {part} weights of preset {preset.name!r} are missing from {source / part}; "
                "docs/training.md has the commands that make them"
            )
        model = _from_folder(cls, source / part, config, f"the {part} in {source}", preset)
    return model.to(device=device, dtype=dtype).eval()


def _load_text_encoder(preset: Preset, source, device, dtype, download: bool):
    """The preset's text encoder; a hub preset's (FLAN-T5-XL) may sit beside its weights (``flan-t5-xl/``),
    else comes from the Hugging Face cache, or a download when asked. Refused unless its width is the
    generator's text width."""
    folders = []
    if source is not None and not isinstance(source, Path):  # a hub WeightsSource
        folders = [source.generator.parent, source.tokenizer.parent]
    encoder = load_text_encoder(
        preset.text_encoder,
        preset.text_len,
        device,
        preset.text_phrases,
        folders=folders,
        download=download,
        dtype=dtype,
    )
    expected = preset.generator.text_dim
    if getattr(encoder, "dim", expected) != expected:
        raise ValueError(
            f"the text encoder {preset.text_encoder!r} of preset {preset.name!r} gives {encoder.dim}-d states; "
            f"its generator reads {expected}-d text"
        )
    return encoder


def _from_folder(cls, path: Path, config, what: str, preset: Preset, bounded=None):
    """``cls.from_pretrained(path)``, refused unless its config is the preset's (same keys are not enough:
    a different grid or vocabulary would load and then generate garbage). Fields that only steer training
    (a config class's ``TRAINING_ONLY``) may differ: a model trained with other dropout or video context
    sampling generates the same way. Fields no weight depends on (``WEIGHT_FREE``: a convolutional tokenizer's
    resolution) take the preset's value: the weights are loaded into a model built from the preset's config.
    ``bounded=(dtype, device)``: read one tensor at a time straight into that
    dtype and device (``convert.checkpoint.load_pretrained_bounded``; hub caches, stored as saved, no int8)."""
    if bounded is not None:
        from arstudio.convert.checkpoint import load_pretrained_bounded

        model = load_pretrained_bounded(cls, path, *bounded)
    else:
        model = cls.from_pretrained(path)
    differences = config_differences(model.config, config)
    free = getattr(config, "WEIGHT_FREE", ())
    if differences and all(difference.split("=")[0] in free for difference in differences):
        rebuilt = cls(config)
        rebuilt.load_state_dict(model.state_dict())
        return rebuilt
    if differences:
        raise ValueError(f"{what} does not match preset {preset.name!r}: {'; '.join(differences)}")
    return model


def config_differences(found, expected, prefix: str = "") -> list[str]:
    """'field=found (preset: expected)' for each field where two config dataclasses differ, nested configs
    included, skipping the fields their class lists in ``TRAINING_ONLY``."""
    if type(found) is not type(expected):
        return [f"{prefix or 'config'} is a {type(found).__name__} (preset: {type(expected).__name__})"]
    differences = []
    for spec in dataclasses.fields(expected):
        if spec.name in getattr(expected, "TRAINING_ONLY", ()):
            continue
        mine, theirs = getattr(found, spec.name), getattr(expected, spec.name)
        if dataclasses.is_dataclass(theirs):
            differences += config_differences(mine, theirs, f"{prefix}{spec.name}.")
        elif mine != theirs:
            differences.append(f"{prefix}{spec.name}={mine!r} (preset: {theirs!r})")
    return differences


_DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _resolve(device, dtype) -> tuple[torch.device, torch.dtype]:
    """The device and dtype asked for, checked before any work: a one-line error names what is wrong."""
    try:
        device = torch.device(device) if device is not None else default_device()
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a device: use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} was asked for, but this torch sees no CUDA device: use 'cpu'"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={str(device)!r} is not supported: use 'cpu' or 'cuda'")
    dtype = _DTYPE_NAMES.get(dtype, dtype) if isinstance(dtype, str) else (dtype or torch.float32)
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {SUPPORTED_DTYPES}")
    return device, dtype


def load_tokenizer(
    name: str, device=None, dtype=None, weights: str | Path | None = None, download: bool = False
) -> VQTokenizer | KLTokenizer | BridgeTokenizer:
    """Only the tokenizer of a preset (for reconstruction work and benchmarks); ``weights`` and ``download``
    as in ``load_pipeline``."""
    preset = get_preset(name)
    device, dtype = _resolve(device, dtype)
    source = _source(preset, weights, download)
    cls = _tokenizer_class(preset.tokenizer)
    return _load_component(
        preset, "tokenizer", cls, preset.tokenizer, cls, device, dtype, _tokenizer_source(preset, source)
    )


def load_pipeline(
    name: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    weights: str | Path | None = None,
    download: bool = False,
    decoding_models: bool = True,
    compile: bool | str = "auto",
    attention_backend: str = "sdpa",
):
    """Load a preset by name (see ``list_presets()``). CPU/fp32 unless told otherwise or CUDA is present.

    Args:
        weights: a local folder to take the weights from instead of the preset's own: ``tokenizer/`` +
            ``generator/`` as ``save_pretrained`` writes them, or, for hub presets (``llamagen-*``), the
            official checkpoint files (e.g. ``vq_ds16_c2i.pt`` + ``c2i_B_256.pt``). Checked against the
            preset's configs.
        download: hub presets only: if no local copy is found (``weights``, ``$ARSTUDIO_WEIGHTS_DIR``, the
            converted cache, the Hugging Face cache), download the official files from the Hub and convert
            them once. False (the default) never touches the network and raises
            ``arstudio.convert.hub.HubWeightsNotFoundError`` saying what to download and where to put it.
        decoding_models: False skips the drafter and the distilled models. Training those needs it: the ones
            shipped belong to the previously shipped generator, and their pairing check would refuse to load.
        compile: compile the per-token decoding computations (``decoding/compiled.py``): True, False, or
            "auto" (the default: on for CUDA, where CUDA graphs remove the launch overhead; off on the CPU).
            Under "auto" a compile failure falls back to eager decoding with a warning; under True it is an
            error. Compiling happens at the first call per batch size; ``pipe.compilation.seconds`` says how long.
        attention_backend: "sdpa" (default, PyTorch's scaled_dot_product_attention) or "xformers" (CUDA only,
            needs the optional xformers package: ``pip install 'arstudio[gpu]'``).
    """
    preset = get_preset(name)
    device, dtype = _resolve(device, dtype)
    check_compile(compile)
    check_attention_backend(attention_backend, device)
    source = _source(preset, weights, download)  # before building anything: missing weights fail fast
    # Everything loads in float32 (float16 and int8 storage are expanded to it) and is cast to the asked dtype
    # at the end, once every pairing check has run. Hub models load straight in the asked dtype: a float32 copy
    # of GPT-3B is 12 GB (their pairing checks read float32 copies of what they hash, so dtype does not matter).
    load_dtype = dtype if preset.hub is not None else torch.float32
    tokenizer, generator = _load_models(preset, source, device, load_dtype)
    if isinstance(generator, VideoGenerator):
        pipe = VideoPipeline(tokenizer.to(dtype=dtype), generator.to(dtype=dtype), preset, device, dtype)
        return _accelerate(pipe, compile, attention_backend)
    pipe = _image_pipeline(
        preset, tokenizer, generator, source, device, dtype, load_dtype, download, decoding_models
    )
    return _accelerate(pipe, compile, attention_backend)


def _load_models(preset: Preset, source, device, load_dtype):
    """The preset's tokenizer and generator, from ``source`` (or random for test presets)."""
    tokenizer_cls, generator_cls = _tokenizer_class(preset.tokenizer), _generator_class(preset.generator)
    tokenizer_source = _tokenizer_source(preset, source)
    tokenizer = _load_component(
        preset,
        "tokenizer",
        tokenizer_cls,
        preset.tokenizer,
        tokenizer_cls,
        device,
        load_dtype,
        tokenizer_source,
    )
    generator = _load_component(
        preset, "generator", generator_cls, preset.generator, _random_generator, device, load_dtype, source
    )
    return tokenizer, generator


def _image_pipeline(
    preset: Preset,
    tokenizer,
    generator,
    source,
    device,
    dtype,
    load_dtype,
    download: bool,
    decoding_models: bool,
):
    """The image pipeline around a loaded float32 tokenizer and generator: its text encoder, the decoding
    models some strategy can use (``decoding_models``), everything cast to ``dtype`` once paired."""
    text_encoder = None
    if preset.text_encoder is not None:
        text_encoder = _load_text_encoder(preset, source, device, dtype, download)
    drafter, distilled = None, {}
    if decoding_models:  # only the components some strategy can run with (each strategy's ``supports``)
        wanted = wanted_components(generator, tokenizer)
        drafter = (
            _load_drafter(preset, generator, source, device, load_dtype) if "drafter" in wanted else None
        )
        distilled = _load_distilled(preset, generator, tokenizer, source, device, load_dtype, wanted)
    tokenizer = tokenizer.to(dtype=dtype)
    drafter = None if drafter is None else drafter.to(dtype=dtype)
    distilled = {method: model.to(dtype=dtype) for method, model in distilled.items()}
    pipe = ImagePipeline(
        tokenizer, generator.to(dtype=dtype), preset, device, dtype, text_encoder, drafter, distilled
    )
    if drafter is not None and isinstance(source, Path):
        pipe.knob_defaults = read_defaults(source)  # the drafter's measured best shape (tune-speculative)
    return pipe


def _accelerate(pipe, compile: bool | str, attention_backend: str):
    """Set the attention backend of every backbone, give CPU models' small linear layers their transposed
    weights (``nn/prepacked.py``: the eager CPU fast path) and compile the decoding steps as asked."""
    on_cpu = torch.device(pipe.device).type == "cpu"
    for model in (pipe.generator, getattr(pipe, "drafter", None), *getattr(pipe, "distilled", {}).values()):
        backbone = getattr(model, "backbone", None)
        if backbone is not None:
            backbone.set_attention_backend(attention_backend)
        if model is not None and on_cpu:
            prepack_linears(model)
    pipe.load_options = {"compile": compile, "attention_backend": attention_backend}
    pipe.compilation = Compilation()
    if resolve_compile(compile, torch.device(pipe.device)):
        pipe.compilation = compile_pipeline(pipe, strict=compile is True)
    return pipe


def _load_distilled(preset: Preset, generator, tokenizer, source, device, dtype, wanted) -> dict:
    """The ``wanted`` distilled-decoding models: ``dd1/`` and ``dd2/`` beside the generator (checked to be
    distilled from this generator and tokenizer); for random presets, seeded DD models made from the random
    generator (so tests run the samplers); for hub presets, the published ones found with the weights
    (``HubWeights.extras``: Distilled Decoding's LlamaGen-DD B and L)."""
    models = {}
    for offset, method in enumerate(("dd1", "dd2")):
        if method not in wanted:
            continue
        if source is None:
            model = seeded(
                lambda m=method: DDGenerator.from_teacher(generator, tokenizer, method=m),
                preset.init_seed + 3 + offset,
            )
        elif isinstance(source, Path) and (source / method).is_dir():
            model = DDGenerator.from_pretrained(source / method)
            model.check_pairing(generator, tokenizer)
        elif source is not None and not isinstance(source, Path) and method in source.extras:
            from arstudio.convert.hub import load_extra

            model = load_extra(preset, method, source.extras[method], generator, tokenizer, dtype, device)
        else:
            continue
        models[method] = model.to(device=device, dtype=dtype).eval()
    return models


def _load_drafter(preset: Preset, generator, source, device, dtype):
    """The speculative-decoding drafter: ``drafter/`` beside the generator when there is one, either an
    EAGLE-style ``Drafter`` (checked to be trained for this generator) or an independent small
    ``ImageGenerator`` (checked to share its tokens and condition); a seeded random ``Drafter`` for random
    presets; for hub presets, a published one found with the weights (``HubWeights.extras``: LANTERN's)."""
    if generator.token_kind != "discrete":
        return _load_continuous_draft_model(preset, generator, source, device, dtype)
    if source is None:
        drafter = seeded(lambda: Drafter(DrafterConfig.for_target(generator)), preset.init_seed + 2)
        # Checked now, in float32: the pairing is remembered, so a cast to float16 later (whose rounding a
        # random float32 init does not survive) is not mistaken for another target.
        drafter.check_target(generator)
    elif isinstance(source, Path) and (source / "drafter").is_dir():
        folder = source / "drafter"
        kind = json.loads((folder / "config.json").read_text()).get("class")
        if kind == "Drafter":
            drafter = Drafter.from_pretrained(folder)
            drafter.check_target(generator)
        elif kind == "ImageGenerator":
            drafter = ImageGenerator.from_pretrained(folder)
            check_draft_model(generator, drafter)
        else:
            raise ValueError(f"{folder} holds a {kind!r}; a drafter is a 'Drafter' or an 'ImageGenerator'")
    elif source is not None and not isinstance(source, Path) and "drafter" in source.extras:
        from arstudio.convert.hub import load_extra

        drafter = load_extra(preset, "drafter", source.extras["drafter"], generator, None, dtype, device)
    else:
        return None
    return drafter.to(device=device, dtype=dtype).eval()


def _load_continuous_draft_model(preset: Preset, generator, source, device, dtype):
    """Continuous speculative decoding's draft in ``drafter/``: a ``DraftHead`` distilled from this generator's
    head (checked by fingerprint) or an independent small ``ContinuousImageGenerator``; a seeded random draft
    model with the preset's config for random presets."""
    if source is None:
        draft = seeded(lambda: _random_generator(preset.generator), preset.init_seed + 2)
    elif isinstance(source, Path) and (source / "drafter").is_dir():
        kind = json.loads((source / "drafter" / "config.json").read_text()).get("class")
        classes = {"DraftHead": DraftHead, "MARGenerator": MARGenerator}
        draft = classes.get(kind, ContinuousImageGenerator).from_pretrained(source / "drafter")
    elif source is not None and not isinstance(source, Path) and "drafter" in source.extras:
        from arstudio.convert.hub import load_extra  # a hub preset's published draft (MAR-B for MAR-L / H)

        draft = load_extra(preset, "drafter", source.extras["drafter"], generator, None, dtype, device)
    else:
        return None
    check_draft_for_cspd(generator, draft)
    return draft.to(device=device, dtype=dtype).eval()


# The pipelines build other pipelines (``from_pretrained``, video keyframes) through this hook rather than
# by importing this module, which imports them.
ImagePipeline.loader = staticmethod(load_pipeline)

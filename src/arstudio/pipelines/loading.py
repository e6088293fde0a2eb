"""Build a pipeline from a preset: shipped weights, or a seeded random init for ``test-*`` presets."""

from __future__ import annotations

import torch

from arstudio.generators.image import ImageGenerator
from arstudio.generators.text_encoders import load_text_encoder
from arstudio.pipelines.image import ImagePipeline
from arstudio.presets import Preset, get_preset
from arstudio.tokenizers.vq import VQTokenizer
from arstudio.training.common import seeded

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _random_generator(config) -> ImageGenerator:
    generator = ImageGenerator(config)
    # The head starts at zero (uniform logits); give random presets non-trivial outputs.
    torch.nn.init.normal_(generator.head.output.weight, std=0.02)
    return generator


def _load_component(preset: Preset, part: str, cls, config, random_init, device, dtype):
    """One model of a preset: shipped weights (checked against the preset's config) or a seeded init."""
    if preset.weights_dir is None:
        offset = {"tokenizer": 0, "generator": 1}[part]
        model = seeded(lambda: random_init(config), preset.init_seed + offset)
    else:
        if not (preset.weights_dir / part).is_dir():
            raise FileNotFoundError(
                f"the {part} weights of preset {preset.name!r} are missing from {preset.weights_dir / part}; "
                "docs/training.md has the commands that make them"
            )
        model = cls.from_pretrained(preset.weights_dir / part)
        if model.config != config:
            raise ValueError(
                f"shipped {part} of {preset.name!r} does not match the preset's config: {model.config}"
            )
    return model.to(device=device, dtype=dtype).eval()


def _resolve(device, dtype) -> tuple[torch.device, torch.dtype]:
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or torch.float32
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype={dtype} is not supported; use one of {SUPPORTED_DTYPES}")
    return device, dtype


def load_tokenizer(name: str, device=None, dtype=None) -> VQTokenizer:
    """Only the tokenizer of a preset (for reconstruction work and benchmarks)."""
    preset = get_preset(name)
    device, dtype = _resolve(device, dtype)
    return _load_component(preset, "tokenizer", VQTokenizer, preset.tokenizer, VQTokenizer, device, dtype)


def load_pipeline(name: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Load a preset by name (see ``list_presets()``). CPU/fp32 unless told otherwise or CUDA is present."""
    preset = get_preset(name)
    device, dtype = _resolve(device, dtype)
    tokenizer = load_tokenizer(name, device, dtype)
    generator = _load_component(
        preset, "generator", ImageGenerator, preset.generator, _random_generator, device, dtype
    )
    text_encoder = None
    if preset.text_encoder is not None:
        text_encoder = load_text_encoder(preset.text_encoder, preset.text_len, device)
    return ImagePipeline(tokenizer, generator, preset, device, dtype, text_encoder)

"""Build a pipeline from a preset: shipped weights, or a seeded random init for ``test-*`` presets."""

from __future__ import annotations

import torch

from arstudio.generators.image import ClassImageGenerator
from arstudio.pipelines.image import ImagePipeline
from arstudio.presets import get_preset
from arstudio.tokenizers.vq import VQTokenizer
from arstudio.training.common import seeded


def _random_generator(config) -> ClassImageGenerator:
    generator = ClassImageGenerator(config)
    # The head starts at zero (uniform logits); give random presets non-trivial outputs.
    torch.nn.init.normal_(generator.head.output.weight, std=0.02)
    return generator


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline(name: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Load a preset by name (see ``list_presets()``). CPU/fp32 unless told otherwise or CUDA is present."""
    preset = get_preset(name)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or torch.float32
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(
            f"dtype={dtype} is not supported; use torch.float32, torch.bfloat16 or torch.float16"
        )
    if preset.weights_dir is None:
        tokenizer = seeded(lambda: VQTokenizer(preset.tokenizer), preset.init_seed)
        generator = seeded(lambda: _random_generator(preset.generator), preset.init_seed + 1)
    else:
        tokenizer = VQTokenizer.from_pretrained(preset.weights_dir / "tokenizer")
        generator = ClassImageGenerator.from_pretrained(preset.weights_dir / "generator")
        for model, config in ((tokenizer, preset.tokenizer), (generator, preset.generator)):
            if model.config != config:
                raise ValueError(
                    f"shipped weights of {name!r} do not match the preset's config: {model.config}"
                )
    tokenizer = tokenizer.to(device=device, dtype=dtype).eval()
    generator = generator.to(device=device, dtype=dtype).eval()
    return ImagePipeline(tokenizer, generator, preset, device, dtype)

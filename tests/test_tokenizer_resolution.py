"""A convolutional tokenizer trained at one resolution loads into a preset at another (issue 23's 256-token
workload shares the 32-px shapes tokenizer at 64 px)."""

from dataclasses import replace

import pytest
import torch

import arstudio
from arstudio.pipelines.loading import load_tokenizer


def test_a_convolutional_tokenizer_loads_at_another_resolution(tmp_path):
    """Weights trained at one resolution load into a preset's config at another (resolution is WEIGHT_FREE),
    and encode / decode at the preset's size; a field the weights depend on is still refused."""
    small = load_tokenizer("test-tiny-c2i", device="cpu")
    small.save_pretrained(tmp_path / "tokenizer")
    pipe = arstudio.load_pipeline("test-tiny-c2i", device="cpu")
    pipe.generator.save_pretrained(tmp_path / "generator")
    bigger = type(small)(replace(small.config, resolution=32))
    bigger.load_state_dict(small.state_dict())
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert tuple(bigger.encode(images).shape) == (2, 8, 8)
    other = type(small)(replace(small.config, codebook_size=16))
    other.save_pretrained(tmp_path / "tokenizer")
    with pytest.raises(ValueError, match=r"codebook_size=16 \(preset: 32\)"):
        arstudio.load_pipeline("test-tiny-c2i", device="cpu", weights=tmp_path)

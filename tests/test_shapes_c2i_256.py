"""shapes-c2i-256 (issue 23): 64 px, 256 tokens per image, the shapes-c2i tokenizer loaded at 64 px."""

import pytest
import torch

import arstudio
from arstudio.pipelines.loading import load_tokenizer
from arstudio.presets import WEIGHTS_ROOT, get_preset


def test_shapes_c2i_256_shares_the_shapes_c2i_tokenizer_at_64_px():
    preset = get_preset("shapes-c2i-256")
    assert preset.shared_tokenizer == "shapes-c2i" and preset.tokenizer.grid_size == 16
    tokenizer = load_tokenizer("shapes-c2i-256", device="cpu")
    shared = load_tokenizer("shapes-c2i", device="cpu")
    assert tokenizer.config.resolution == 64 and tokenizer.grid_size == 16
    mine, theirs = tokenizer.state_dict(), shared.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.skipif(
    not (WEIGHTS_ROOT / "shapes-c2i-256" / "generator").is_dir(), reason="weights not shipped"
)
def test_shapes_c2i_256_generates_64_px_images_with_its_drafter():
    pipe = arstudio.load_pipeline("shapes-c2i-256", device="cpu")
    assert "speculative" in pipe.decoding_strategies
    out = pipe(class_labels=[0], generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images[0].shape == (64, 64, 3) and tuple(out.tokens.shape) == (1, 16, 16)


@pytest.mark.skipif(not (WEIGHTS_ROOT / "shapes-c2i-256" / "dd2").is_dir(), reason="DD weights not shipped")
@pytest.mark.parametrize("decoding", ["dd1", "dd2"])
def test_shapes_c2i_256_distilled_models_draw_256_tokens_in_one_forward(decoding):
    pipe = arstudio.load_pipeline("shapes-c2i-256", device="cpu")
    assert decoding in pipe.decoding_strategies
    out = pipe(
        class_labels=[0, 5],
        decoding=decoding,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    assert out.images[0].shape == (64, 64, 3) and tuple(out.tokens.shape) == (2, 16, 16)
    assert out.stats["forwards_per_image"] == 1
    assert out.tokens.min() >= 0 and out.tokens.max() < 512

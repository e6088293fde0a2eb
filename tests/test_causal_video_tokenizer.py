"""The causal (C-ViViT-style) video tokenizer: causal in time, first frame encoded like an image."""

import pytest
import torch

from arstudio.tokenizers.causal_video import CausalVideoConfig, CausalVideoTokenizer
from arstudio.training.common import seeded
from arstudio.training.video_tokenizer import clip_tensor, train_causal_video_tokenizer

TINY = CausalVideoConfig(
    resolution=32, patch=8, latent_dim=4, dim=32, heads=4, spatial_layers=1, temporal_layers=1
)


@pytest.fixture(scope="module")
def tokenizer():
    return seeded(lambda: CausalVideoTokenizer(TINY), 0).eval()


def test_encoding_is_causal_and_the_first_frame_is_an_image(tokenizer):
    video = clip_tensor(0, 2, 7, 32)  # first frame + 3 tubelets of 2
    latents = tokenizer.encode(video)
    assert latents.shape == (2, 4, 4, 4, 4)
    alone = tokenizer.encode(video[:, :1])
    assert torch.allclose(latents[:, :1], alone, atol=1e-5)
    prefix = tokenizer.encode(video[:, :3])  # any length 1 + 2k: the prefix encodes the same
    assert torch.allclose(latents[:, :2], prefix, atol=1e-5)
    changed = video.clone()
    changed[:, 5:] = -1.0  # blank the last tubelet: earlier slices do not move
    assert torch.allclose(tokenizer.encode(changed)[:, :3], latents[:, :3], atol=1e-5)
    assert tokenizer.decode(latents).shape == video.shape


def test_bad_clips_are_refused(tokenizer):
    with pytest.raises(ValueError, match="1 \\+ k \\* 2"):
        tokenizer.encode(torch.zeros(1, 4, 3, 32, 32))
    with pytest.raises(ValueError, match="video must be"):
        tokenizer.encode(torch.zeros(1, 3, 3, 16, 16))
    with pytest.raises(ValueError, match="latents must be"):
        tokenizer.decode(torch.zeros(1, 2, 3, 3, 4))


def test_training_reduces_reconstruction_error_and_resumes(tmp_path):
    before = seeded(lambda: CausalVideoTokenizer(TINY), 0).eval()
    video = clip_tensor(99, 4, 3, 32)
    error = lambda m: torch.nn.functional.mse_loss(m.decode(m.encode(video)), video).item()  # noqa: E731
    trained = train_causal_video_tokenizer(
        tmp_path, TINY, steps=30, batch_size=4, num_frames=3, lr=3e-3, save_every=15
    )
    assert error(trained) < 0.7 * error(before)
    again = train_causal_video_tokenizer(tmp_path, TINY, steps=30, batch_size=4, num_frames=3)  # nothing left
    assert all(
        torch.equal(a, b)
        for a, b in zip(trained.state_dict().values(), again.state_dict().values(), strict=True)
    )

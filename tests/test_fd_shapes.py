"""FD-shapes: the Frechet distance itself, the shipped classifier, and the metric end to end.

PSNR (images.py) is checked here too, as the other image metric.
"""

import numpy as np
import pytest
import torch

from arstudio.data.shapes import class_batch
from arstudio.evaluation.fd_shapes import (
    HELDOUT_SEED,
    evaluate_classifier,
    fd_shapes,
    frechet_distance,
    load_shipped_classifier,
    train_classifier,
)
from arstudio.images import PSNR_CAP_DB, psnr

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def classifier():
    return load_shipped_classifier()


def gaussian_set(mean: np.ndarray, std: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n samples whose sample mean and covariance (ddof=1) are exactly ``mean`` and diag(std**2)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(mean)))
    # Columns of Q span centred data, so they are zero-mean and orthonormal: Q * sqrt(n-1) is white.
    q, _ = np.linalg.qr(x - x.mean(0))
    return mean + q * np.sqrt(n - 1) * std


def test_frechet_distance_of_identical_sets_is_zero():
    feats = np.random.default_rng(0).normal(size=(300, 16))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    mean_a, mean_b = rng.normal(size=8), rng.normal(size=8) + 0.5
    std_a, std_b = rng.uniform(0.5, 2, size=8), rng.uniform(0.5, 2, size=8)
    a, b = gaussian_set(mean_a, std_a, 200, seed=2), gaussian_set(mean_b, std_b, 300, seed=3)
    # For diagonal covariances the matrix square root is elementwise: d = |dmu|^2 + sum (s_a - s_b)^2.
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((std_a - std_b) ** 2)
    assert expected > 1.0
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, a + 1.0) == pytest.approx(8.0, rel=1e-6)  # a pure shift costs |shift|^2


def test_frechet_distance_rejects_mismatched_features():
    with pytest.raises(ValueError, match=r"\(10, 4\)"):
        frechet_distance(np.zeros((10, 4)), np.zeros((10, 5)))


def test_shipped_classifier_is_accurate_on_heldout_items(classifier):
    for resolution in (32, 64):
        accuracy = evaluate_classifier(classifier, count=240, seed=HELDOUT_SEED, resolution=resolution)
        assert accuracy["class"] >= 0.97, (resolution, accuracy)
        assert accuracy["size"] >= 0.95, (resolution, accuracy)


def test_fd_shapes_separates_real_from_noise(classifier):
    real_a, _, _ = class_batch(HELDOUT_SEED, 240, 32)
    real_b, _, _ = class_batch(HELDOUT_SEED + 1, 240, 32)
    noise = np.random.default_rng(0).integers(0, 256, real_a.shape, dtype=np.uint8)
    real_vs_real = fd_shapes(real_a, real_b, classifier)
    real_vs_noise = fd_shapes(real_a, noise, classifier)
    assert 0 < real_vs_real * 10 < real_vs_noise, (real_vs_real, real_vs_noise)


def test_fd_shapes_rejects_sets_of_different_sizes(classifier):
    with pytest.raises(ValueError, match="differ in size"):
        fd_shapes(np.zeros((4, 32, 32, 3), np.uint8), np.zeros((4, 64, 64, 3), np.uint8), classifier)


def test_missing_classifier_says_how_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="arstudio train classifier"):
        load_shipped_classifier(tmp_path / "nothing-here")


def test_training_saves_and_resumes(tmp_path):
    model = train_classifier(tmp_path, steps=2, batch_size=4)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    again = train_classifier(tmp_path, steps=2, batch_size=4)  # already done: resumes at step 2, no step
    assert all(torch.equal(before[k], v) for k, v in again.state_dict().items())


def test_psnr():
    a = np.zeros((2, 8, 8, 3), np.uint8)
    b = a.copy()
    b[1] = 10  # mse 100 on the second image, 0 on the first
    assert psnr(a, a) == PSNR_CAP_DB
    assert psnr(a, b) == pytest.approx((PSNR_CAP_DB + 10 * np.log10(255**2 / 100)) / 2)
    assert psnr(a[1], b[1]) == pytest.approx(10 * np.log10(255**2 / 100))  # a single image works too
    with pytest.raises(ValueError, match="equal shapes"):
        psnr(a, b[:1])

"""FD-shapes: Frechet distance between feature statistics of two image sets, in a small CNN's feature space.

The features come from ``ShapesClassifier``, trained here on the procedural shapes benchmark (class, size
and region heads), so the distance is sensitive to what matters on that benchmark and needs no download.
Its numbers are only comparable with other FD-shapes numbers from the same classifier weights.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn
from tqdm.auto import tqdm

from arstudio.data.shapes import NUM_CLASSES, REGIONS, SIZES, class_batch
from arstudio.images import as_image_batch, images_to_tensor
from arstudio.io import CONFIG_NAME, PretrainedMixin
from arstudio.seeding import seeded
from arstudio.training.common import (
    checkpoint_due,
    cosine_lr,
    make_accelerator,
    optimizer_step,
    resume_checkpoint,
    save_checkpoint,
    set_lr,
)

SHIPPED_DIR = Path(__file__).parent.parent / "weights" / "fd-shapes-classifier"
# Items of this seed are never used for training (train_classifier refuses it), so accuracy on them is
# held out.
HELDOUT_SEED = 999


@dataclass(frozen=True)
class ClassifierConfig:
    resolution: int = 32  # side the classifier was trained at; fd_shapes resizes other sides to it
    widths: tuple[int, ...] = (16, 32, 64)  # one stage per width, each after the first halves the grid
    feature_dim: int = 128
    norm_groups: int = 8
    num_classes: int = NUM_CLASSES
    num_sizes: int = len(SIZES)
    num_regions: int = len(REGIONS)


def _conv_block(in_ch: int, out_ch: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1),
        nn.GroupNorm(groups, out_ch),
        nn.SiLU(),
    )


class ShapesClassifier(PretrainedMixin, nn.Module):
    """Small CNN over float (B, 3, H, W) in [-1, 1]; global pooling lets any side (32, 64) through."""

    config_class = ClassifierConfig

    def __init__(self, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.config = config
        stages = []
        in_ch = 3 + 2  # RGB + (x, y) coordinates: pooling alone would throw away where the object is
        for i, width in enumerate(config.widths):
            stages.append(_conv_block(in_ch, width, 1 if i == 0 else 2, config.norm_groups))
            stages.append(_conv_block(width, width, 1, config.norm_groups))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Linear(2 * in_ch, config.feature_dim)  # mean- and max-pooled stage output
        self.class_head = nn.Linear(config.feature_dim, config.num_classes)
        self.size_head = nn.Linear(config.feature_dim, config.num_sizes)
        self.region_head = nn.Linear(config.feature_dim, config.num_regions)

    @staticmethod
    def _with_coordinates(x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
        return torch.cat([x, xs, ys], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, feature_dim): what FD-shapes compares."""
        h = self.stages(self._with_coordinates(x))
        # Max pooling keeps local detectors (a corner, a curve) that decide the shape and that averaging over
        # a mostly black canvas dilutes (mean-only pooling stalled near 65 % class accuracy); the mean
        # keeps global amounts (how much of each colour, how much noise) that the max cannot see.
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return F.silu(self.proj(pooled))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {"class": self.class_head(f), "size": self.size_head(f), "region": self.region_head(f)}


def classifier_batch(seed: int, start: int, count: int, resolution: int):
    """Images (float, [-1, 1]) and class/size/region targets of class-conditional items start..start+count."""
    images, labels, objects = class_batch(seed, count, resolution, start=start)
    targets = {
        "class": torch.from_numpy(labels),
        "size": torch.tensor([SIZES.index(o.size) for o in objects]),
        "region": torch.tensor([REGIONS.index(o.region) for o in objects]),
    }
    return images_to_tensor(images), targets


def train_classifier(
    out_dir: str | Path,
    steps: int = 600,
    batch_size: int = 64,
    seed: int = 0,
    resolution: int = 32,
    lr: float = 3e-3,
    noise_std: float = 0.1,
    save_every: int = 200,
) -> ShapesClassifier:
    """Train the FD-shapes classifier; rerunning with the same ``out_dir`` resumes from the last save.

    Each batch is mildly noised (per-image std uniform in [0, ``noise_std``]) so features of imperfect
    generated images move smoothly instead of jumping off the clean-image manifold.
    """
    if seed == HELDOUT_SEED:
        raise ValueError(f"seed {seed} is the held-out seed of FD-shapes: train with another")
    out_dir = Path(out_dir)
    # Weight init from the seed; data and noise come from per-step seeds below.
    model = seeded(lambda: ShapesClassifier(ClassifierConfig(resolution=resolution)), seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    start = resume_checkpoint(model, optimizer, out_dir)
    accelerator = make_accelerator()
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    bar = tqdm(range(start, steps), desc="classifier", initial=start, total=steps)
    for step in bar:
        set_lr(optimizer, cosine_lr(step, steps, lr, warmup=30))
        images, targets = classifier_batch(seed, step * batch_size, batch_size, resolution)
        noise = torch.Generator().manual_seed(seed * 1_000_003 + step)  # same stream after a resume
        std = torch.rand(batch_size, 1, 1, 1, generator=noise) * noise_std
        images = images + std * torch.randn(images.shape, generator=noise)
        logits = model(images.to(accelerator.device))
        losses = {k: F.cross_entropy(logits[k], targets[k].to(accelerator.device)) for k in logits}
        loss = sum(losses.values())
        optimizer_step(accelerator, model, optimizer, loss)
        if step % 25 == 0:
            bar.set_postfix({k: f"{v.item():.3f}" for k, v in losses.items()})
        if checkpoint_due(step, steps, save_every):
            save_checkpoint(accelerator.unwrap_model(model), optimizer, step + 1, out_dir)
    return accelerator.unwrap_model(model).eval()


def _prepare(images, classifier: ShapesClassifier) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, R, R) at the classifier's training resolution."""
    x = images_to_tensor(np.ascontiguousarray(as_image_batch(images)))
    side = classifier.config.resolution
    if x.shape[-2:] != (side, side):
        # Area averaging: 64 -> 32 is an exact 2x2 mean, the closest to how a 32 px render looks.
        x = F.interpolate(x, size=(side, side), mode="area")
    return x


@torch.no_grad()
def extract_features(images, classifier: ShapesClassifier, batch_size: int = 256) -> np.ndarray:
    """Features (N, feature_dim) float64 of uint8 images (N, H, W, 3)."""
    classifier.eval()
    x = _prepare(images, classifier)
    device = next(classifier.parameters()).device
    feats = [
        classifier.features(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)
    ]
    return torch.cat(feats).double().numpy()


@torch.no_grad()
def evaluate_classifier(
    classifier: ShapesClassifier, count: int = 240, seed: int = HELDOUT_SEED, resolution: int | None = None
) -> dict[str, float]:
    """Accuracy of each head on ``count`` clean class-conditional items of ``seed`` (held out by default)."""
    classifier.eval()
    images, labels, objects = class_batch(seed, count, resolution or classifier.config.resolution)
    targets = {
        "class": labels,
        "size": np.array([SIZES.index(o.size) for o in objects]),
        "region": np.array([REGIONS.index(o.region) for o in objects]),
    }
    device = next(classifier.parameters()).device
    logits = {k: v.cpu() for k, v in classifier(_prepare(images, classifier).to(device)).items()}
    return {k: float((logits[k].argmax(1).numpy() == targets[k]).mean()) for k in logits}


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D) and (M, D).

    d = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).
    """
    feats_a, feats_b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if feats_a.ndim != 2 or feats_b.ndim != 2 or feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"need two (N, D) feature sets of equal D, got {feats_a.shape} and {feats_b.shape}")
    if len(feats_a) < 2 or len(feats_b) < 2:
        raise ValueError(
            f"need at least 2 samples per set for a covariance, got {len(feats_a)}, {len(feats_b)}"
        )
    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(feats_a, rowvar=False)), np.atleast_2d(np.cov(feats_b, rowvar=False))
    diff = mu_a - mu_b
    distance = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * _trace_sqrt_product(cov_a, cov_b)
    # The true value is >= 0; identical sets can land a hair below through round-off.
    return max(float(distance), 0.0)


def _trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """Tr((cov_a cov_b)^(1/2)) with scipy's sqrtm, guarded against the ways it goes wrong."""

    def root(product: np.ndarray) -> tuple[np.ndarray, float]:
        with warnings.catch_warnings():
            # sqrtm warns on any singular input (e.g. a set of identical images) even when its result is
            # exact; the residual below is the check that matters.
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            r = linalg.sqrtm(product)
        residual = np.linalg.norm(r @ r - product) / max(np.linalg.norm(product), 1e-30)
        return r, residual

    covmean, residual = root(cov_a @ cov_b)
    if not np.isfinite(covmean).all() or residual > 1e-4:
        # Near-singular product (fewer samples than dimensions): nudge both off singularity and retry.
        offset = np.eye(len(cov_a)) * 1e-6
        covmean, residual = root((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(covmean):
        # Round-off makes sqrtm of a PSD product slightly complex; a large imaginary part is a real problem.
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm gave a complex result (max |imag| {np.abs(covmean.imag).max():.3g})")
        covmean = covmean.real
    return float(np.trace(covmean))


def fd_shapes(images_a, images_b, classifier: ShapesClassifier, batch_size: int = 256) -> float:
    """FD-shapes between two uint8 image sets (N, H, W, 3); use a few hundred images or more per set."""
    a, b = as_image_batch(images_a, "images_a"), as_image_batch(images_b, "images_b")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"image sets differ in size: {a.shape[1:]} and {b.shape[1:]}")
    return frechet_distance(
        extract_features(a, classifier, batch_size), extract_features(b, classifier, batch_size)
    )


def load_shipped_classifier(directory: str | Path = SHIPPED_DIR) -> ShapesClassifier:
    """The FD-shapes classifier shipped in ``arstudio/weights/fd-shapes-classifier`` (eval mode)."""
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"no FD-shapes classifier in {str(directory)!r}. Train one with `arstudio train classifier --out "
            "runs/fd-shapes-classifier` (or arstudio.evaluation.fd_shapes.train_classifier(out_dir)), then "
            f"copy its config.json and model.safetensors into {str(directory)!r}."
        )
    return ShapesClassifier.from_pretrained(directory)

"""Tokenizer quality: verifier agreement on reconstructed held-out shapes, PSNR on held-out shapes and
held-out scikit-image photo crops, codebook usage (VQ tokenizers; KL and TokenBridge presets report the rest).

    python -m benchmarks.bench_tokenizer [--preset shapes-c2i] [--count 480]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from arstudio.data.photos import photo_crops
from arstudio.data.shapes import class_batch, make_text_item
from arstudio.evaluation.verifier import verify_objects
from arstudio.images import images_to_tensor, psnr, tensor_to_images
from arstudio.pipelines.loading import load_tokenizer
from arstudio.tokenizers.vq import codebook_usage
from benchmarks.common import finish, header

HELDOUT_SEED = 12345  # training used seed 0; item streams of other seeds are disjoint draws


def reconstruct(tokenizer, images: np.ndarray, chunk: int = 128):
    ids, recon = [], []
    for start in range(0, len(images), chunk):
        x = images_to_tensor(images[start : start + chunk])
        batch_ids = tokenizer.encode(x)
        ids.append(batch_ids)
        recon.append(tensor_to_images(tokenizer.decode(batch_ids)))
    return torch.cat(ids), np.concatenate(recon)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shapes-c2i")
    parser.add_argument("--count", type=int, default=480)
    args = parser.parse_args()
    info = header(f"tokenizer_{args.preset}")
    tokenizer = load_tokenizer(args.preset, device="cpu")
    size = tokenizer.config.resolution

    images, _, objects = class_batch(HELDOUT_SEED, args.count, size)
    ids, recon = reconstruct(tokenizer, images)
    agree_c2i = np.mean([verify_objects(r, [o]) for r, o in zip(recon, objects, strict=True)])
    text_items = [make_text_item(HELDOUT_SEED, i, size) for i in range(args.count)]
    text_images = np.stack([item[0] for item in text_items])
    _, text_recon = reconstruct(tokenizer, text_images)
    agree_t2i = np.mean([verify_objects(r, item[2]) for r, item in zip(text_recon, text_items, strict=True)])
    crops = photo_crops(args.count, size, seed=HELDOUT_SEED, split="heldout")
    _, crop_recon = reconstruct(tokenizer, crops)

    results = {
        "preset": args.preset,
        "count": args.count,
        "verifier_agreement_shapes_c2i": float(agree_c2i),
        "verifier_agreement_shapes_t2i": float(agree_t2i),
        "psnr_shapes_db": psnr(images, recon),
        "psnr_photo_crops_db": psnr(crops, crop_recon),
    }
    if hasattr(tokenizer, "codebook_vectors"):  # a joint codebook (VQ)
        usage = codebook_usage(ids, tokenizer.codebook_size)
        results.update(
            codebook_usage_on_shapes=usage["usage"],
            codebook_perplexity_on_shapes=usage["perplexity"],
            codebook_size=tokenizer.codebook_size,
        )
    for key, value in results.items():
        print(f"{key:32s} {value:.4f}" if isinstance(value, float) else f"{key:32s} {value}")
    finish(info, results)


if __name__ == "__main__":
    main()

"""The causal video tokenizer: reconstruction PSNR and verifier accuracy of reconstructed frames on held-out
sprite clips, the first-frame / prefix causality checks, and tokens per clip against frame-wise KL latents.

    python -m benchmarks.bench_causal_video_tokenizer [--weights runs/causal-video-tokenizer] [--clips 32]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from arstudio.evaluation.clip_verifier import verify_clip
from arstudio.images import psnr, tensor_to_images
from arstudio.tokenizers.causal_video import CausalVideoTokenizer
from arstudio.training.video_tokenizer import clip_tensor
from benchmarks.bench_video import HELDOUT_SEED
from benchmarks.common import finish, header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="runs/causal-video-tokenizer")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--frames", type=int, default=9, help="1 + 2k frames per clip")
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = header("causal_video_tokenizer")
    tokenizer = CausalVideoTokenizer.from_pretrained(args.weights)
    from arstudio.data.sprites import class_clips

    frames, labels, _ = class_clips(HELDOUT_SEED, args.clips, args.frames, tokenizer.config.resolution)
    video = clip_tensor(HELDOUT_SEED, args.clips, args.frames, tokenizer.config.resolution)
    latents = tokenizer.encode(video)
    recon = tokenizer.decode(latents)
    pixels = tensor_to_images(recon.flatten(0, 1)).reshape(frames.shape)
    first_alone = tokenizer.encode(video[:, :1])
    prefix = tokenizer.encode(video[:, :3])
    verdicts = [verify_clip(c, int(y)) for c, y in zip(pixels, labels, strict=True)]
    kl_tokens = args.frames * tokenizer.grid_size**2
    results = {
        "clips": args.clips,
        "frames": args.frames,
        "psnr_db": psnr(frames.reshape(-1, *frames.shape[2:]), pixels.reshape(-1, *frames.shape[2:])),
        "reconstructed_frame_accuracy": float(np.mean([v.frame_accuracy for v in verdicts])),
        "reconstructed_clip_acceptance": float(np.mean([v.accepted for v in verdicts])),
        "first_frame_alone_max_abs_diff": float((latents[:, :1] - first_alone).abs().max()),
        "prefix_max_abs_diff": float((latents[:, :2] - prefix).abs().max()),
        "latent_shape_per_clip": list(latents.shape[1:]),
        "tokens_per_clip": int(latents.shape[1] * tokenizer.grid_size**2),
        "framewise_kl_tokens_per_clip": kl_tokens,
    }
    for key, value in results.items():
        print(f"{key}: {value}")
    finish(info, results)


if __name__ == "__main__":
    main()

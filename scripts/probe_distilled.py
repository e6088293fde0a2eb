"""Quick quality probe of DD model folders (training runs or snapshots): verifier accuracy and FD-shapes of
1-step and 2-step samples, decoded from the vectors, on ``count`` images (labels cycled, noise seeds
first_seed..first_seed + count - 1; pass a large first_seed to choose between runs on noise the benchmark
does not draw).

    python scripts/probe_distilled.py runs/dd1-shapes-c2i,runs/dd2-shapes-c2i [count] [first_seed]
"""

from __future__ import annotations

import sys

import torch

from arstudio.data.shapes import NUM_CLASSES, class_batch
from arstudio.decoding.distilled import draw_noise, sample_distilled
from arstudio.evaluation.fd_shapes import fd_shapes, load_shipped_classifier
from arstudio.evaluation.verifier import class_accuracy
from arstudio.generators.distilled import DDGenerator
from arstudio.images import tensor_to_images
from arstudio.pipelines.loading import load_pipeline


@torch.no_grad()
def main() -> None:
    folders, count = sys.argv[1].split(","), int(sys.argv[2]) if len(sys.argv) > 2 else 240
    first_seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    pipe = load_pipeline("shapes-c2i", device="cpu")
    classifier = load_shipped_classifier()
    labels = torch.arange(count) % NUM_CLASSES
    real = class_batch(1001, count, pipe.tokenizer.config.resolution)[0]
    codebook = pipe.tokenizer.codebook_vectors().detach()
    grid = pipe.tokenizer.grid_size
    for folder in folders:
        model = DDGenerator.from_pretrained(folder)
        model.check_pairing(pipe.generator, pipe.tokenizer)
        noise = draw_noise(
            [torch.Generator().manual_seed(first_seed + i) for i in range(count)],
            model.seq_len,
            model.config.token_dim,
        )
        for steps in (1, 2):
            result = sample_distilled(model, labels, noise, codebook, steps)
            vectors = result.vectors.view(-1, grid, grid, result.vectors.shape[-1])
            images = tensor_to_images(pipe.tokenizer.decode_vectors(vectors).float())
            accuracy = class_accuracy(images, labels)
            print(
                f"{folder} {steps}-step: verifier {accuracy:.3f}  FD-shapes {fd_shapes(images, real, classifier):.1f}"
            )


if __name__ == "__main__":
    main()

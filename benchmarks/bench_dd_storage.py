"""A preset's DD models stored in float16 (as trained, rounded) against int8 (``ship_weights.py``'s per-channel
storage): verifier accuracy and FD-shapes of the same images (same requests, same seeds), side by side.

The int8 copy is made in memory from the loaded weights, so run it on the float16 files to decide how to ship
them (on int8 files both rows are the same).

    python -m benchmarks.bench_dd_storage [--preset shapes-c2i] [--count 240]
"""

from __future__ import annotations

import argparse

import torch

from arstudio.evaluation.fd_shapes import fd_shapes, load_shipped_classifier
from arstudio.io import dequantize_int8, storage_state
from arstudio.pipelines.loading import load_pipeline
from benchmarks.bench_speculative import quality, requests
from benchmarks.common import finish, header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="shapes-c2i")
    parser.add_argument("--count", type=int, default=240)
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = header("dd_storage_" + args.preset)
    classifier = load_shipped_classifier()
    pipe = load_pipeline(args.preset, device="cpu")
    reqs, checks, real, real_again = requests(pipe, args.count)
    rows = {"fd_shapes_real_vs_real": fd_shapes(real_again, real, classifier)}
    for method, model in pipe.distilled.items():
        loaded = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        int8 = dequantize_int8(storage_state(model, torch.int8))
        for storage, state in (("as loaded", loaded), ("int8", int8)):
            model.load_state_dict({name: tensor.to(loaded[name].dtype) for name, tensor in state.items()})
            row = quality(pipe, reqs, checks, real, {"decoding": method}, 16, classifier)
            rows[f"{method} {storage}"] = row
            print(
                f"{method} {storage:9s} verifier {row['verifier_accuracy']:.3f}  FD-shapes {row['fd_shapes']:.1f}"
            )
        model.load_state_dict(loaded)
    finish(info, {"count": args.count, "results": rows})


if __name__ == "__main__":
    main()

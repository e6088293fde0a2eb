"""Size limits of one request, and the batch size long requests are cut into.

One call of a pipeline holds all its images (and their KV caches) in memory at once, so a call is bounded;
the CLI and the batch renderer cut bigger requests into batches of ``default_batch_size`` and write each
finished batch to disk, so their memory does not grow with the request. No torch import at module level:
the CLI's ``--help`` imports this.
"""

from __future__ import annotations

MAX_IMAGES_PER_CALL = 1024  # images (or videos) per prompt/label in one pipeline call
MAX_IMAGES_PER_JOB = 10_000  # seeds in one render job
MAX_IMAGES_PER_RUN = (
    1_000_000  # one `arstudio generate`: its per-image seeds are drawn up front, 8 bytes each
)
MAX_GRID_IMAGES = 256  # grid.png shows the first ones: a contact sheet, not a copy of the run
CPU_BATCH_SIZE = 16  # a CPU gains little past this and a bigger batch only delays the first file on disk
MAX_BATCH_SIZE = 256


def check_images_per_call(count, name: str = "num_images_per_prompt") -> int:
    """``count`` if it is an integer in [1, MAX_IMAGES_PER_CALL], else a ValueError naming it."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_IMAGES_PER_CALL:
        raise ValueError(
            f"{name}={count!r} must be an integer in [1, {MAX_IMAGES_PER_CALL}] (images per call); "
            "for more, call again with other seeds (the CLI's --batch-size does this)"
        )
    return count


def default_batch_size(device=None) -> int:
    """Images per pipeline call: CPU_BATCH_SIZE on a CPU; on a GPU 64 per 16 GiB of its memory (a
    LlamaGen-L image with CFG holds about 100 MB of fp32 KV cache), at most MAX_BATCH_SIZE."""
    import torch

    device = torch.device(device) if device is not None else None
    if device is None and torch.cuda.is_available():
        device = torch.device("cuda")
    if device is None or device.type != "cuda":
        return CPU_BATCH_SIZE
    total = torch.cuda.get_device_properties(device).total_memory
    return max(1, min(MAX_BATCH_SIZE, 64 * int(total // 2**34)))

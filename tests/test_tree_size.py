"""The tracked tree must travel to a remote GPU machine, which receives at most 64 MiB (tree, ../shared and any
extra files together): keep the tracked files under 56 MiB, and no single file over 20 MB."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TREE_LIMIT = 56 * 2**20
FILE_LIMIT = 20 * 10**6


def tracked_sizes() -> dict[str, int]:
    """Bytes of every file git tracks here (working-tree sizes); skips when this is not a git checkout."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    listing = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True)
    if listing.returncode != 0:
        pytest.skip("not a git checkout (an installed or unpacked copy): nothing tracked to measure")
    names = [name for name in listing.stdout.decode().split("\0") if name]
    return {name: (ROOT / name).stat().st_size for name in names if (ROOT / name).is_file()}


def test_tracked_tree_fits_what_a_gpu_run_receives():
    sizes = tracked_sizes()
    total = sum(sizes.values())
    largest = sorted(sizes, key=sizes.get, reverse=True)[:5]
    assert total <= TREE_LIMIT, (
        f"tracked files total {total / 2**20:.1f} MiB, over the {TREE_LIMIT / 2**20:.0f} MiB limit; largest: "
        + ", ".join(f"{name} ({sizes[name] / 2**20:.1f} MiB)" for name in largest)
        + ". Store weights smaller (scripts/ship_weights.py) or keep large files out of git."
    )


def test_no_tracked_file_is_over_20_mb():
    too_big = {name: size for name, size in tracked_sizes().items() if size > FILE_LIMIT}
    assert not too_big, f"files over 20 MB: {too_big}"

"""Tests run on one thread (the CI cores are shared and OpenMP slows 5-50x under contention), offline.

The device: CPU unless ``--device cuda`` or ``ARSTUDIO_TEST_DEVICE=cuda`` says otherwise (the option wins). Tests
that are not about the CPU itself take the ``device`` fixture; ``@pytest.mark.cuda_only`` tests run only when
that device is CUDA and skip otherwise, so CI (CPU) stays green and a GPU run covers them.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

TEST_DEVICES = ("cpu", "cuda")
DEVICE_ENV = "ARSTUDIO_TEST_DEVICE"


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default=None,
        help=f"device the tests run on: one of {TEST_DEVICES} (default: ${DEVICE_ENV}, else cpu)",
    )


def chosen_device_name(config) -> str:
    """The run's device name, checked once: a bad name or CUDA without a GPU stops the run before any test."""
    name = config.getoption("--device") or os.environ.get(DEVICE_ENV) or "cpu"
    if name not in TEST_DEVICES:
        raise pytest.UsageError(f"test device {name!r} is not allowed; use one of {TEST_DEVICES}")
    if name == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("test device 'cuda' was asked for, but torch sees no CUDA device")
    return name


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda_only: needs a CUDA device; skipped unless the test device is cuda"
    )
    config.arstudio_device = chosen_device_name(config)


def pytest_collection_modifyitems(config, items):
    if config.arstudio_device == "cuda":
        return
    skip = pytest.mark.skip(reason=f"CUDA-only: run with --device cuda or {DEVICE_ENV}=cuda on a GPU machine")
    for item in items:
        if "cuda_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    """The device tests run on (see the module docstring)."""
    return torch.device(pytestconfig.arstudio_device)

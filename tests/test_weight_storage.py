"""Storage dtypes of save_pretrained: float16 and int8 (per-channel scales) load back as float32; buffers keep
their dtype; a bad storage dtype is refused before anything is written."""

import pytest
import torch
from safetensors.torch import load_file

from arstudio.io import INT8_SCALE_SUFFIX, WEIGHTS_NAME, dequantize_int8, quantize_int8
from arstudio.tokenizers.bridge import BridgeConfig, BridgeTokenizer
from arstudio.tokenizers.kl import KLConfig


def test_int8_round_trip_error_is_bounded_per_channel():
    weight = (
        torch.randn(6, 40, generator=torch.Generator().manual_seed(0))
        * torch.tensor([1e-3, 1, 10, 0, 5, 2])[:, None]
    )
    values, scale = quantize_int8(weight)
    assert values.dtype == torch.int8 and scale.shape == (6,)
    restored = dequantize_int8({"w": values, "w" + INT8_SCALE_SUFFIX: scale})["w"]
    assert restored.dtype == torch.float32
    # symmetric rounding: at most half a step of each row's own scale (the all-zero row stays zero)
    assert ((restored - weight).abs() <= scale[:, None] / 2 + 1e-12).all()
    assert torch.equal(restored[3], torch.zeros(40))


def _bridge():
    kl = KLConfig(
        resolution=16, block_out_channels=(16, 32, 32), latent_channels=4, norm_num_groups=4
    )  # 3x3 convs of 9216 values: int8
    torch.manual_seed(0)
    model = BridgeTokenizer(BridgeConfig(kl=kl, levels=8))
    model.quantizer.fit(torch.randn(500, 4) * 3 + 1)
    return model


@pytest.mark.parametrize("dtype", [torch.float16, torch.int8])
def test_reduced_storage_loads_as_float32_and_keeps_buffers(dtype, tmp_path):
    model = _bridge()
    model.save_pretrained(tmp_path, dtype=dtype)
    stored = load_file(str(tmp_path / WEIGHTS_NAME))
    parameters = dict(model.named_parameters())
    assert stored["quantizer.edges"].dtype == torch.float32  # a buffer: bin edges decide token ids
    reduced = {k for k, v in stored.items() if v.dtype in (torch.float16, torch.int8)}
    assert reduced and all(k in parameters for k in reduced)
    assert any(v.dtype == torch.int8 for v in stored.values()) == (dtype == torch.int8)
    loaded = BridgeTokenizer.from_pretrained(tmp_path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert torch.equal(loaded.quantizer.edges, model.quantizer.edges)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(loaded.encode(images), model.encode(images)) or dtype == torch.int8
    error = (loaded.kl.decode(model.kl.encode(images)) - model.kl.decode(model.kl.encode(images))).abs().max()
    assert error < (0.05 if dtype == torch.int8 else 0.01)


def test_a_storage_dtype_outside_the_allowed_set_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"storage dtype=torch.int16 is not allowed; use one of"):
        _bridge().save_pretrained(tmp_path, dtype=torch.int16)
    assert not (tmp_path / WEIGHTS_NAME).exists()

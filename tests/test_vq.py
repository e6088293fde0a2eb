import pickle

import pytest
import torch

from arstudio.io import check_state_dict, load_safetensors
from arstudio.tokenizers.vq import VQConfig, VQTokenizer, codebook_usage

TINY = VQConfig(
    resolution=16,
    ch=8,
    ch_mult=(1, 2, 2),
    z_channels=8,
    codebook_size=32,
    codebook_embed_dim=4,
    norm_groups=4,
    decoder_res_blocks=1,
)


@pytest.fixture(scope="module")
def vq(device):
    torch.manual_seed(0)
    return VQTokenizer(TINY).to(device).eval()


def test_encode_decode_embed_shapes(vq, device):
    images = torch.rand(2, 3, 16, 16, device=device) * 2 - 1
    ids = vq.encode(images)
    assert ids.shape == (2, 4, 4) and ids.dtype == torch.int64 and ids.device.type == device.type
    assert int(ids.max()) < 32
    vectors = vq.embed(ids)
    assert vectors.shape == (2, 4, 4, 4)
    ones = torch.ones(2, 4, 4, device=device)
    assert torch.allclose(vectors.norm(dim=-1), ones, atol=1e-5)  # l2-normalised codebook
    assert vq.decode(ids).shape == (2, 3, 16, 16)


def test_quantizer_picks_nearest_code_and_passes_gradients(vq, device):
    z = torch.randn(1, 4, 2, 2, device=device, requires_grad=True)
    z_q, ids, loss = vq.quantize(z)
    unit = torch.nn.functional.normalize(z.permute(0, 2, 3, 1), dim=-1)
    distances = torch.cdist(unit.reshape(-1, 4), vq.quantize.codebook())
    assert torch.equal(ids.reshape(-1), distances.argmin(dim=-1))
    (z_q.sum() + loss).backward()  # straight-through: the encoder side gets a gradient
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_training_forward_returns_loss(vq, device):
    recon, ids, vq_loss = vq(torch.zeros(1, 3, 16, 16, device=device))
    assert recon.shape == (1, 3, 16, 16) and vq_loss.ndim == 0


@pytest.mark.parametrize(
    "shape, message",
    [((1, 3, 32, 32), r"\(32, 32\) pixels"), ((1, 1, 16, 16), "1 channels"), ((3, 16, 16), "tensor")],
)
def test_wrong_image_size_or_channels(vq, shape, message, device):
    with pytest.raises(ValueError, match=message):
        vq.encode(torch.zeros(shape, device=device))


def test_out_of_range_ids(vq, device):
    with pytest.raises(ValueError, match="allowed are 0..31"):
        vq.decode(torch.full((1, 4, 4), 32, device=device))


def test_codebook_usage():
    stats = codebook_usage(torch.tensor([0, 1, 1, 3]), 4)
    assert stats["usage"] == 0.75 and 1 < stats["perplexity"] < 3


def test_save_load_round_trip(vq, tmp_path, device):
    vq.save_pretrained(tmp_path)
    again = VQTokenizer.from_pretrained(tmp_path).to(device)
    images = torch.rand(1, 3, 16, 16, device=device)
    assert torch.equal(vq.decode(vq.encode(images)), again.decode(again.encode(images)))


def test_float16_storage_keeps_the_codebook_fingerprint_and_loads_float32(vq, tmp_path):
    """Shipped tokenizers are stored in float16: they load as float32, and their codebook fingerprint (which DD
    models check) is the same for the float32/bf16/fp16 copies and on any device of the loaded model."""
    from arstudio.generators.distilled import codebook_fingerprint

    vq.save_pretrained(tmp_path, dtype=torch.float16)
    loaded = VQTokenizer.from_pretrained(tmp_path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    expected = codebook_fingerprint(loaded)
    assert expected != codebook_fingerprint(vq)  # the hash sees the rounding: it is not vacuous
    for dtype in (torch.bfloat16, torch.float16):
        assert codebook_fingerprint(VQTokenizer.from_pretrained(tmp_path).to(dtype)) == expected
    assert codebook_fingerprint(loaded.to(vq.quantize.embedding.weight.device)) == expected


def test_checkpoint_with_missing_unexpected_and_wrong_keys(vq):
    state = dict(vq.state_dict())
    state.pop("quant_conv.weight")
    state["extra.weight"] = torch.zeros(1)
    state["post_quant_conv.bias"] = torch.zeros(99)
    with pytest.raises(ValueError) as info:
        check_state_dict(vq, state)
    text = str(info.value)
    assert "missing keys (1): quant_conv.weight" in text
    assert "unexpected keys (1): extra.weight" in text
    assert "post_quant_conv.bias: (99,)" in text


def test_pickle_checkpoint_is_refused_on_the_safetensors_path(vq, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"weight": [1, 2, 3]}))
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_safetensors(path)
    with pytest.raises(ValueError, match="not a safetensors file"):
        (tmp_path / "config.json").write_text('{"class": "VQTokenizer"}')
        VQTokenizer.from_pretrained(tmp_path)


def test_config_of_another_class_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"class": "ImageGenerator"}')
    with pytest.raises(ValueError, match="expected a 'VQTokenizer'"):
        VQTokenizer.from_pretrained(tmp_path)

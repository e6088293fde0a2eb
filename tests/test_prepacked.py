"""The CPU linear fast path (nn/prepacked.py): same layer, same state dict, close outputs, fresh weights."""

import torch
from torch import nn
from torch.nn import functional as F

import arstudio
from arstudio.nn.prepacked import PrepackedLinear, prepack_linears


def _pair(bias: bool):
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(16, 24, bias=bias), nn.ReLU(), nn.Linear(24, 8, bias=bias))
    packed = nn.Sequential(nn.Linear(16, 24, bias=bias), nn.ReLU(), nn.Linear(24, 8, bias=bias))
    packed.load_state_dict(plain.state_dict())
    assert prepack_linears(packed) == 2
    return plain, packed


def test_prepacked_layers_match_f_linear_and_keep_the_state_dict():
    for bias in (False, True):
        plain, packed = _pair(bias)
        assert all(type(m) is PrepackedLinear for m in (packed[0], packed[2]))
        assert plain.state_dict().keys() == packed.state_dict().keys()
        x = torch.randn(3, 5, 16)  # 15 rows: the fast path
        with torch.no_grad():
            torch.testing.assert_close(packed(x), plain(x), atol=1e-6, rtol=1e-5)
        assert "_transposed" in packed[0].__dict__  # the fast path ran
        assert "_transposed" not in packed[0].state_dict()
        few = torch.randn(1, 2, 16)  # an AR step's rows: F.linear itself, bitwise
        with torch.no_grad():
            assert torch.equal(packed(few), plain(few))


def test_training_takes_f_linear_and_the_copy_follows_weight_changes():
    plain, packed = _pair(bias=True)
    x = torch.randn(4, 16)
    out = packed(x)  # autograd on: F.linear itself, bitwise
    assert torch.equal(out, plain(x))
    out.sum().backward()
    assert packed[0].weight.grad is not None
    with torch.no_grad():
        before = packed(x)
        packed[0].weight.mul_(2.0)  # in place, as an optimiser step or load_state_dict does
        doubled = packed(x)
        plain[0].weight.mul_(2.0)
        torch.testing.assert_close(doubled, plain(x), atol=1e-6, rtol=1e-5)
        assert not torch.allclose(before, doubled)


def test_prepacking_can_be_undone():
    _, packed = _pair(bias=False)
    assert prepack_linears(packed, enable=False) == 2
    assert all(type(m) is nn.Linear for m in (packed[0], packed[2]))
    assert "_transposed" not in packed[0].__dict__
    x = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(packed[0](x), F.linear(x, packed[0].weight, packed[0].bias))


def test_large_layers_are_left_alone():
    big = nn.Linear(1024, 1025, bias=False)
    assert prepack_linears(big) == 0 and type(big) is nn.Linear


def test_cpu_pipelines_prepack_their_models():
    pipe = arstudio.load_pipeline("test-tiny-c2i", device="cpu")
    layers = [m for m in pipe.generator.modules() if isinstance(m, nn.Linear)]
    assert layers and all(type(m) is PrepackedLinear for m in layers)
    assert pipe.drafter is None or all(
        type(m) is PrepackedLinear for m in pipe.drafter.modules() if isinstance(m, nn.Linear)
    )

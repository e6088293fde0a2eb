import pytest
import torch

from arstudio.generators.backbone import Backbone, BackboneConfig
from arstudio.generators.image import GeneratorConfig, ImageGenerator
from arstudio.nn.rope import apply_rope, rope_2d_table


def tiny_generator(n_kv_head=None, prefix_len=1):
    torch.manual_seed(0)
    cfg = GeneratorConfig(
        vocab_size=40,
        num_classes=5,
        backbone=BackboneConfig(
            dim=32, n_layer=2, n_head=4, n_kv_head=n_kv_head, grid_size=4, prefix_len=prefix_len
        ),
    )
    model = ImageGenerator(cfg).eval()
    torch.nn.init.normal_(model.head.output.weight, std=0.5)  # the zero init would make every logit equal
    return model


@pytest.mark.parametrize("n_kv_head", [None, 2, 1])
def test_kv_cached_logits_equal_a_full_forward(n_kv_head):
    model = tiny_generator(n_kv_head)
    tokens = torch.randint(0, 40, (3, 16), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 4, 5])  # 5 is the null class
    with torch.no_grad():
        full = model(tokens, labels)  # (3, 16, 40)
        model.setup_cache(3)
        steps = [model.prefill(labels)]
        # A 3-token chunk, then one token per step: both must match the full pass.
        steps.extend(model.step(tokens[:, :3], torch.arange(1, 4)).unbind(1))
        for i in range(3, 15):
            steps.append(model.step(tokens[:, i : i + 1], torch.tensor([1 + i]))[:, 0])
    cached = torch.stack(steps, dim=1)
    assert cached.shape == full.shape
    assert (cached - full).abs().max() < 1e-4


def test_step_without_cache_is_an_error():
    model = tiny_generator()
    with pytest.raises(RuntimeError, match="setup_cache"):
        model.step(torch.zeros(1, 1, dtype=torch.long), torch.tensor([1]))


def test_rope_prefix_is_identity_unless_zeroed():
    table = rope_2d_table(grid_size=2, head_dim=8, prefix_len=2)
    x = torch.randn(1, 6, 1, 8)
    rotated = apply_rope(x, table)
    assert torch.allclose(rotated[:, :2], x[:, :2])  # prefix untouched
    assert not torch.allclose(rotated[:, 3], x[:, 3])  # grid position (0, 1) rotates
    zeroed = apply_rope(x, rope_2d_table(2, 8, 2, zero_prefix=True))
    assert torch.equal(zeroed[:, :2], torch.zeros_like(x[:, :2]))  # LlamaGen's quirk


def test_rope_depends_on_row_and_column_halves():
    table = rope_2d_table(grid_size=3, head_dim=8, prefix_len=0)
    # Token 1 is (row 0, col 1): only the column half (last 2 pairs) rotates.
    assert torch.allclose(table[1, :2, 0], torch.ones(2)) and not torch.allclose(
        table[1, 2:, 0], torch.ones(2)
    )
    # Token 3 is (row 1, col 0): only the row half rotates.
    assert not torch.allclose(table[3, :2, 0], torch.ones(2)) and torch.allclose(
        table[3, 2:, 0], torch.ones(2)
    )


def test_causality_future_tokens_do_not_change_past_logits():
    model = tiny_generator()
    a = torch.randint(0, 40, (1, 16), generator=torch.Generator().manual_seed(2))
    b = a.clone()
    b[:, 10:] = (b[:, 10:] + 1) % 40
    labels = torch.tensor([1])
    with torch.no_grad():
        assert torch.allclose(model(a, labels)[:, :11], model(b, labels)[:, :11], atol=1e-6)


def test_bad_configs_and_labels():
    with pytest.raises(ValueError, match="n_head"):
        Backbone(BackboneConfig(dim=30, n_head=4))
    with pytest.raises(ValueError, match="divisible by 4"):
        Backbone(BackboneConfig(dim=24, n_head=4))  # head_dim 6
    model = tiny_generator()
    with pytest.raises(ValueError, match="class label 7 is out of range"):
        model(torch.zeros(1, 16, dtype=torch.long), torch.tensor([7]))
    with pytest.raises(ValueError, match="allowed are 0..39"):
        model(torch.full((1, 16), 40), torch.tensor([0]))


def test_label_dropout_rate():
    model = tiny_generator()
    dropped = model.cls_embedding.drop(
        torch.zeros(10_000, dtype=torch.long), torch.Generator().manual_seed(0)
    )
    assert 0.08 < (dropped == 5).float().mean() < 0.12


def test_generator_save_load_round_trip(tmp_path):
    model = tiny_generator(n_kv_head=2)
    model.save_pretrained(tmp_path)
    again = ImageGenerator.from_pretrained(tmp_path)
    assert again.config == model.config
    tokens, labels = torch.randint(0, 40, (1, 16)), torch.tensor([2])
    assert torch.equal(model(tokens, labels), again(tokens, labels))

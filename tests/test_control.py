"""Control-to-image (ControlAR): control maps, the control encoder's fusion / prefill, decoding, pipeline."""

import numpy as np
import pytest
import torch
from PIL import Image

import arstudio
from arstudio.data.control import check_control_map, edge_map, make_control, object_mask
from arstudio.data.shapes import ShapeObject, make_class_item, render, shape_mask
from arstudio.decoding.autoregressive import sample_autoregressive
from arstudio.decoding.continuous import sample_continuous
from arstudio.decoding.guidance import ControlSignal
from arstudio.decoding.logits import SamplingParams
from arstudio.generators.backbone import BackboneConfig
from arstudio.generators.control import ControlConfig
from arstudio.generators.image import GeneratorConfig, ImageGenerator
from arstudio.io import load_safetensors
from arstudio.nn.rope import rope_2d_table
from arstudio.tokenizers.vq import VQConfig
from arstudio.training.common import TRAIN_STATE
from arstudio.training.generator import train_generator
from arstudio.training.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def fusion(device):
    return arstudio.load_pipeline("test-tiny-control", device=device)


@pytest.fixture(scope="module")
def prefill(device):
    return arstudio.load_pipeline("test-tiny-control-prefill", device=device)


def square_mask(size=16, lo=4, hi=10) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[lo:hi, lo:hi] = 255
    return mask


# ---- control maps ----------------------------------------------------------------------------------------
def test_edges_outline_the_object_and_masks_are_exact():
    obj = ShapeObject("square", "blue", "large", "center", 8, 8, 14)  # the dimmest palette colour
    image = render([obj], 32)
    edges = edge_map(image)
    inside = shape_mask("square", 8, 8, 14, 14, 32)
    assert edges.dtype == np.float32 and set(np.unique(edges)) == {0.0, 1.0}
    ys, xs = np.nonzero(edges)
    assert ys.min() >= 7 and ys.max() <= 22 and xs.min() >= 7 and xs.max() <= 22  # hugs the border
    assert edges[12:18, 12:18].sum() == 0 and edges[:5].sum() == 0  # nothing inside or in empty space
    assert np.array_equal(object_mask([obj], 32), inside.astype(np.float32))
    assert np.array_equal(make_control(image, "mask"), inside.astype(np.float32))  # foreground fallback


def test_check_control_map_accepts_one_channel_and_refuses_the_rest():
    mask = square_mask()
    expected = (mask > 0).astype(np.float32)
    for accepted in (
        mask,
        mask[..., None],
        mask[None],
        mask > 0,
        expected,
        Image.fromarray(mask),
        torch.from_numpy(expected),
    ):
        assert np.array_equal(check_control_map(accepted, 16), expected)
    with pytest.raises(ValueError, match="one channel.*got shape \\(16, 16, 3\\)"):
        check_control_map(np.stack([mask] * 3, axis=-1), 16)
    with pytest.raises(ValueError, match="mode 'RGB'"):
        check_control_map(Image.fromarray(np.stack([mask] * 3, axis=-1)), 16)
    with pytest.raises(ValueError, match="control map is 32x32; this model takes 16x16"):
        check_control_map(np.zeros((32, 32), np.uint8), 16)
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\]"):
        check_control_map(expected * 2, 16)
    with pytest.raises(ValueError, match="control type 'depth' is unknown; allowed: \\('edges', 'mask'\\)"):
        make_control(render([], 32), "depth")


# ---- model -----------------------------------------------------------------------------------------------
def test_prefilled_control_tokens_share_their_image_tokens_rotation():
    table = rope_2d_table(4, 8, 17, grid_prefix=True)  # 1 class token + 16 control + 16 image tokens
    assert torch.equal(table[1:17], table[17:]) and torch.equal(table[0, :, 0], torch.ones(4))


@pytest.mark.parametrize("name", ["test-tiny-control", "test-tiny-control-prefill"])
def test_cached_decoding_with_control_matches_teacher_forcing(name, device):
    pipe = arstudio.load_pipeline(name, device=device)
    model = pipe.generator
    maps = torch.from_numpy(np.stack([square_mask(), square_mask(lo=8, hi=14)]) / 255.0).float()[:, None]
    control = ControlSignal(
        model.encode_control(maps.to(device), ["mask", "edges"]), model.control_encoder.null(2)
    )
    labels = torch.tensor([3, 7], device=device)
    params = SamplingParams(guidance_scale=2.5)
    runs = [
        sample_autoregressive(
            model,
            labels,
            [torch.Generator().manual_seed(s) for s in (1, 2)],
            params,
            use_cache=cache,
            control=control,
        ).tokens
        for cache in (True, False)
    ]
    assert torch.equal(*runs)
    assert model.decode_control is None  # the control lives for one call
    plain = sample_autoregressive(model, labels, [torch.Generator().manual_seed(s) for s in (1, 2)], params)
    assert not torch.equal(plain.tokens, runs[0])  # and it changes what is generated


def test_fusion_starts_at_zero_so_a_warm_start_is_the_unchanged_generator(device):
    backbone = BackboneConfig(dim=32, n_layer=2, n_head=4, grid_size=4)
    plain = ImageGenerator(GeneratorConfig(vocab_size=32, backbone=backbone)).to(device)
    controlled = ImageGenerator(
        GeneratorConfig(
            vocab_size=32, backbone=backbone, control=ControlConfig(resolution=16, width=8, layers=(0, 1))
        )
    )
    state = plain.state_dict()
    controlled.to(device).load_state_dict(state, strict=False)
    tokens, labels = torch.randint(0, 32, (2, 16), device=device), torch.tensor([1, 2], device=device)
    control = controlled.encode_control(torch.rand(2, 1, 16, 16, device=device), ["edges", "mask"])
    assert torch.allclose(controlled(tokens, labels, control), plain(tokens, labels))


def _encoder_model(
    context_layers: int, mode: str = "fusion", relative: bool = False, device="cpu"
) -> ImageGenerator:
    backbone = BackboneConfig(
        dim=32,
        n_layer=2,
        n_head=4,
        grid_size=4,
        prefix_len=17 if mode == "prefill" else 1,
        grid_prefix=mode == "prefill",
    )
    control = ControlConfig(
        mode=mode,
        resolution=16,
        width=8,
        layers=(0, 1),
        context_layers=context_layers,
        relative_fusion=relative,
    )
    return (
        ImageGenerator(GeneratorConfig(vocab_size=32, backbone=backbone, control=control)).to(device).eval()
    )


@pytest.mark.parametrize("context_layers", [0, 1])
def test_context_layers_give_control_tokens_a_global_receptive_field(context_layers, device):
    torch.manual_seed(0)
    model = _encoder_model(context_layers, device=device)
    maps = torch.zeros(2, 1, 16, 16, device=device)
    maps[1, 0, 12:, 12:] = 1.0  # only the bottom-right token's patch differs
    with torch.no_grad():
        tokens = model.encode_control(maps, ["edges", "edges"])  # (2, 16, dim)
    assert not torch.allclose(tokens[0, -1], tokens[1, -1])
    # Token 0 (top-left, the one the class position's prediction gets) sees the corner only through the
    # context blocks; the CNN's receptive field is its own 4x4 patch plus two pixels.
    assert torch.allclose(tokens[0, 0], tokens[1, 0]) == (context_layers == 0)


@pytest.mark.parametrize("relative", [False, True])
def test_null_control_adds_nothing_with_context_layers(relative, device):
    torch.manual_seed(0)
    model = _encoder_model(2, relative=relative, device=device)
    for proj in model.control_encoder.fusion:  # trained fusion projections, not the zero init
        torch.nn.init.normal_(proj.weight, std=0.5)
    tokens, labels = torch.randint(0, 32, (2, 16), device=device), torch.tensor([1, 2], device=device)
    null, maps = model.control_encoder.null(2), torch.rand(2, 1, 16, 16, device=device)
    with torch.no_grad():  # hidden states: the head starts at zero, so logits would hide any difference
        none = model.hidden(tokens, labels)
        assert torch.equal(model.hidden(tokens, labels, null), none)
        assert torch.equal(model.encode_control(maps, ["edges", "mask"], strength=0.0), null)
        assert not torch.allclose(
            model.hidden(tokens, labels, model.encode_control(maps, ["edges", "mask"])), none
        )


def test_relative_fusion_scales_each_addition_by_the_stream_it_joins(device):
    torch.manual_seed(0)
    model = _encoder_model(1, relative=True, device=device)
    encoder = model.control_encoder
    torch.nn.init.normal_(encoder.fusion[0].weight, std=0.5)
    control = encoder(torch.rand(2, 1, 16, 16, device=device), torch.tensor([0, 1], device=device))
    assert 0.5 < control.pow(2).mean().sqrt() < 2  # unit-scale tokens (absolute fusion: the init std, 0.02)
    scales = torch.tensor([0.01, 1.0, 30.0], device=device)[None, :, None]  # three very different scales
    x = torch.randn(2, 3, 32, device=device) * scales
    add = encoder.fusion_additions(control, torch.tensor([0, 1, 2], device=device))[0](x)
    plain = encoder.fusion[0](control[:, :3])
    assert torch.allclose(add, plain * x.pow(2).mean(-1, keepdim=True).sqrt(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="relative_fusion applies to fusion only"):
        ControlConfig(mode="prefill", relative_fusion=True)


def test_configs_without_context_layers_load_as_cnn_only():
    old = {
        "mode": "prefill",
        "types": ["edges", "mask"],
        "resolution": 16,
        "width": 8,
        "layers": [0, 2, 4],
        "dropout_prob": 0.1,
    }  # a config.json written before context_layers existed
    config = GeneratorConfig(
        vocab_size=32,
        backbone=BackboneConfig(dim=32, n_layer=2, n_head=4, grid_size=4, prefix_len=17, grid_prefix=True),
        control=old,
    )
    assert (
        config.control == ControlConfig(mode="prefill", resolution=16, width=8)
        and not config.control.context_layers
    )
    keys = {k for k in ImageGenerator(config).state_dict() if k.startswith("control_encoder.")}
    assert keys == {k for k in _encoder_model(0, "prefill").state_dict() if k.startswith("control_encoder.")}
    assert not any(".context." in k for k in keys)  # old weights hold exactly these keys
    assert any(".context." in k for k in _encoder_model(1, "prefill").state_dict())
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=f"context_layers={bad!r} must be an integer >= 0"):
            ControlConfig(context_layers=bad)


def test_separate_control_guidance_reduces_to_joint_and_changes_with_its_scale(fusion):
    kwargs = dict(class_labels=[4], control_image=square_mask(), control_type="mask", output_type="np")
    joint = fusion(generator=[torch.Generator().manual_seed(3)], guidance_scale=2.0, **kwargs)
    same = fusion(
        generator=[torch.Generator().manual_seed(3)], guidance_scale=2.0, control_guidance_scale=2.0, **kwargs
    )
    assert torch.equal(joint.tokens, same.tokens)
    strong = fusion(
        generator=[torch.Generator().manual_seed(3)], guidance_scale=2.0, control_guidance_scale=6.0, **kwargs
    )
    assert not torch.equal(joint.tokens, strong.tokens)
    assert joint.metadata[0]["control_type"] == "mask" and same.metadata[0]["control_guidance_scale"] == 2.0


@pytest.mark.parametrize("name", ["fusion", "prefill"])
def test_strength_zero_is_no_control(name, request):
    pipe = request.getfixturevalue(name)
    kwargs = dict(class_labels=[1, 9], output_type="np")
    none = pipe(generator=torch.Generator().manual_seed(5), **kwargs)
    zero = pipe(
        generator=torch.Generator().manual_seed(5),
        control_image=square_mask(),
        control_strength=0.0,
        **kwargs,
    )
    full = pipe(generator=torch.Generator().manual_seed(5), control_image=square_mask(), **kwargs)
    assert torch.equal(none.tokens, zero.tokens) and not torch.equal(none.tokens, full.tokens)


def test_continuous_generator_takes_control(device):
    pipe = arstudio.load_pipeline("test-tiny-continuous-control", device=device)
    model = pipe.generator
    maps = torch.from_numpy(square_mask() / 255.0).float()[None, None].to(device)
    control = ControlSignal(model.encode_control(maps, ["mask"]), model.control_encoder.null(1), 3.0)
    label = torch.tensor([2], device=device)
    out = [
        sample_continuous(
            model,
            label,
            [torch.Generator().manual_seed(0)],
            SamplingParams(2.0),
            num_inference_steps=4,
            use_cache=cache,
            control=control,
        ).tokens
        for cache in (True, False)
    ]
    assert torch.allclose(out[0], out[1], atol=1e-5)
    latents = torch.randn(1, 16, 4, device=device)
    assert not torch.allclose(model(latents, label, control.tokens), model(latents, label))
    image = pipe(class_labels=[2], control_image=square_mask(), control_guidance_scale=3.0, output_type="np")
    assert image.images[0].shape == (16, 16, 3) and image.metadata[0]["control_strength"] == 1.0


# ---- bad input -------------------------------------------------------------------------------------------
def test_pipeline_refuses_bad_control_input(fusion, device):
    good = square_mask()
    cases = [
        (dict(control_image=np.zeros((32, 32), np.uint8)), "control map is 32x32; this model takes 16x16"),
        (dict(control_image=np.zeros((16, 16, 3), np.uint8)), "one channel"),
        (dict(control_image=good, control_type="depth"), "control_type='depth' is unknown"),
        (
            dict(control_image=good, control_strength=2.5),
            "control_strength=2.5 is not allowed.*\\[0.0, 2.0\\]",
        ),
        (dict(control_image=good, control_strength=-0.1), "control_strength=-0.1 is not allowed"),
        (dict(control_image=good, control_guidance_scale=-1.0), "control_guidance_scale=-1.0"),
        (dict(control_type="mask"), "need a control_image"),
        (dict(control_image=[good, good, good]), "3 control images for 1 prompts"),
        (dict(control_image=good, decoding="speculative"), "decoding='ar' only"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            fusion(class_labels=[0], **kwargs)
    plain = arstudio.load_pipeline("test-tiny-c2i", device=device)
    with pytest.raises(
        ValueError, match="control_image needs a control preset; 'test-tiny-c2i' takes no control"
    ):
        plain(class_labels=[0], control_image=good)


# ---- training --------------------------------------------------------------------------------------------
def test_training_with_control_saves_resumes_and_reloads(tmp_path):
    vq = VQConfig(
        resolution=32,
        ch=8,
        ch_mult=(1, 2, 2),
        z_channels=8,
        codebook_size=16,
        codebook_embed_dim=4,
        norm_groups=4,
        decoder_res_blocks=1,
    )
    train_tokenizer(tmp_path / "vq", vq, steps=1, batch_size=2, photo_fraction=0.0)
    config = GeneratorConfig(
        vocab_size=16,
        backbone=BackboneConfig(dim=32, n_layer=2, n_head=4, grid_size=8),
        control=ControlConfig(resolution=32, width=8, layers=(1,), context_layers=1),
    )
    gen_dir = tmp_path / "gen"
    model = train_generator(
        gen_dir, tmp_path / "vq", config, steps=3, batch_size=4, num_images=8, save_every=2
    )
    assert torch.load(gen_dir / TRAIN_STATE, weights_only=True)["step"] == 3
    controls = load_safetensors(gen_dir / "train_controls.safetensors")
    image, _, obj = make_class_item(0, 5, 32)
    assert np.array_equal(controls["mask"][5].numpy(), object_mask([obj], 32))  # item i's own control
    assert np.array_equal(controls["edges"][5].numpy(), edge_map(image))
    assert model.control_encoder.fusion[0].weight.abs().sum() > 0  # the zero-init fusion learned something
    again = ImageGenerator.from_pretrained(gen_dir)
    assert again.config == config and again.config.control.layers == (1,)
    assert again.config.control.context_layers == 1  # round trip through config.json
    maps = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(
            again.encode_control(maps, ["edges", "mask"]), model.encode_control(maps, ["edges", "mask"])
        )


def test_fidelity_metrics_reward_following_the_control():
    from arstudio.evaluation.control import edge_f1, mask_iou, position_error

    obj = ShapeObject("circle", "red", "large", "bottom right", 16, 16, 14)
    moved = ShapeObject("circle", "red", "large", "top left", 0, 0, 14)
    image, elsewhere = render([obj], 32), render([moved], 32)
    edges, mask = edge_map(image), object_mask([obj], 32)
    assert edge_f1(edges, image) == 1.0 and mask_iou(mask, image) == 1.0
    assert edge_f1(edges, elsewhere) == 0.0 and mask_iou(mask, elsewhere) == 0.0
    assert position_error(image, (23.0, 23.0)) == 0.0
    assert abs(position_error(elsewhere, (23.0, 23.0)) - np.hypot(16, 16)) < 1e-6
    assert position_error(render([], 32), (23.0, 23.0)) is None


@pytest.mark.parametrize("name", ["test-tiny-control", "test-tiny-control-prefill"])
def test_control_presets_offer_only_plain_decoding(name, device):
    """Drafters and DD models read the condition prefix without the control grid: control decodes with 'ar'."""
    pipe = arstudio.load_pipeline(name, device=device)
    assert pipe.decoding_strategies == ("ar",)
    with pytest.raises(ValueError, match="not available"):
        pipe(class_labels=[1], decoding="speculative", generator=torch.Generator().manual_seed(0))

"""KL-VAE checkpoint conversion: diffusers layout and MAR/LDM layout, built here from the official rules."""

import pytest
import torch
from safetensors.torch import save_file

from arstudio.convert.kl import MAR_KL16, convert_kl_state_dict, load_kl_checkpoint
from arstudio.tokenizers.kl import KLConfig, KLTokenizer

TINY = KLConfig(
    resolution=16,
    block_out_channels=(8, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    encoder_attention=True,
)


def ldm_shapes(ch: int, ch_mult, num_res_blocks: int, z: int, encoder_attention: bool) -> dict:
    """Key -> shape of an LDM/MAR ``AutoencoderKL`` state dict, written from MAR's models/vae.py layout."""
    shapes = {}

    def resnet(name, cin, cout):
        shapes.update(
            {
                f"{name}.norm1.weight": (cin,),
                f"{name}.norm1.bias": (cin,),
                f"{name}.conv1.weight": (cout, cin, 3, 3),
                f"{name}.conv1.bias": (cout,),
                f"{name}.norm2.weight": (cout,),
                f"{name}.norm2.bias": (cout,),
                f"{name}.conv2.weight": (cout, cout, 3, 3),
                f"{name}.conv2.bias": (cout,),
            }
        )
        if cin != cout:
            shapes.update(
                {f"{name}.nin_shortcut.weight": (cout, cin, 1, 1), f"{name}.nin_shortcut.bias": (cout,)}
            )

    def attn(name, c):
        shapes.update({f"{name}.norm.weight": (c,), f"{name}.norm.bias": (c,)})
        for part in ("q", "k", "v", "proj_out"):
            shapes.update({f"{name}.{part}.weight": (c, c, 1, 1), f"{name}.{part}.bias": (c,)})

    def mid(prefix, c):
        resnet(f"{prefix}.mid.block_1", c, c)
        attn(f"{prefix}.mid.attn_1", c)
        resnet(f"{prefix}.mid.block_2", c, c)

    last = len(ch_mult) - 1
    shapes.update({"encoder.conv_in.weight": (ch, 3, 3, 3), "encoder.conv_in.bias": (ch,)})
    block_in = ch
    for i, m in enumerate(ch_mult):
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", block_in, ch * m)
            block_in = ch * m
            if encoder_attention and i == last:
                attn(f"encoder.down.{i}.attn.{j}", block_in)
        if i != last:
            shapes.update(
                {
                    f"encoder.down.{i}.downsample.conv.weight": (block_in, block_in, 3, 3),
                    f"encoder.down.{i}.downsample.conv.bias": (block_in,),
                }
            )
    mid("encoder", block_in)
    shapes.update(
        {
            "encoder.norm_out.weight": (block_in,),
            "encoder.norm_out.bias": (block_in,),
            "encoder.conv_out.weight": (2 * z, block_in, 3, 3),
            "encoder.conv_out.bias": (2 * z,),
            "quant_conv.weight": (2 * z, 2 * z, 1, 1),
            "quant_conv.bias": (2 * z,),
            "post_quant_conv.weight": (z, z, 1, 1),
            "post_quant_conv.bias": (z,),
            "decoder.conv_in.weight": (block_in, z, 3, 3),
            "decoder.conv_in.bias": (block_in,),
        }
    )
    mid("decoder", block_in)
    for i in reversed(range(len(ch_mult))):
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, ch * ch_mult[i])
            block_in = ch * ch_mult[i]
        if i != 0:
            shapes.update(
                {
                    f"decoder.up.{i}.upsample.conv.weight": (block_in, block_in, 3, 3),
                    f"decoder.up.{i}.upsample.conv.bias": (block_in,),
                }
            )
    shapes.update(
        {
            "decoder.norm_out.weight": (block_in,),
            "decoder.norm_out.bias": (block_in,),
            "decoder.conv_out.weight": (3, block_in, 3, 3),
            "decoder.conv_out.bias": (3,),
        }
    )
    return shapes


def test_mar_kl16_layout_maps_onto_the_model_key_for_key():
    official = ldm_shapes(128, (1, 1, 2, 2, 4), 2, 16, encoder_attention=True)
    official["loss.logvar"] = ()  # LDM checkpoints carry their loss's weights; they must be dropped
    state = convert_kl_state_dict({k: torch.empty(s, device="meta") for k, s in official.items()}, MAR_KL16)
    with torch.device("meta"):
        model = KLTokenizer(MAR_KL16)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert sum(torch.Size(s).numel() for s in expected.values()) > 60e6  # the 66M-parameter KL-16


def test_ldm_checkpoint_round_trips_values(tmp_path):
    torch.manual_seed(0)
    official = {k: torch.randn(s) for k, s in ldm_shapes(8, (1, 2), 1, 4, encoder_attention=True).items()}
    torch.save({"model": official}, tmp_path / "kl.ckpt")
    model = load_kl_checkpoint(tmp_path / "kl.ckpt", TINY)
    sd = model.state_dict()
    assert torch.equal(
        sd["vae.decoder.up_blocks.0.resnets.1.conv2.weight"], official["decoder.up.1.block.1.conv2.weight"]
    )
    assert torch.equal(
        sd["vae.encoder.down_blocks.1.attentions.0.to_q.weight"],
        official["encoder.down.1.attn.0.q.weight"][:, :, 0, 0],
    )
    assert torch.equal(
        sd["vae.encoder.down_blocks.1.resnets.0.conv_shortcut.weight"],
        official["encoder.down.1.block.0.nin_shortcut.weight"],
    )
    out = model.decode(model.encode(torch.zeros(1, 3, 16, 16)))
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()


def _diffusers_folder(tmp_path, state):
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(tmp_path / "diffusion_pytorch_model.safetensors")
    )
    return tmp_path


def test_diffusers_checkpoint_round_trips(tmp_path):
    from arstudio.tokenizers.kl import build_autoencoder

    torch.manual_seed(1)
    official = build_autoencoder(TINY).state_dict()  # diffusers' own names and shapes
    model = load_kl_checkpoint(_diffusers_folder(tmp_path, official), TINY)
    for key, value in official.items():
        assert torch.equal(model.state_dict()[f"vae.{key}"], value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda sd: sd.pop("decoder.conv_out.bias"), "missing keys (1): vae.decoder.conv_out.bias"),
        (
            lambda sd: sd.__setitem__("decoder.extra.weight", torch.zeros(1)),
            "unexpected keys (1): vae.decoder.extra",
        ),
        (lambda sd: sd.__setitem__("quant_conv.bias", torch.zeros(3)), "vae.quant_conv.bias: (3,) in"),
    ],
)
def test_bad_checkpoints_name_the_keys(tmp_path, edit, message):
    from arstudio.tokenizers.kl import build_autoencoder

    state = build_autoencoder(TINY).state_dict()
    edit(state)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_kl_checkpoint(_diffusers_folder(tmp_path, state), TINY)

"""LlamaGen checkpoint converters, on hand-written state dicts with the official key names and shapes.

The official layouts below are written from LlamaGen's code (autoregressive/models/gpt.py,
tokenizer/tokenizer_image/vq_model.py, the samplers' checkpoint handling), not built from our modules.
Numerical parity against LlamaGen's own code is checked outside the test suite (it needs that code).
"""

import argparse
import dataclasses
from pathlib import Path

import pytest
import torch

from arstudio.convert import (
    convert_llamagen_gpt,
    convert_llamagen_to_pretrained,
    convert_llamagen_vq,
    llamagen_gpt_config,
    llamagen_vq_config,
    load_llamagen_gpt,
    load_llamagen_vq,
    load_official_checkpoint,
)
from arstudio.generators.backbone import BackboneConfig
from arstudio.generators.image import GeneratorConfig, ImageGenerator
from arstudio.tokenizers.vq import VQConfig, VQTokenizer

DIM, LAYERS, HEADS, VOCAB, CLASSES, GRID = 32, 2, 4, 32, 5, 4
FFN = 256  # LlamaGen: find_multiple(int(2 * 4 * 32 / 3) = 85, 256)
GPT_CFG = GeneratorConfig(
    vocab_size=VOCAB,
    num_classes=CLASSES,
    backbone=BackboneConfig(
        dim=DIM,
        n_layer=LAYERS,
        n_head=HEADS,
        multiple_of=256,
        grid_size=GRID,
        prefix_len=1,
        zero_prefix_rope=True,
    ),
)
VQ_CFG = VQConfig(
    resolution=8,
    ch=8,
    ch_mult=(1, 2),
    encoder_res_blocks=2,
    decoder_res_blocks=3,
    z_channels=8,
    codebook_size=32,
    codebook_embed_dim=4,
    norm_groups=4,
)


def official_gpt_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A LlamaGen c2i ``Transformer.state_dict()`` for dim 32, 2 layers, vocab 32, 5 classes (+1 null)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(shape, generator=g) * 0.2

    state = {
        "cls_embedding.embedding_table.weight": rand(CLASSES + 1, DIM),
        "tok_embeddings.weight": rand(VOCAB, DIM),
    }
    for i in range(LAYERS):
        state |= {
            f"layers.{i}.attention.wqkv.weight": rand(3 * DIM, DIM),
            f"layers.{i}.attention.wo.weight": rand(DIM, DIM),
            f"layers.{i}.feed_forward.w1.weight": rand(FFN, DIM),
            f"layers.{i}.feed_forward.w3.weight": rand(FFN, DIM),
            f"layers.{i}.feed_forward.w2.weight": rand(DIM, FFN),
            f"layers.{i}.attention_norm.weight": 1 + rand(DIM),
            f"layers.{i}.ffn_norm.weight": 1 + rand(DIM),
        }
    state |= {"norm.weight": 1 + rand(DIM), "output.weight": rand(VOCAB, DIM)}
    return state


def official_vq_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A LlamaGen ``VQModel.state_dict()`` for ch 8, ch_mult (1, 2), z 8, codebook 32 x 4."""
    g = torch.Generator().manual_seed(seed)
    state = {}

    def conv(name, c_in, c_out, k):
        state[f"{name}.weight"] = torch.randn((c_out, c_in, k, k), generator=g) * 0.1
        state[f"{name}.bias"] = torch.randn((c_out,), generator=g) * 0.1

    def norm(name, c):
        state[f"{name}.weight"] = 1 + torch.randn((c,), generator=g) * 0.1
        state[f"{name}.bias"] = torch.randn((c,), generator=g) * 0.1

    def res(name, c_in, c_out):
        norm(f"{name}.norm1", c_in)
        conv(f"{name}.conv1", c_in, c_out, 3)
        norm(f"{name}.norm2", c_out)
        conv(f"{name}.conv2", c_out, c_out, 3)
        if c_in != c_out:
            conv(f"{name}.nin_shortcut", c_in, c_out, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    ch, mult, z, d = 8, (1, 2), 8, 4
    conv("encoder.conv_in", 3, ch, 3)
    c = ch
    for level, m in enumerate(mult):  # 2 ResBlocks per level, attention at the last (lowest) level
        for j in range(2):
            res(f"encoder.conv_blocks.{level}.res.{j}", c, ch * m)
            c = ch * m
            if level == len(mult) - 1:
                attn(f"encoder.conv_blocks.{level}.attn.{j}", c)
        if level != len(mult) - 1:
            conv(f"encoder.conv_blocks.{level}.downsample.conv", c, c, 3)
    res("encoder.mid.0", c, c)
    attn("encoder.mid.1", c)
    res("encoder.mid.2", c, c)
    norm("encoder.norm_out", c)
    conv("encoder.conv_out", c, z, 3)

    conv("decoder.conv_in", z, c, 3)
    res("decoder.mid.0", c, c)
    attn("decoder.mid.1", c)
    res("decoder.mid.2", c, c)
    for level, m in enumerate(reversed(mult)):  # 3 ResBlocks per level, attention at level 0
        for j in range(3):
            res(f"decoder.conv_blocks.{level}.res.{j}", c, ch * m)
            c = ch * m
            if level == 0:
                attn(f"decoder.conv_blocks.{level}.attn.{j}", c)
        if level != len(mult) - 1:
            conv(f"decoder.conv_blocks.{level}.upsample.conv", c, c, 3)
    norm("decoder.norm_out", c)
    conv("decoder.conv_out", c, 3, 3)

    conv("quant_conv", z, d, 1)
    conv("post_quant_conv", d, z, 1)
    state["quantize.embedding.weight"] = torch.nn.functional.normalize(
        torch.randn((32, d), generator=g), dim=-1
    )
    state["quantize.codebook_used"] = torch.zeros(65536)  # training-only usage window
    return state


def gpt_key(key: str) -> str:
    if key.startswith(("layers.", "norm.")):
        return "backbone." + key
    return "head." + key if key.startswith("output.") else key


def save(tmp_path: Path, obj, name="ckpt.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def train_c2i_checkpoint(weights):
    """The dict LlamaGen's train_c2i.py saves (optimizer state shortened)."""
    return {
        "model": weights,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
        "steps": 5000,
        "args": argparse.Namespace(gpt_model="GPT-B", ema=False),
    }


NESTINGS = {
    "model+args (train_c2i)": train_c2i_checkpoint,
    "module (deepspeed)": lambda w: {"module": w},
    "state_dict": lambda w: {"state_dict": w},
    "flat (fsdp)": lambda w: w,
    "state_dict/model": lambda w: {"state_dict": {"model": w}},
    "ddp prefix": lambda w: {"model": {"module." + k: v for k, v in w.items()}},
}


@pytest.mark.parametrize("nesting", list(NESTINGS))
def test_gpt_checkpoint_round_trip(tmp_path, nesting):
    official = official_gpt_state()
    path = save(tmp_path, NESTINGS[nesting](official))
    model = load_llamagen_gpt(path, GPT_CFG)
    ours = model.state_dict()
    assert not model.training
    assert len(ours) == len(official)
    for key, tensor in official.items():
        assert torch.equal(ours[gpt_key(key)], tensor), key
    tokens = torch.randint(0, VOCAB, (2, GRID * GRID))
    labels = torch.tensor([1, CLASSES])  # a class and the null class
    with torch.no_grad():
        full = model(tokens, labels)
        model.setup_cache(2)
        first = model.prefill(labels)
    assert full.shape == (2, GRID * GRID, VOCAB) and torch.isfinite(full).all()
    assert (first - full[:, 0]).abs().max() < 1e-4


def test_gpt_recomputed_buffers_are_dropped_and_dtype_follows_the_model():
    official = {k: v.bfloat16() for k, v in official_gpt_state().items()}
    extra = {
        "freqs_cis": torch.zeros(1 + GRID * GRID, DIM // HEADS // 2, 2),
        "layers.0.attention.kv_cache.k_cache": torch.zeros(2, HEADS, 24, DIM // HEADS),
        "layers.0.attention.kv_cache.v_cache": torch.zeros(2, HEADS, 24, DIM // HEADS),
    }
    converted = convert_llamagen_gpt(official | extra)
    assert set(converted) == {gpt_key(k) for k in official}
    model = load_llamagen_gpt(official | extra, GPT_CFG)
    weight = model.tok_embeddings.weight
    assert weight.dtype == torch.float32 and torch.equal(weight, official["tok_embeddings.weight"].float())


def test_ema_weights_on_request(tmp_path):
    model_w, ema_w = official_gpt_state(0), official_gpt_state(1)
    path = save(tmp_path, train_c2i_checkpoint(model_w) | {"ema": ema_w})
    assert torch.equal(load_official_checkpoint(path)["norm.weight"], model_w["norm.weight"])
    assert torch.equal(load_official_checkpoint(path, use_ema=True)["norm.weight"], ema_w["norm.weight"])
    for no_ema in ({"model": model_w}, model_w):
        with pytest.raises(ValueError, match="no 'ema' weights"):
            load_official_checkpoint(save(tmp_path, no_ema, "no_ema.pt"), use_ema=True)


def test_vq_checkpoint_round_trip(tmp_path):
    official = official_vq_state()
    path = save(tmp_path, {"model": official, "steps": 10, "args": argparse.Namespace(vq_model="VQ-16")})
    model = load_llamagen_vq(path, VQ_CFG)
    ours = model.state_dict()
    assert "quantize.codebook_used" not in convert_llamagen_vq(official)
    assert set(ours) == set(official) - {"quantize.codebook_used"}
    for key, tensor in ours.items():
        assert torch.equal(tensor, official[key]), key
    ids = model.encode(torch.rand(2, 3, 8, 8) * 2 - 1)
    assert ids.shape == (2, 4, 4)
    assert model.decode(ids).shape == (2, 3, 8, 8)


def test_vq_loss_modules_are_dropped():
    extra = {"discriminator.main.0.weight": torch.zeros(1), "perceptual_loss.net.0.weight": torch.zeros(1)}
    converted = convert_llamagen_vq(official_vq_state() | extra)
    assert not any(k.startswith(("discriminator.", "perceptual_loss.")) for k in converted)


def test_missing_key_is_named():
    state = official_gpt_state()
    del state["layers.1.ffn_norm.weight"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): backbone\.layers\.1\.ffn_norm\.weight"):
        load_llamagen_gpt(state, GPT_CFG)
    vq_state = official_vq_state()
    del vq_state["quantize.embedding.weight"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): quantize\.embedding\.weight"):
        load_llamagen_vq(vq_state, VQ_CFG)


def test_unexpected_key_is_named():
    state = official_gpt_state() | {"layers.0.attention.wq.bias": torch.zeros(DIM)}
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): backbone\.layers\.0\.attention\.wq\.bias"):
        load_llamagen_gpt(state, GPT_CFG)


def test_wrong_shape_is_named():
    wrong_vocab = dataclasses.replace(GPT_CFG, vocab_size=VOCAB + 1)
    message = r"wrong shapes .*tok_embeddings\.weight: \(32, 32\) in state dict, model wants \(33, 32\)"
    with pytest.raises(ValueError, match=message):
        load_llamagen_gpt(official_gpt_state(), wrong_vocab)
    with pytest.raises(ValueError, match=r"wrong shapes .*quantize\.embedding\.weight"):
        load_llamagen_vq(official_vq_state(), dataclasses.replace(VQ_CFG, codebook_size=64))


def test_text_to_image_checkpoint_is_refused():
    state = official_gpt_state()
    del state["cls_embedding.embedding_table.weight"]
    state["cls_embedding.cap_proj.fc1.weight"] = torch.zeros(DIM, 16)
    state["cls_embedding.uncond_embedding"] = torch.zeros(120, 16)
    with pytest.raises(ValueError, match="text-to-image"):
        convert_llamagen_gpt(state)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_llamagen_gpt(tmp_path / "c2i_B_256.pt", GPT_CFG)


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b""])
def test_not_a_torch_checkpoint(tmp_path, content):
    path = tmp_path / "vq_ds16_c2i.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
        load_llamagen_vq(path, VQ_CFG)


def test_checkpoint_without_weights(tmp_path):
    path = save(tmp_path, {"steps": 3, "args": argparse.Namespace(lr=1e-4)})
    with pytest.raises(ValueError, match=r"no state dict found .*\['args', 'steps'\]"):
        load_official_checkpoint(path)


def _side_effect(marker: str) -> str:
    Path(marker).write_text("unpickling ran code")
    return marker


class Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return _side_effect, (self.marker,)


def test_pickled_objects_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "ran"
    path = save(tmp_path, {"model": official_gpt_state(), "hook": Payload(marker)})
    with pytest.raises(
        ValueError,
        match=r"holds Python objects \(.*_side_effect\) that torch\.load\(weights_only=True\) refuses",
    ):
        load_llamagen_gpt(path, GPT_CFG)
    assert not marker.exists()


def test_safetensors_files_load_too(tmp_path):
    from safetensors.torch import save_file

    official = official_gpt_state()
    save_file(official, tmp_path / "model.safetensors")
    model = load_llamagen_gpt(tmp_path / "model.safetensors", GPT_CFG)
    assert torch.equal(model.head.output.weight, official["output.weight"])


def test_official_configs_match_llamagen_sizes():
    b = llamagen_gpt_config("GPT-B")
    assert (b.backbone.dim, b.backbone.n_layer, b.backbone.n_head, b.backbone.grid_size) == (768, 12, 12, 16)
    assert (b.vocab_size, b.num_classes, b.backbone.prefix_len, b.backbone.ffn_hidden) == (
        16384,
        1000,
        1,
        2048,
    )
    assert b.backbone.zero_prefix_rope and b.class_dropout_prob == 0.1
    l384 = llamagen_gpt_config("GPT-L", image_size=384)
    assert (l384.backbone.dim, l384.backbone.n_layer, l384.backbone.n_head) == (1024, 24, 16)
    assert (l384.backbone.grid_size, l384.backbone.ffn_hidden) == (24, 2816)
    assert llamagen_vq_config("VQ-8").grid_size == 32 and llamagen_vq_config("VQ-16", 384).grid_size == 24
    with torch.device("meta"):  # parameter counts from LlamaGen's README: 111M, 343M, 72M, 70M
        counts = [
            sum(p.numel() for p in model.parameters()) / 1e6
            for model in (
                ImageGenerator(b),
                ImageGenerator(llamagen_gpt_config("GPT-L")),
                VQTokenizer(llamagen_vq_config("VQ-16")),
                VQTokenizer(llamagen_vq_config("VQ-8")),
            )
        ]
    assert [round(c) for c in counts] == [111, 343, 72, 70]
    with pytest.raises(ValueError, match="unknown LlamaGen GPT"):
        llamagen_gpt_config("GPT-Q")
    with pytest.raises(ValueError, match="must divide"):
        llamagen_gpt_config("GPT-B", image_size=250)


def test_convert_to_pretrained_folders(tmp_path):
    vq_path = save(tmp_path, {"model": official_vq_state()}, "vq.pt")
    gpt_path = save(tmp_path, train_c2i_checkpoint(official_gpt_state()), "gpt.pt")
    out = convert_llamagen_to_pretrained(
        vq_path, gpt_path, tmp_path / "out", gpt_model=GPT_CFG, vq_model=VQ_CFG
    )
    generator = ImageGenerator.from_pretrained(out / "generator")
    tokenizer = VQTokenizer.from_pretrained(out / "tokenizer")
    assert generator.config == GPT_CFG and tokenizer.config == VQ_CFG
    assert torch.equal(generator.backbone.norm.weight, official_gpt_state()["norm.weight"])
    assert torch.equal(tokenizer.quantize.embedding.weight, official_vq_state()["quantize.embedding.weight"])
    with pytest.raises(ValueError, match="does not fit the tokenizer"):
        convert_llamagen_to_pretrained(
            vq_path, gpt_path, tmp_path / "bad", gpt_model="GPT-B", vq_model=VQ_CFG
        )


# ---- the real sizes, on the meta device (no memory): key names and shapes as LlamaGen's code makes them ----

# LlamaGen's GPT_models (autoregressive/models/gpt.py), written out here: (n_layer, n_head, dim), README params
REAL_SIZES = {"GPT-XL": (36, 20, 1280, 775), "GPT-XXL": (48, 24, 1536, 1400), "GPT-3B": (24, 32, 3200, 3100)}


def official_gpt_shapes(n_layer: int, dim: int, vocab: int = 16384, classes: int = 1000) -> dict:
    """Key -> shape of a LlamaGen c2i ``Transformer.state_dict()`` (FeedForward: find_multiple(int(8 dim / 3), 256))."""
    ffn = -(-int(2 * 4 * dim / 3) // 256) * 256
    shapes = {
        "cls_embedding.embedding_table.weight": (classes + 1, dim),
        "tok_embeddings.weight": (vocab, dim),
    }
    for i in range(n_layer):
        shapes |= {
            f"layers.{i}.attention.wqkv.weight": (3 * dim, dim),
            f"layers.{i}.attention.wo.weight": (dim, dim),
            f"layers.{i}.feed_forward.w1.weight": (ffn, dim),
            f"layers.{i}.feed_forward.w3.weight": (ffn, dim),
            f"layers.{i}.feed_forward.w2.weight": (dim, ffn),
            f"layers.{i}.attention_norm.weight": (dim,),
            f"layers.{i}.ffn_norm.weight": (dim,),
        }
    return shapes | {"norm.weight": (dim,), "output.weight": (vocab, dim)}


def meta_state(shapes: dict) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


@pytest.mark.parametrize("name", list(REAL_SIZES))
def test_real_size_checkpoints_map_onto_the_preset_configs(name):
    from arstudio.convert.checkpoint import parameters_on_meta
    from arstudio.convert.llamagen import describe_llamagen_state, llamagen_gpt_keys
    from arstudio.io import check_state_dict

    n_layer, n_head, dim, params_m = REAL_SIZES[name]
    state = meta_state(official_gpt_shapes(n_layer, dim))
    assert describe_llamagen_state({k: v.shape for k, v in state.items()}).startswith(
        f"a LlamaGen {name} class"
    )
    config = llamagen_gpt_config(name, image_size=384)
    assert (config.backbone.n_head, config.backbone.head_dim * n_head, config.backbone.grid_size) == (
        n_head,
        dim,
        24,
    )
    with parameters_on_meta():
        model = ImageGenerator(config)
    keys = llamagen_gpt_keys(state)
    check_state_dict(
        model, {ours: state[theirs] for ours, theirs in keys.items()}, source=name
    )  # raises if off
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, rel=0.04)
    assert model.backbone.rope.device.type == "cpu"  # computed, not loaded: built for real even here
    assert model.backbone.rope.shape == (1 + 24 * 24, dim // n_head // 2, 2)


def test_another_size_or_model_is_refused_in_one_line(tmp_path):
    xl = meta_state(official_gpt_shapes(36, 1280))
    with pytest.raises(ValueError) as err:
        load_llamagen_gpt(xl, llamagen_gpt_config("GPT-XXL", image_size=384))
    message = str(err.value)
    assert "\n" not in message
    assert (
        "holds a LlamaGen GPT-XL class-to-image model (36 layers, dim 1280, vocab 16384, 1000 classes)"
        in message
    )
    assert message.endswith(
        "expected a LlamaGen GPT-XXL class-to-image model (48 layers, dim 1536, vocab 16384)"
    )
    path = save(tmp_path, {"model": official_vq_state()}, "c2i_XL_384.pt")  # the VQ file under the GPT's name
    with pytest.raises(
        ValueError,
        match=r"c2i_XL_384\.pt' holds a VQ tokenizer \(codebook 32 x 4\); expected a "
        r"LlamaGen GPT-XL class-to-image model",
    ):
        load_llamagen_gpt(path, "GPT-XL")
    gpt = save(tmp_path, {"model": official_gpt_state()}, "vq_ds16_c2i.pt")  # and the other way round
    with pytest.raises(
        ValueError,
        match=r"vq_ds16_c2i\.pt' holds a LlamaGen GPT of no LlamaGen size class-to-image "
        r"model \(2 layers, dim 32, vocab 32, 5 classes\); expected a LlamaGen VQ tokenizer",
    ):
        load_llamagen_vq(gpt, VQ_CFG)
    dd = official_gpt_state() | {"final_layer_conti.linear.weight": torch.zeros(8, DIM)}
    with pytest.raises(ValueError, match=r"holds a Distilled Decoding \(DD\) model"):
        load_llamagen_gpt(dd, GPT_CFG)
    with pytest.raises(ValueError, match=r"holds no LlamaGen model \(first keys: a, b\)"):
        load_llamagen_gpt({"a": torch.zeros(1), "b": torch.zeros(1)}, GPT_CFG)


def test_t2i_checkpoint_for_a_c2i_preset_names_the_file(tmp_path):
    state = official_gpt_state()
    del state["cls_embedding.embedding_table.weight"]
    state |= {
        "cls_embedding.cap_proj.fc1.weight": torch.zeros(DIM, 16),
        "cls_embedding.cap_proj.fc2.weight": torch.zeros(DIM, DIM),
        "cls_embedding.uncond_embedding": torch.zeros(120, 16),
    }
    path = save(tmp_path, {"model": state}, "t2i_XL_stage1_256.pt")
    with pytest.raises(
        ValueError,
        match=r"t2i_XL_stage1_256\.pt' holds a LlamaGen .*text-to-image model .*120 x 16 "
        r"text\); expected a LlamaGen GPT class-to-image model",
    ):
        load_llamagen_gpt(path, GPT_CFG)


def test_truncated_or_corrupt_files_are_named(tmp_path):
    path = save(tmp_path, {"model": official_gpt_state()}, "c2i_B_256.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ValueError,
        match=r"c2i_B_256\.pt' is truncated or corrupt \(.* bytes; .*\); expected a "
        r"complete PyTorch checkpoint: download it again$",
    ):
        load_llamagen_gpt(path, GPT_CFG)
    # Bytes flipped inside a tensor's data: the archive reads fine, the weights do not.
    state = official_gpt_state()
    state["norm.weight"] = torch.full((DIM,), 1.0)
    path.write_bytes(b"")
    torch.save({"model": state}, path)
    data = bytearray(path.read_bytes())
    at = data.find(torch.full((DIM,), 1.0).numpy().tobytes())
    data[at : at + 4] = b"\xff\xff\xff\xff"  # a NaN
    path.write_bytes(bytes(data))
    with pytest.raises(
        ValueError, match=r"c2i_B_256\.pt' is corrupt: tensor 'norm\.weight' \(32,\) holds NaN"
    ):
        load_llamagen_gpt(path, GPT_CFG)
    safetensors_file = tmp_path / "model.safetensors"
    safetensors_file.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match=r"model\.safetensors' is not a readable safetensors file"):
        load_llamagen_gpt(safetensors_file, GPT_CFG)


def test_bf16_load_is_the_fp32_model_cast_and_leaves_nothing_on_meta(tmp_path):
    path = save(tmp_path, {"model": official_gpt_state()}, "c2i.pt")
    fp32 = load_llamagen_gpt(path, GPT_CFG)
    bf16 = load_llamagen_gpt(path, GPT_CFG, dtype=torch.bfloat16)
    assert all(t.device.type == "cpu" for t in [*bf16.parameters(), *bf16.buffers()])
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    for (name, a), (_, b) in zip(fp32.state_dict().items(), bf16.state_dict().items(), strict=True):
        assert torch.equal(a.bfloat16(), b), name
    tokens = torch.randint(0, VOCAB, (2, GRID * GRID))
    with torch.no_grad():
        diff = (fp32(tokens, torch.tensor([0, 1])) - bf16(tokens, torch.tensor([0, 1])).float()).abs().max()
    assert 0 < diff < 0.5  # bf16 rounding, not another model


def test_converted_folders_load_in_bounded_memory_too(tmp_path):
    from arstudio.convert.checkpoint import load_pretrained_bounded

    reference = load_llamagen_gpt(official_gpt_state(), GPT_CFG)
    reference.save_pretrained(tmp_path / "generator")
    loaded = load_pretrained_bounded(ImageGenerator, tmp_path / "generator", dtype=torch.bfloat16)
    assert loaded.config == GPT_CFG and not loaded.training
    for (name, a), (_, b) in zip(reference.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert b.dtype == torch.bfloat16 and torch.equal(a.bfloat16(), b), name
    with pytest.raises(ValueError, match="describes a 'ImageGenerator', expected a 'VQTokenizer'"):
        load_pretrained_bounded(VQTokenizer, tmp_path / "generator")

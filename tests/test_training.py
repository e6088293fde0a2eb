from dataclasses import replace

import pytest
import torch

from arstudio.generators.backbone import BackboneConfig
from arstudio.generators.image import GeneratorConfig, ImageGenerator
from arstudio.generators.video import VideoGenerator
from arstudio.io import load_safetensors
from arstudio.presets import get_preset
from arstudio.tokenizers.kl import KLTokenizer
from arstudio.tokenizers.vq import VQConfig, VQTokenizer
from arstudio.training.common import TRAIN_STATE, EmaWeights, autocast, seeded
from arstudio.training.generator import train_generator
from arstudio.training.tokenizer import train_tokenizer
from arstudio.training.video import train_video_generator

VQ = VQConfig(resolution=32, ch=8, ch_mult=(1, 2, 2), z_channels=8, codebook_size=16, codebook_embed_dim=4,
              norm_groups=4, decoder_res_blocks=1)  # fmt: skip
GEN = GeneratorConfig(
    vocab_size=16, num_classes=24, backbone=BackboneConfig(dim=32, n_layer=1, n_head=4, grid_size=8)
)


def test_tokenizer_training_saves_and_resumes(tmp_path):
    train_tokenizer(tmp_path, VQ, steps=2, batch_size=4, save_every=2, photo_fraction=0.0)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / TRAIN_STATE).is_file()
    first = VQTokenizer.from_pretrained(tmp_path).state_dict()
    train_tokenizer(tmp_path, VQ, steps=3, batch_size=4, save_every=10, photo_fraction=0.0)  # one more step
    state = torch.load(tmp_path / TRAIN_STATE, weights_only=True)
    assert state["step"] == 3
    second = VQTokenizer.from_pretrained(tmp_path).state_dict()
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_generator_training_lowers_the_loss_and_resumes(tmp_path):
    vq_dir, gen_dir = tmp_path / "vq", tmp_path / "gen"
    train_tokenizer(vq_dir, VQ, steps=1, batch_size=2, photo_fraction=0.0)
    model = train_generator(
        gen_dir, vq_dir, GEN, steps=30, batch_size=16, lr=3e-3, num_images=64, save_every=15
    )
    tokens = load_safetensors(gen_dir / "train_tokens.safetensors")
    logits = model(tokens["tokens"][:32].long(), tokens["cond"][:32])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 16), tokens["tokens"][:32].long().reshape(-1))
    assert loss < torch.log(torch.tensor(16.0))  # better than uniform over the 16 codes
    again = ImageGenerator.from_pretrained(gen_dir)
    assert torch.equal(again.head.output.weight, model.head.output.weight)
    assert torch.load(gen_dir / TRAIN_STATE, weights_only=True)["step"] == 30


def tiny_bridge_setup(tmp_path):
    """A tiny bridge tokenizer and continuous trunk saved under tmp_path (tok/, trunk/); returns (config,
    trunk) of the test-tiny-bridge generator at 32 px (8x8 latents: shapes are drawn at 32 or 64 px only)."""
    from arstudio.generators.continuous import ContinuousImageGenerator
    from arstudio.presets import get_preset
    from arstudio.tokenizers.bridge import BridgeTokenizer
    from arstudio.tokenizers.kl import KLTokenizer

    tiny_bridge, tiny_trunk = get_preset("test-tiny-bridge"), get_preset("test-tiny-continuous").generator
    kl_config = replace(tiny_bridge.tokenizer.kl, resolution=32)
    config = replace(tiny_bridge.generator, backbone=replace(tiny_bridge.generator.backbone, grid_size=8))
    torch.manual_seed(0)
    kl = KLTokenizer(kl_config)
    BridgeTokenizer.from_kl(kl, config.levels, torch.randn(500, 4)).save_pretrained(tmp_path / "tok")
    trunk = ContinuousImageGenerator(replace(tiny_trunk, backbone=config.backbone))
    trunk.save_pretrained(tmp_path / "trunk")
    return config, trunk


def test_bridge_head_training_moves_only_the_head_and_resumes(tmp_path):
    from arstudio.training.bridge_head import train_bridge_head, trunk_states

    config, trunk = tiny_bridge_setup(tmp_path)
    out = tmp_path / "bridge"
    model = train_bridge_head(out, tmp_path / "tok", config, tmp_path / "trunk", steps=40, batch_tokens=256,
                              lr=1e-2, num_images=24, save_every=20)  # fmt: skip
    for name, value in trunk.state_dict().items():
        if name.startswith("blocks.") or name.startswith("norm."):  # untouched by head training
            assert torch.equal(model.state_dict()[name], value), name
    table = load_safetensors(out / "train_tokens.safetensors")
    tokens, labels = table["tokens"].long(), table["cond"].long()
    states = trunk_states(model, tokens, labels).float()
    loss = model.head.loss(tokens.flatten(0, 1), states)
    assert loss < torch.log(torch.tensor(8.0)) - 0.1  # better than uniform over the 8 levels
    assert torch.load(out / TRAIN_STATE, weights_only=True)["step"] == 40
    resumed = train_bridge_head(out, tmp_path / "tok", config, tmp_path / "trunk", steps=41, batch_tokens=256,
                                lr=1e-2, num_images=24, save_every=20)  # fmt: skip
    assert torch.load(out / TRAIN_STATE, weights_only=True)["step"] == 41
    assert not torch.equal(resumed.head.output.weight, model.head.output.weight)


def test_train_bridge_head_cli_can_swap_in_a_transformer_head(tmp_path, monkeypatch):
    import arstudio.presets
    from arstudio.cli import main
    from arstudio.generators.continuous import ContinuousImageGenerator

    config, _ = tiny_bridge_setup(tmp_path)
    preset = replace(arstudio.presets.get_preset("test-tiny-bridge"), generator=config)  # at 32 px
    monkeypatch.setattr(arstudio.presets, "get_preset", lambda name: preset)
    out = tmp_path / "bridge"
    args = ["train", "bridge-head", "--preset", "test-tiny-bridge", "--tokenizer", str(tmp_path / "tok"),
            "--trunk", str(tmp_path / "trunk"), "--out", str(out), "--steps", "2", "--batch-tokens", "64",
            "--num-images", "4", "--head-arch", "transformer", "--head-depth", "1", "--head-heads", "2"]  # fmt: skip
    assert main(args) == 0
    config = ContinuousImageGenerator.from_pretrained(out).config
    assert (config.head_arch, config.head_depth, config.head_heads) == ("transformer", 1, 2)


def test_ema_weights_average_warm_up_and_reload(tmp_path):
    config = get_preset("test-tiny-video").generator
    model = seeded(lambda: VideoGenerator(config), 0)
    ema = EmaWeights(model, 0.9, tmp_path)
    start = [p.detach().clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, step=0)  # warm-up: rate 1 - min(0.9, 1 / 10) = 0.9 towards the current weights
    for average, old, new in zip(ema.model.parameters(), start, model.parameters(), strict=True):
        torch.testing.assert_close(average, 0.1 * old + 0.9 * new)
    settled = [p.detach().clone() for p in ema.model.parameters()]
    ema.update(model, step=10_000)  # past warm-up: the configured decay
    for average, old, new in zip(ema.model.parameters(), settled, model.parameters(), strict=True):
        torch.testing.assert_close(average, 0.9 * old + 0.1 * new)
    assert all(not p.requires_grad for p in ema.model.parameters())
    # Reloaded on resume (a checkpoint exists), not restarted from the live weights.
    ema.save()
    (tmp_path / TRAIN_STATE).write_bytes(b"")
    reloaded = EmaWeights(seeded(lambda: VideoGenerator(config), 1), 0.9, tmp_path)
    for a, b in zip(reloaded.model.parameters(), ema.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="decay=1.0"):
        EmaWeights(model, 1.0, tmp_path)


def test_mixed_precision_is_checked():
    with pytest.raises(ValueError, match="'fp16'.*'no', 'bf16'"):
        autocast(torch.device("cpu"), "fp16")


def test_video_generator_training_in_bf16_keeps_a_weight_average(tmp_path):
    preset = get_preset("test-tiny-video")
    tokenizer_dir = tmp_path / "kl"
    # Sprites come at 32 px: one more downsampling level keeps the tiny preset's 4x4 latent grid.
    kl = replace(preset.tokenizer, resolution=32, block_out_channels=(8, 8, 16, 16))
    seeded(lambda: KLTokenizer(kl), 0).save_pretrained(tokenizer_dir)
    out = tmp_path / "video"
    model = train_video_generator(out, tokenizer_dir, preset.generator, steps=3, batch_size=2, num_clips=4,
                                  clip_frames=6, save_every=3, mixed_precision="bf16", ema_decay=0.5)  # fmt: skip
    assert next(model.parameters()).dtype == torch.float32  # autocast leaves the weights in float32
    # The same run in float32 ends close by but not equal: the bf16 matmuls really ran.
    fp32 = train_video_generator(tmp_path / "fp32", tokenizer_dir, preset.generator, steps=3, batch_size=2,
                                 num_clips=4, clip_frames=6, save_every=3)  # fmt: skip
    for a, b in zip(model.parameters(), fp32.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0.05, rtol=0.0)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), fp32.parameters(), strict=True))
    average = VideoGenerator.from_pretrained(out / "ema").state_dict()
    last = VideoGenerator.from_pretrained(out).state_dict()
    assert average.keys() == last.keys()
    assert any(not torch.equal(average[k], last[k]) for k in last if last[k].is_floating_point())


def test_soup_averages_runs_of_one_model_and_refuses_others(tmp_path):
    from arstudio.cli import main
    from arstudio.training.soup import average_runs

    runs = []
    for seed in range(3):
        model = seeded(lambda: ImageGenerator(GEN), seed)
        model.save_pretrained(tmp_path / f"run{seed}")
        runs.append(model.state_dict())
    folders = [str(tmp_path / f"run{seed}") for seed in range(3)]
    assert main(["train", "soup", *folders, "--out", str(tmp_path / "soup")]) == 0
    soup = ImageGenerator.from_pretrained(tmp_path / "soup").state_dict()
    for name, tensor in soup.items():
        assert torch.allclose(tensor, torch.stack([run[name] for run in runs]).mean(0), atol=1e-6), name
    with pytest.raises(ValueError, match="at least 2 runs"):
        average_runs([tmp_path / "run0"], tmp_path / "one")
    with pytest.raises(ValueError, match="is one of the runs"):
        average_runs([tmp_path / "run0", tmp_path / "run1"], tmp_path / "run1")
    ImageGenerator(replace(GEN, num_classes=12)).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match=r"differs from .* in config fields \['num_classes'\]"):
        average_runs([tmp_path / "run0", tmp_path / "other"], tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="not a saved model folder"):
        average_runs([tmp_path / "run0", tmp_path / "nowhere"], tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "one").exists()

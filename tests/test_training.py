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

VQ = VQConfig(
    resolution=32,
    ch=8,
    ch_mult=(1, 2, 2),
    z_channels=8,
    codebook_size=16,
    codebook_embed_dim=4,
    norm_groups=4,
    decoder_res_blocks=1,
)
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
    model = train_bridge_head(
        out,
        tmp_path / "tok",
        config,
        tmp_path / "trunk",
        steps=40,
        batch_tokens=256,
        lr=1e-2,
        num_images=24,
        save_every=20,
    )
    for name, value in trunk.state_dict().items():
        if name.startswith("blocks.") or name.startswith("norm."):  # untouched by head training
            assert torch.equal(model.state_dict()[name], value), name
    table = load_safetensors(out / "train_tokens.safetensors")
    tokens, labels = table["tokens"].long(), table["cond"].long()
    states = trunk_states(model, tokens, labels).float()
    loss = model.head.loss(tokens.flatten(0, 1), states)
    assert loss < torch.log(torch.tensor(8.0)) - 0.1  # better than uniform over the 8 levels
    assert torch.load(out / TRAIN_STATE, weights_only=True)["step"] == 40
    resumed = train_bridge_head(
        out,
        tmp_path / "tok",
        config,
        tmp_path / "trunk",
        steps=41,
        batch_tokens=256,
        lr=1e-2,
        num_images=24,
        save_every=20,
    )
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
    args = [
        "train",
        "bridge-head",
        "--preset",
        "test-tiny-bridge",
        "--tokenizer",
        str(tmp_path / "tok"),
        "--trunk",
        str(tmp_path / "trunk"),
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch-tokens",
        "64",
        "--num-images",
        "4",
        "--head-arch",
        "transformer",
        "--head-depth",
        "1",
        "--head-heads",
        "2",
    ]
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
    model = train_video_generator(
        out,
        tokenizer_dir,
        preset.generator,
        steps=3,
        batch_size=2,
        num_clips=4,
        clip_frames=6,
        save_every=3,
        mixed_precision="bf16",
        ema_decay=0.5,
    )
    assert next(model.parameters()).dtype == torch.float32  # autocast leaves the weights in float32
    # The same run in float32 ends close by but not equal: the bf16 matmuls really ran.
    fp32 = train_video_generator(
        tmp_path / "fp32",
        tokenizer_dir,
        preset.generator,
        steps=3,
        batch_size=2,
        num_clips=4,
        clip_frames=6,
        save_every=3,
    )
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


# ---- drafters (issue 23): CFG-mixed targets, training on the drafter's own rollouts, acceptance report ----


def _write_token_tables(out, pipe, train: int = 48, held_out: int = 16) -> None:
    """Token tables in the files train_drafter caches (shapes are drawn at 32/64 px only; the tiny presets
    are 16 px): every other token fixed, so there is something to learn. Text presets get tiny-encoder
    states of real captions."""
    from safetensors.torch import save_file

    from arstudio.data.shapes import class_name
    from arstudio.training.drafter import EVAL_TOKENS_FILE
    from arstudio.training.generator import TOKENS_FILE

    out.mkdir(parents=True, exist_ok=True)
    gen = pipe.generator
    for name, count, seed in ((TOKENS_FILE, train, 0), (EVAL_TOKENS_FILE, held_out, 1)):
        draw = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, gen.config.vocab_size, (count, gen.seq_len), generator=draw)
        tokens[:, ::2] = 3
        if gen.config.condition == "class":
            cond = torch.randint(0, 24, (count,), generator=draw)
        else:
            captions = [f"a {class_name((i * 7 + seed) % 24)}" for i in range(count)]  # within 12 words
            cond = pipe.text_encoder(captions).to(torch.float16)
        save_file({"tokens": tokens.to(torch.int16), "cond": cond.contiguous()}, str(out / name))


def test_drafter_rollout_sees_exactly_what_drafting_sees():
    """Draft step s of training on the drafter's own rollouts equals cached drafting: true features up to
    the start, then its own predictions (a 2-block drafter, so the rollout mask is tested beyond one layer)."""
    from arstudio.generators.drafter import Drafter, DrafterConfig
    from arstudio.training.drafter import _target_states, rollout_features

    config = replace(
        GEN, num_classes=3, backbone=replace(GEN.backbone, dim=16, n_head=2, n_layer=2, grid_size=4)
    )
    target = seeded(lambda: ImageGenerator(config).eval(), 0)
    drafter = seeded(lambda: Drafter(DrafterConfig.for_target(target, n_layer=2)).eval(), 1)
    tokens = torch.randint(0, 16, (2, 16), generator=torch.Generator().manual_seed(0))
    next_embeddings, hidden = _target_states(target, tokens, torch.tensor([0, 2]))
    features = hidden[:, :-1]
    with torch.no_grad():
        predicted = rollout_features(drafter, next_embeddings, features, steps=3)
        for start in (0, 5, 11):
            drafter.setup_cache(2)
            prefill = torch.arange(start + 1)
            draft = drafter.step(next_embeddings[:, : start + 1], features[:, : start + 1], prefill)[:, -1:]
            torch.testing.assert_close(draft[:, 0], predicted[0][:, start], atol=1e-5, rtol=0)
            for s in (1, 2):
                at = torch.tensor([start + s])
                draft = drafter.step(next_embeddings[:, start + s : start + s + 1], draft, at)
                torch.testing.assert_close(draft[:, 0], predicted[s][:, start + s], atol=1e-5, rtol=0)
            drafter.reset_cache()


@pytest.mark.parametrize("preset", ["test-tiny-c2i", "test-tiny-t2i"])
def test_guided_rollout_drafter_training_raises_guided_acceptance(tmp_path, preset):
    import json

    from arstudio.generators.drafter import Drafter, DrafterConfig
    from arstudio.pipelines.loading import load_pipeline
    from arstudio.training.drafter import (
        ACCEPTANCE_FILE,
        DrafterObjective,
        draft_acceptance,
        load_or_make_eval_tokens,
        train_drafter,
    )

    pipe = load_pipeline(preset, device="cpu", decoding_models=False)
    _write_token_tables(tmp_path, pipe)
    objective = DrafterObjective(guidance_scale=2.0, rollout=2, ce_weight=0.5)
    drafter = train_drafter(
        tmp_path,
        preset,
        steps=25,
        batch_size=16,
        lr=3e-3,
        num_images=48,
        save_every=25,
        objective=objective,
        report_depth=2,
        eval_images=16,
    )
    report = json.loads((tmp_path / ACCEPTANCE_FILE).read_text())
    assert report["guidance_scale"] == 2.0 and len(report["guided"]["per_position"]) == 2
    assert all(0 < rate <= 1 for mode in ("guided", "conditional") for rate in report[mode]["per_position"])
    tokens, conds = load_or_make_eval_tokens(tmp_path, pipe.tokenizer, 16, None, None)
    untrained = seeded(lambda: Drafter(DrafterConfig.for_target(pipe.generator)), 0).eval()
    before = draft_acceptance(untrained, pipe.generator, tokens, conds, 2, guidance_scale=2.0)
    assert report["guided"]["per_position"] == draft_acceptance(
        drafter, pipe.generator, tokens, conds, 2, 2.0
    )
    # the random tiny target is nearly uniform (an untrained drafter already overlaps it by ~0.93)
    assert all(a > b + 0.02 for a, b in zip(report["guided"]["per_position"], before, strict=True)), before
    assert torch.load(tmp_path / TRAIN_STATE, weights_only=True)["step"] == 25


def test_drafter_objective_and_warm_start_refuse_bad_input(tmp_path):
    from arstudio.cli import main
    from arstudio.generators.drafter import Drafter, DrafterConfig
    from arstudio.pipelines.loading import load_pipeline
    from arstudio.training.drafter import DrafterObjective, train_drafter

    for bad, match in (
        ({"rollout": 0}, "rollout=0"),
        ({"guidance_scale": float("nan")}, "guidance_scale=nan"),
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"ce_weight": -1.0}, "ce_weight=-1.0"),
    ):
        with pytest.raises(ValueError, match=match):
            DrafterObjective(**bad)
    with pytest.raises(SystemExit, match="--guidance-scale 2.0 applies with --cfg-loss"):
        main(
            ["train", "drafter", "--preset", "test-tiny-c2i", "--out", str(tmp_path), "--guidance-scale", "2"]
        )
    other = load_pipeline("test-tiny-t2i", device="cpu", decoding_models=False).generator
    Drafter(DrafterConfig.for_target(other)).save_pretrained(tmp_path / "other")
    pipe = load_pipeline("test-tiny-c2i", device="cpu", decoding_models=False)
    _write_token_tables(tmp_path / "run", pipe)
    with pytest.raises(ValueError, match="trained for target"):
        train_drafter(tmp_path / "run", "test-tiny-c2i", steps=1, num_images=48, init_from=tmp_path / "other")


def test_generator_training_in_bf16(tmp_path):
    vq_dir = tmp_path / "vq"
    train_tokenizer(vq_dir, VQ, steps=1, batch_size=2, photo_fraction=0.0)
    train_generator(
        tmp_path / "gen", vq_dir, GEN, steps=2, batch_size=4, num_images=8, mixed_precision="bf16"
    )
    with pytest.raises(ValueError, match="mixed_precision='fp8'"):
        train_generator(
            tmp_path / "gen2", vq_dir, GEN, steps=1, batch_size=4, num_images=8, mixed_precision="fp8"
        )
    assert torch.load(tmp_path / "gen" / TRAIN_STATE, weights_only=True)["step"] == 2

"""arstudio: generate, list presets, and train models.

Heavy imports (torch, diffusers) happen inside each subcommand, so ``arstudio --help`` stays quick.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def _add_train_tokenizer(sub) -> None:
    p = sub.add_parser("tokenizer", help="train the VQ tokenizer on shapes + photo crops")
    p.add_argument("--out", required=True, help="output directory (resumes if it holds a checkpoint)")
    p.add_argument("--resolution", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--codebook-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--photo-fraction", type=float, default=0.2, help="share of each batch that is photo crops"
    )
    p.add_argument("--text-fraction", type=float, default=0.0, help="share of 1-2 object caption-set images")
    p.add_argument("--init-from", default=None, help="start from this tokenizer's weights (fine-tuning)")
    p.set_defaults(func=_run_train_tokenizer)


def _run_train_tokenizer(args) -> None:
    from arstudio.tokenizers.vq import VQConfig
    from arstudio.training.tokenizer import train_tokenizer

    config = VQConfig(resolution=args.resolution, codebook_size=args.codebook_size)
    train_tokenizer(
        args.out,
        config,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        photo_fraction=args.photo_fraction,
        text_fraction=args.text_fraction,
        init_from=args.init_from,
    )
    print(f"tokenizer saved to {args.out}")


def _add_train_kl_tokenizer(sub) -> None:
    p = sub.add_parser("kl-tokenizer", help="train the continuous KL tokenizer (diffusers AutoencoderKL)")
    p.add_argument("--out", required=True, help="output directory (resumes if it holds a checkpoint)")
    p.add_argument("--latent-channels", type=int, default=8, help="token dimension d (default 8)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_train_kl_tokenizer)


def _run_train_kl_tokenizer(args) -> None:
    from arstudio.tokenizers.kl import KLConfig
    from arstudio.training.kl_tokenizer import train_kl_tokenizer

    config = KLConfig(latent_channels=args.latent_channels)
    train_kl_tokenizer(
        args.out, config, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    print(f"kl tokenizer saved to {args.out}")


def _add_train_bridge_tokenizer(sub) -> None:
    p = sub.add_parser("bridge-tokenizer", help="TokenBridge: quantise a trained KL tokenizer per dimension")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--kl", required=True, help="directory of a trained KL tokenizer")
    p.add_argument("--levels", type=int, default=64, help="quantisation levels per dimension (default 64)")
    p.add_argument("--num-images", type=int, default=4096, help="images whose latents fit the statistics")
    p.add_argument(
        "--method",
        default="empirical",
        choices=("empirical", "gaussian", "lloyd"),
        help="bins: equal-probability (default), TokenBridge's Gaussian ones, or MSE-optimal",
    )
    p.set_defaults(func=_run_train_bridge_tokenizer)


def _run_train_bridge_tokenizer(args) -> None:
    from arstudio.training.kl_tokenizer import build_bridge_tokenizer

    _, table = build_bridge_tokenizer(
        args.out, args.kl, levels=args.levels, num_images=args.num_images, method=args.method
    )
    for row in table:
        print(
            f"bits/dim {row['bits']!s:>4} {row['method']!s:9}  latent MSE / var {row['relative_latent_mse']:.4f}  "
            f"PSNR {row['psnr']:.2f} dB"
        )
    print(f"bridge tokenizer saved to {args.out}")


def _add_train_bridge_head(sub) -> None:
    p = sub.add_parser("bridge-head", help="train a bridge generator's per-dimension head on a frozen trunk")
    p.add_argument("--out", required=True, help="output directory (resumes if it holds a checkpoint)")
    p.add_argument("--tokenizer", required=True, help="directory of the bridge tokenizer")
    p.add_argument(
        "--trunk", required=True, help="generator (diffusion/flow head) trained on the same KL latents"
    )
    p.add_argument("--preset", default="shapes-c2i-bridge", help="preset whose bridge generator to train")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-tokens", type=int, default=2048)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--num-images", type=int, default=6000, help="images whose trunk states are cached")
    p.add_argument("--seed", type=int, default=0)
    head = p.add_argument_group("another head than the preset's")
    head.add_argument("--head-arch", choices=("mlp", "transformer"), help="layers over a token's dimensions")
    head.add_argument("--head-width", type=int, help="head width")
    head.add_argument("--head-depth", type=int, help="MLP blocks / transformer layers")
    head.add_argument("--head-heads", type=int, help="transformer: attention heads")
    head.add_argument(
        "--levels", type=int, help="levels per dimension: the tokenizer's (default: the preset's)"
    )
    p.set_defaults(func=_run_train_bridge_head)


def _run_train_bridge_head(args) -> None:
    from dataclasses import replace

    from arstudio.presets import get_preset
    from arstudio.training.bridge_head import train_bridge_head

    options = (
        ("head_arch", args.head_arch),
        ("head_width", args.head_width),
        ("head_depth", args.head_depth),
        ("head_heads", args.head_heads),
        ("levels", args.levels),
    )
    config = replace(get_preset(args.preset).generator, **{k: v for k, v in options if v is not None})
    train_bridge_head(
        args.out,
        args.tokenizer,
        config,
        args.trunk,
        steps=args.steps,
        batch_tokens=args.batch_tokens,
        lr=args.lr,
        num_images=args.num_images,
        seed=args.seed,
    )
    print(f"bridge generator saved to {args.out}")


def _add_train_generator(sub) -> None:
    p = sub.add_parser(
        "generator", help="train a class- or text-conditioned AR generator on tokens of shapes"
    )
    p.add_argument("--out", required=True, help="output directory (resumes if it holds a checkpoint)")
    p.add_argument("--tokenizer", required=True, help="directory of a trained tokenizer")
    p.add_argument("--preset", default="shapes-c2i", help="preset whose generator architecture to train")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--num-images", type=int, default=60_000, help="size of the tokenized training set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--init-from",
        help="warm start from another generator run's weights (same config; a bridge "
        "generator may start from a diffusion/flow run on the same KL latents: trunk only)",
    )
    p.add_argument("--save-every", type=int, default=250, help="checkpoint every this many steps")
    p.add_argument(
        "--warm-lr-scale",
        type=float,
        default=1.0,
        help="with --init-from: learning-rate factor of the warm-started parameters (new ones: 1)",
    )
    p.add_argument("--mixed-precision", choices=("no", "bf16"), default="no", help="bf16: autocast matmuls")
    size = p.add_argument_group("a smaller model than the preset's (e.g. a draft model for speculation)")
    size.add_argument("--backbone-dim", type=int, help="backbone width")
    size.add_argument("--backbone-layers", type=int, help="backbone blocks")
    size.add_argument("--backbone-heads", type=int, help="attention heads")
    size.add_argument("--head-width", type=int, help="continuous heads: MLP width")
    size.add_argument("--head-depth", type=int, help="continuous heads: MLP blocks")
    p.set_defaults(func=_run_train_generator)


def _resized(config, args):
    """The preset's generator config with the size overrides given on the command line."""
    from dataclasses import replace

    backbone = {
        k: v
        for k, v in (
            ("dim", args.backbone_dim),
            ("n_layer", args.backbone_layers),
            ("n_head", args.backbone_heads),
        )
        if v is not None
    }
    head = {
        k: v for k, v in (("head_width", args.head_width), ("head_depth", args.head_depth)) if v is not None
    }
    if head and not hasattr(config, "head_width"):
        raise SystemExit("--head-width/--head-depth apply to continuous presets only")
    return replace(config, backbone=replace(config.backbone, **backbone), **head)


def _run_train_generator(args) -> None:
    from arstudio.presets import get_preset
    from arstudio.training.generator import train_generator

    preset = get_preset(args.preset)
    text_encoder = None
    if preset.text_encoder is not None:
        from arstudio.generators.text_encoders import load_text_encoder

        text_encoder = load_text_encoder(preset.text_encoder, preset.text_len, phrases=preset.text_phrases)
    train_generator(
        args.out,
        args.tokenizer,
        _resized(preset.generator, args),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        num_images=args.num_images,
        seed=args.seed,
        text_encoder=text_encoder,
        init_from=args.init_from,
        save_every=args.save_every,
        warm_lr_scale=args.warm_lr_scale,
        mixed_precision=args.mixed_precision,
    )
    print(f"generator saved to {args.out}")


def _add_train_video_generator(sub) -> None:
    p = sub.add_parser("video-generator", help="train the FAR next-frame video generator on sprite clips")
    p.add_argument("--out", required=True, help="output directory (resumes if it holds a checkpoint)")
    p.add_argument("--tokenizer", required=True, help="directory of a trained KL tokenizer")
    p.add_argument("--preset", default="sprites-video", help="preset whose generator architecture to train")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--num-clips", type=int, default=3000, help="clips in the encoded training set")
    p.add_argument("--clip-frames", type=int, default=16, help="frames per encoded clip (windows are drawn)")
    p.add_argument("--seed", type=int, default=0)
    # the choices of training.common.MIXED_PRECISION, spelled out so `--help` does not import torch
    p.add_argument("--mixed-precision", choices=("no", "bf16"), default="no", help="bf16: autocast matmuls")
    p.add_argument("--ema-decay", type=float, default=None, help="also keep a weight average in OUT/ema")
    p.set_defaults(func=_run_train_video_generator)


def _run_train_video_generator(args) -> None:
    from arstudio.presets import get_preset
    from arstudio.training.video import train_video_generator

    train_video_generator(
        args.out,
        args.tokenizer,
        get_preset(args.preset).generator,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        num_clips=args.num_clips,
        clip_frames=args.clip_frames,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        ema_decay=args.ema_decay,
    )
    print(f"video generator saved to {args.out}")


def _add_train_causal_video_tokenizer(sub) -> None:
    p = sub.add_parser("causal-video-tokenizer", help="train the causal (C-ViViT-style) video tokenizer")
    p.add_argument("--out", required=True, help="output directory (resumes if it holds a checkpoint)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-frames", type=int, default=5, help="frames per training clip: 1 + k * 2")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_train_causal_video_tokenizer)


def _run_train_causal_video_tokenizer(args) -> None:
    from arstudio.tokenizers.causal_video import CausalVideoConfig
    from arstudio.training.video_tokenizer import train_causal_video_tokenizer

    train_causal_video_tokenizer(
        args.out,
        CausalVideoConfig(),
        steps=args.steps,
        batch_size=args.batch_size,
        num_frames=args.num_frames,
        lr=args.lr,
        seed=args.seed,
    )
    print(f"causal video tokenizer saved to {args.out}")


def _add_train_drafter(sub) -> None:
    p = sub.add_parser("drafter", help="train a speculative-decoding drafter for a preset's generator")
    p.add_argument("--preset", required=True, help="preset whose (shipped) generator is the target")
    p.add_argument("--out", required=True, help="output directory (resumes if it holds a checkpoint)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--num-images", type=int, default=20_000, help="size of the tokenized training set")
    p.add_argument("--seed", type=int, default=0)
    aim = p.add_argument_group("what the drafter is fitted to (default: LANTERN's conditional-stream recipe)")
    aim.add_argument(
        "--cfg-loss",
        action="store_true",
        help="match the guided distributions at the preset's guidance scale and temperature",
    )
    aim.add_argument("--guidance-scale", type=float, default=None, help="with --cfg-loss: another scale")
    aim.add_argument(
        "--rollout",
        type=int,
        default=1,
        help="draft steps trained per position; > 1 feeds back the drafter's own predictions",
    )
    aim.add_argument(
        "--ce-weight", type=float, default=0.1, help="cross-entropy weight beside the regression"
    )
    p.add_argument(
        "--report-depth",
        type=int,
        default=4,
        help="report acceptance for this many draft positions at the end (0: no report)",
    )
    p.add_argument("--eval-images", type=int, default=256, help="held-out images of the acceptance report")
    p.add_argument(
        "--init-from", default=None, help="start from this drafter (same target), e.g. the shipped one"
    )
    p.set_defaults(func=_run_train_drafter)


def _run_train_drafter(args) -> None:
    from arstudio.presets import get_preset
    from arstudio.training.drafter import DrafterObjective, train_drafter

    if args.guidance_scale is not None and not args.cfg_loss:
        raise SystemExit(f"--guidance-scale {args.guidance_scale} applies with --cfg-loss; add --cfg-loss")
    scale, temperature = None, 1.0  # the conditional stream alone
    if args.cfg_loss:
        defaults = get_preset(args.preset).defaults
        scale = defaults.get("guidance_scale", 1.0) if args.guidance_scale is None else args.guidance_scale
        temperature = defaults.get("temperature", 1.0)
    objective = DrafterObjective(
        guidance_scale=scale, temperature=temperature, rollout=args.rollout, ce_weight=args.ce_weight
    )
    train_drafter(
        args.out,
        args.preset,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        num_images=args.num_images,
        seed=args.seed,
        objective=objective,
        report_depth=args.report_depth,
        eval_images=args.eval_images,
        init_from=args.init_from,
    )
    print(f"drafter saved to {args.out}")


def _add_train_distill(sub) -> None:
    p = sub.add_parser("distill", help="distil a preset's AR generator into a one-step DD model (dd1 or dd2)")
    p.add_argument("--method", required=True, choices=("dd1", "dd2"))
    p.add_argument("--teacher", required=True, help="preset whose shipped generator is the teacher")
    p.add_argument("--out", required=True, help="output directory (resumes if it holds a checkpoint)")
    p.add_argument("--init", default=None, help="dd2: the DD1 run (or shipped dd1/ folder) to start from")
    p.add_argument(
        "--steps", type=int, default=None, help="default: 600 (dd1), 200 (dd2): the shipped recipes"
    )
    p.add_argument("--batch-size", type=int, default=None, help="default: 64 (dd1), 16 (dd2)")
    p.add_argument("--lr", type=float, default=None, help="default: 5e-4 (dd1), 1e-4 (dd2)")
    p.add_argument("--pairs", type=int, default=8192, help="teacher (noise, tokens) pairs for DD1's loss")
    p.add_argument("--dd1-weight", type=float, default=0.25, help="dd2: weight of the DD1 regression term")
    p.add_argument("--snapshot-every", type=int, default=0, help="dd2: keep the generator every N steps")
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="dd2: the teacher score's CFG (default: the preset's)",
    )
    p.add_argument("--ema-decay", type=float, default=None, help="dd2: also keep a weight average in OUT/ema")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_train_distill)


def _run_train_distill(args) -> None:
    dd1 = args.method == "dd1"
    options = {
        "steps": args.steps or (600 if dd1 else 200),
        "batch_size": args.batch_size or (64 if dd1 else 16),
        "lr": args.lr or (5e-4 if dd1 else 1e-4),
        "seed": args.seed,
    }
    if dd1:
        from arstudio.training.distill import train_dd1

        train_dd1(args.out, args.teacher, num_pairs=args.pairs, **options)
    else:
        from arstudio.training.distill_dd2 import train_dd2

        train_dd2(
            args.out,
            args.teacher,
            init=args.init,
            dd1_weight=args.dd1_weight,
            num_pairs=args.pairs if args.init else 0,
            snapshot_every=args.snapshot_every,
            guidance_scale=args.guidance_scale,
            ema_decay=args.ema_decay,
            **options,
        )
    print(f"{args.method} model saved to {args.out}")


def _add_train_soup(sub) -> None:
    p = sub.add_parser("soup", help="average the weights of runs fine-tuned from one model (a model soup)")
    p.add_argument("runs", nargs="+", help="saved model folders (config.json + model.safetensors), 2 or more")
    p.add_argument("--out", required=True, help="output folder for the averaged model")
    p.set_defaults(func=_run_train_soup)


def _run_train_soup(args) -> None:
    from arstudio.training.soup import average_runs

    print(f"soup of {len(args.runs)} runs saved to {average_runs(args.runs, args.out)}")


def _add_train_classifier(sub) -> None:
    p = sub.add_parser("classifier", help="train the FD-shapes feature classifier")
    p.add_argument("--out", required=True, help="output directory (resumes if it holds a checkpoint)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_train_classifier)


def _run_train_classifier(args) -> None:
    from arstudio.evaluation.fd_shapes import train_classifier

    train_classifier(
        args.out, steps=args.steps, batch_size=args.batch_size, seed=args.seed, resolution=args.resolution
    )
    print(f"classifier saved to {args.out}")


def _add_loading_flags(p) -> None:
    """How pipelines are loaded: shared by generate, render and ui (``arstudio.load_pipeline``'s options)."""
    p.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default=None,
        help="torch.compile the model: auto (the loader decides; the default), on, off",
    )
    p.add_argument(
        "--attention-backend",
        choices=("sdpa", "xformers"),
        default=None,
        help="attention kernels (default: sdpa; xformers needs the [gpu] extra)",
    )


def _loading_kwargs(args) -> dict:
    """--compile / --attention-backend as load_pipeline keyword arguments; only the flags given, so the
    loader's own defaults apply otherwise."""
    kwargs = {}
    if args.compile is not None:
        kwargs["compile"] = {"auto": "auto", "on": True, "off": False}[args.compile]
    if args.attention_backend is not None:
        kwargs["attention_backend"] = args.attention_backend
    return kwargs


def _add_generate(sub) -> None:
    from arstudio.limits import MAX_GRID_IMAGES, MAX_IMAGES_PER_RUN

    p = sub.add_parser("generate", help="generate images from a preset into a folder (PNG + metadata)")
    p.add_argument("--preset", default="shapes-c2i", help="preset name (see `arstudio presets`)")
    p.add_argument("--out", default="outputs", help="output folder (created if missing)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--class-labels", type=int, nargs="+", help="class ids (default: every class)")
    group.add_argument("--prompt", nargs="+", help='text (text presets) or class names, e.g. "red circle"')
    p.add_argument("--negative-prompt", nargs="+", default=None, help="text presets: one, or one per prompt")
    p.add_argument(
        "--num-images-per-prompt",
        type=int,
        default=1,
        help=f"any number: made --batch-size at a time, each batch written as it finishes "
        f"(at most {MAX_IMAGES_PER_RUN:,} in all)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per pipeline call (default: sized to the device, arstudio.limits)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="in [0, 2**63): seed of the generator the per-image seeds come from",
    )
    p.add_argument("--guidance-scale", type=float, default=None, help="default: the preset's")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument(
        "--cfg-interval",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="guide only tokens in this fraction of the image, 0 <= LO <= HI <= 1 (default 0 1)",
    )
    p.late_arguments = [_add_decoding_flags]  # from the strategy registry, which imports torch
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    _add_loading_flags(p)
    p.add_argument("--weights", default=None, help="local weights folder instead of the preset's own")
    p.add_argument(
        "--download", action="store_true", help="hub presets: download the official files if missing"
    )
    p.add_argument(
        "--no-grid",
        action="store_true",
        help=f"do not write grid.png (the contact sheet of the first {MAX_GRID_IMAGES} images)",
    )
    p.add_argument(
        "--num-frames",
        type=int,
        default=None,
        help=f"video presets only: frames per video, mp4 + gif (default {DEFAULT_NUM_FRAMES})",
    )
    p.add_argument(
        "--control-image",
        default=None,
        help="control presets: a one-channel PNG at the model's resolution (white edges/mask on black)",
    )
    p.add_argument(
        "--control-type", default=None, help="control presets: e.g. edges or mask (default: the first)"
    )
    p.add_argument(
        "--control-strength", type=float, default=None, help="control presets: in [0, 2] (default 1)"
    )
    p.add_argument(
        "--control-guidance-scale",
        type=float,
        default=None,
        help="control presets: guidance over the control alone (default: joint with --guidance-scale)",
    )
    p.set_defaults(func=_run_generate)


CONTROL_FLAGS = ("control_image", "control_type", "control_strength", "control_guidance_scale")
DEFAULT_NUM_FRAMES = 16
MAX_DEFAULT_CLASSES = 100  # without --class-labels, generate shows every class of small presets
GRID_COLUMNS = 16


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# Knobs that are also pipeline arguments: a diffusion/flow head's steps per token (the pipeline checks them).
PIPELINE_KNOBS = ("num_inference_steps",)


def _add_decoding_flags(p) -> None:
    """--decoding and every strategy's knobs as flags (--draft-tokens, --lantern-k, ...), built from the
    strategy registry with each knob's range and default in the help."""
    from arstudio.decoding.strategies import STRATEGIES

    group = p.add_argument_group("decoding (a knob applies to the strategies named in its help)")
    group.add_argument(
        "--decoding",
        choices=tuple(STRATEGIES),
        default=None,
        help="decoding strategy (default: ar); the preset must offer it",
    )
    takers: dict[str, dict] = {}  # knob name -> {knob (name, range, default, help): [strategy names]}
    for strategy in STRATEGIES.values():
        for knob in strategy.knobs:
            takers.setdefault(knob.name, {}).setdefault(knob, []).append(strategy.name)
    for name, knobs in takers.items():
        parts = [
            f"{'/'.join(names)}: {k.help}, in [{k.low:g}, {k.high:g}], default {k.default:g}"
            for k, names in knobs.items()
        ]
        if name in PIPELINE_KNOBS:
            parts.insert(0, "diffusion/flow heads: denoising steps per token (default: the preset's)")
        integer = all(k.integer for k in knobs)
        group.add_argument(
            _flag(name),
            type=int if integer else float,
            default=None,
            help="; ".join(parts),
            metavar="N" if integer else "X",
        )


def _knob_flags_given(args) -> dict:
    from arstudio.decoding.strategies import knob_names

    return {name: getattr(args, name) for name in sorted(knob_names()) if getattr(args, name) is not None}


def _decoding_kwargs(args) -> dict:
    """--decoding and the knob flags given, as pipeline keyword arguments: each knob checked by the
    registry's ``check_knobs``; a knob of another strategy is an error naming the ones this one takes."""
    from arstudio.decoding.strategies import STRATEGIES, check_knobs, get_strategy

    strategy = get_strategy(args.decoding or "ar")
    given = _knob_flags_given(args)
    takes = [knob.name for knob in strategy.knobs]
    for name, value in given.items():
        if name in takes:
            try:
                check_knobs(strategy, {name: value})
            except ValueError as err:
                raise ValueError(f"{_flag(name)}: {err}") from None
        elif name not in PIPELINE_KNOBS:
            users = [s.name for s in STRATEGIES.values() if name in {k.name for k in s.knobs}]
            raise ValueError(
                f"{_flag(name)}={value} does not apply to --decoding {strategy.name} (it takes "
                f"{', '.join(map(_flag, takes)) or 'no knob flags'}); {_flag(name)} is for --decoding "
                f"{' / '.join(users)}"
            )
    return {"decoding": strategy.name, **given}


def _control_kwargs(args) -> dict:
    """The --control-* flags given, as pipeline keyword arguments (the pipeline checks them)."""
    given = {name: getattr(args, name) for name in CONTROL_FLAGS if getattr(args, name) is not None}
    if "control_image" in given:
        from PIL import Image

        with Image.open(given["control_image"]) as image:
            image.load()
            given["control_image"] = image
    return given


def _default_labels(args, preset) -> list[int] | None:
    """Without --prompt or --class-labels a class preset shows every class (if it has few)."""
    if args.prompt is not None or args.class_labels is not None or preset.text_encoder is not None:
        return args.class_labels
    num_classes = preset.generator.num_classes
    if num_classes > MAX_DEFAULT_CLASSES:
        raise ValueError(f"{preset.name} has {num_classes} classes: pick some with --class-labels")
    return list(range(num_classes))


def _check_generate_request(args, preset) -> None:
    """Everything about a generate request that is wrong whatever the weights: refused before loading."""
    from arstudio.export import check_output_folder
    from arstudio.limits import MAX_IMAGES_PER_RUN

    check_output_folder(args.out, "--out")
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed={args.seed} must be an integer in [0, 2**63)")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size={args.batch_size} must be an integer >= 1")
    _check_flags_fit_the_preset(args, preset)
    if preset.text_encoder is not None and args.prompt is None:
        raise ValueError(
            f"{preset.name} is text-to-image: give --prompt, e.g. 'a large red circle at the top left'"
        )
    prompts = len(args.prompt or _default_labels(args, preset))
    if args.negative_prompt is not None and len(args.negative_prompt) not in (1, prompts):
        raise ValueError(
            f"got {len(args.negative_prompt)} negative prompts for {prompts} prompts; pass 1 or one each"
        )
    n = args.num_images_per_prompt
    if not 1 <= n or prompts * n > MAX_IMAGES_PER_RUN:
        raise ValueError(
            f"--num-images-per-prompt={n} must be >= 1, and {prompts} prompt(s) x {n} at most "
            f"{MAX_IMAGES_PER_RUN:,} images in one run"
        )


def _check_flags_fit_the_preset(args, preset) -> None:
    """Flags of the other kind of preset are errors, not ignored; sampling values get the pipeline's checks."""
    from arstudio.decoding.logits import SamplingParams

    asked = _sampling_kwargs(args)
    if preset.task == "class-to-video":
        knobs = sorted(set(_knob_flags_given(args)) - set(PIPELINE_KNOBS))
        not_video = ("top_k", "top_p", "cfg_interval", "negative_prompt", "decoding", *knobs, *CONTROL_FLAGS)
        given = [k for k in not_video if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{', '.join(map(_flag, given))}: video presets take none of these")
        asked.update(top_k=0, top_p=1.0)
    else:
        if args.num_frames is not None:
            raise ValueError(
                f"--num-frames={args.num_frames}: {preset.name} makes images; only video presets take it"
            )
        _decoding_kwargs(args)
    SamplingParams.from_defaults(preset.defaults, **asked)  # the pipeline's own checks, before loading


def _sampling_kwargs(args) -> dict:
    """--guidance-scale, --temperature, --top-k, --top-p and --cfg-interval as pipeline keyword arguments."""
    asked = {k: getattr(args, k) for k in ("guidance_scale", "temperature", "top_k", "top_p")}
    return {**asked, "cfg_interval": None if args.cfg_interval is None else tuple(args.cfg_interval)}


def _run_generate(args) -> None:
    from arstudio.limits import default_batch_size
    from arstudio.pipelines.loading import load_pipeline
    from arstudio.presets import get_preset

    preset = get_preset(args.preset)
    _check_generate_request(args, preset)
    labels = _default_labels(args, preset)
    control = _control_kwargs(args)
    pipe = load_pipeline(
        args.preset, device=args.device, weights=args.weights, download=args.download, **_loading_kwargs(args)
    )
    batch = args.batch_size or default_batch_size(pipe.device)
    if preset.task == "class-to-video":
        written, seconds = _generate_videos(pipe, args, labels, batch)
    else:
        written, seconds = _generate_images(pipe, args, labels, control, batch)
    print(f"wrote {written} files to {args.out} in {seconds:.1f} s")


def _per_image_seeds(seed: int, count: int) -> list[int]:
    """The seeds the pipeline would draw from ``Generator().manual_seed(seed)`` for ``count`` images, so a
    batched run names (and makes) the same images as one call with that generator."""
    import torch

    return torch.randint(0, 2**62, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def _batches(args, labels, batch: int):
    """(first image index, condition kwargs, generators) per batch of at most ``batch`` images, in the
    order one call would make them: prompt by prompt, ``--num-images-per-prompt`` each."""
    import torch

    n = args.num_images_per_prompt
    key, conditions = ("prompt", args.prompt) if args.prompt is not None else ("class_labels", labels)
    negatives = args.negative_prompt
    seeds = _per_image_seeds(args.seed, len(conditions) * n)
    for start in range(0, len(seeds), batch):
        rows = range(start, min(start + batch, len(seeds)))
        kwargs = {key: [conditions[i // n] for i in rows]}
        if negatives is not None:
            kwargs["negative_prompt"] = (
                negatives if len(negatives) == 1 else [negatives[i // n] for i in rows]
            )
        yield start, kwargs, [torch.Generator().manual_seed(seeds[i]) for i in rows]


def _generate_images(pipe, args, labels, control: dict, batch: int) -> tuple[int, float]:
    """Batch by batch, each batch's PNGs written (atomically) before the next starts: memory stays flat in
    the request size, and a killed run keeps every batch it finished."""
    from arstudio.export import grid_bytes, save_images
    from arstudio.io import atomic_write_bytes
    from arstudio.limits import MAX_GRID_IMAGES

    sampling = {**_sampling_kwargs(args), **_decoding_kwargs(args)}
    total = len(args.prompt or labels) * args.num_images_per_prompt
    digits = max(4, len(str(total - 1)))
    written, seconds, sheet = 0, 0.0, []
    for start, condition, generators in _batches(args, labels, batch):
        out = pipe(**condition, **sampling, **control, generator=generators, output_type="np")
        written += len(save_images(out, args.out, first_index=start, index_digits=digits))
        sheet += out.images[: MAX_GRID_IMAGES - len(sheet)]
        seconds += out.timings["total_s"]
    if not args.no_grid:
        columns = min(args.num_images_per_prompt, GRID_COLUMNS)
        atomic_write_bytes(Path(args.out) / "grid.png", grid_bytes(sheet, columns))
        written += 1
    return written, seconds


def _generate_videos(pipe, args, labels, batch: int) -> tuple[int, float]:
    from arstudio.export import mp4_available, save_videos

    formats = ("mp4", "gif") if mp4_available() else ("gif",)
    num_frames = DEFAULT_NUM_FRAMES if args.num_frames is None else args.num_frames
    written, seconds = 0, 0.0
    for start, condition, generators in _batches(args, labels, batch):
        out = pipe(
            **condition,
            num_frames=num_frames,
            generator=generators,
            guidance_scale=args.guidance_scale,
            temperature=args.temperature,
            num_inference_steps=args.num_inference_steps,
        )
        written += len(save_videos(out, args.out, formats=formats, scale=4, first_index=start))
        seconds += out.timings["total_s"]
    return written, seconds


def _add_presets(sub) -> None:
    p = sub.add_parser("presets", help="list the available presets")
    p.set_defaults(func=_run_presets)


def _run_presets(args) -> None:
    """One line per preset: name, task, generator size, resolution, where the weights stand (hub presets: a
    local copy, or "needs weights" and the download size), description."""
    from arstudio.convert.hub import human_size, preset_facts
    from arstudio.presets import get_preset, list_presets

    states = {"shipped": "shipped weights", "untrained": "not trained yet", "random": "random init"}
    rows = []
    for name in list_presets():
        preset, facts = get_preset(name), preset_facts(name)
        if facts.weights != "hub":
            weights = states[facts.weights]
        else:
            size = human_size(facts.download_bytes, "B") + ("" if facts.download_exact else " est.")
            weights = f"hub: local copy ({size})" if facts.local else f"hub: needs weights (download {size})"
        rows.append(
            (
                name,
                preset.task,
                human_size(facts.generator_params),
                f"{facts.resolution} px",
                weights,
                preset.description,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]  # columns as wide as their longest entry
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[5])


def _add_render(sub) -> None:
    p = sub.add_parser("render", help="render a JSONL jobs file into a folder (resumable; accelerate-aware)")
    p.add_argument("jobs", help='JSONL, one job a line, e.g. {"preset": "shapes-c2i", "class": 0, "seed": 1}')
    p.add_argument("--out", required=True, help="output folder (PNGs + manifest.jsonl); rerun to resume")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="seeds of one job rendered per call (default: sized to the device); keep it when resuming",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    _add_loading_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_render)


def _run_render(args) -> None:
    from arstudio.render import render_batch

    summary = render_batch(
        args.jobs,
        args.out,
        device=args.device,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        load_options=_loading_kwargs(args),
    )
    if summary.main_process:
        print(summary)
    if summary.failed:
        raise RenderFailed(f"{len(summary.failed)} job(s) failed; the others were rendered")


class RenderFailed(ValueError):
    """Some jobs failed: exit status 2, after the others were rendered and the summary printed."""


def _add_ui(sub) -> None:
    p = sub.add_parser("ui", help="open the Gradio studio in the browser (offline, on 127.0.0.1)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", choices=("false", "true"), default="false", help="Gradio share link (online)")
    p.add_argument("--preset", default=None, help="preset selected at start (default: shapes-c2i)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    _add_loading_flags(p)
    p.set_defaults(func=_run_ui)


def _run_ui(args) -> None:
    from arstudio.ui import launch

    launch(
        host=args.host,
        port=args.port,
        share=args.share == "true",
        preset=args.preset,
        device=args.device,
        load_options=_loading_kwargs(args),
    )


def _add_tune_speculative(sub) -> None:
    p = sub.add_parser(
        "tune-speculative",
        help="measure draft shapes against plain AR; keep the fastest as the preset's speculative defaults",
    )
    p.add_argument("--preset", required=True, help="a preset with a drafter (see `arstudio presets`)")
    p.add_argument("--depths", type=int, nargs="+", default=[2, 3, 4, 6], help="draft depths (draft_tokens)")
    p.add_argument("--widths", type=int, nargs="+", default=[1, 2, 3], help="draft widths (1: a chain)")
    p.add_argument(
        "--deltas", type=float, nargs="+", default=[0.5], help="LANTERN budgets besides the default"
    )
    p.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per setting (default 3)")
    p.add_argument(
        "--out", default=None, help="folder for speculative_defaults.json (default: the preset's weights)"
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_run_tune_speculative)


def _run_tune_speculative(args) -> None:
    import torch

    from arstudio import load_pipeline
    from arstudio.evaluation.speculative_tuning import tune_speculative

    torch.set_num_threads(1)  # what the decode benchmarks measure with: comparable, and fair to neighbours
    pipe = load_pipeline(args.preset, device=args.device)
    done = tune_speculative(pipe, args.depths, args.widths, args.deltas, args.batch, args.repeats, args.out)
    for row in done["measured"]["curve"]:
        print(f"{row['name']:32s} {row['ms_per_image']:9.1f} ms/image  x{row['speedup']:.2f}")
    print(f"best: {done['best']}; written to {done['path']}")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like the rest (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def add_late_arguments(self) -> None:
        """Add the flags that need heavy imports (``late_arguments``, e.g. the strategy registry's knobs).
        Done when this (sub)command is parsed, so ``arstudio --help`` and building the parser stay torch-free."""
        for add in self.__dict__.pop("late_arguments", ()):
            add(self)

    def parse_known_args(self, args=None, namespace=None):
        self.add_late_arguments()
        return super().parse_known_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="arstudio", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_presets(sub)
    _add_render(sub)
    _add_ui(sub)
    _add_tune_speculative(sub)
    train = sub.add_parser("train", help="train tokenizers, generators and the FD-shapes classifier")
    train_sub = train.add_subparsers(dest="what", required=True)
    _add_train_tokenizer(train_sub)
    _add_train_kl_tokenizer(train_sub)
    _add_train_bridge_tokenizer(train_sub)
    _add_train_generator(train_sub)
    _add_train_bridge_head(train_sub)
    _add_train_classifier(train_sub)
    _add_train_drafter(train_sub)
    _add_train_distill(train_sub)
    _add_train_soup(train_sub)
    _add_train_video_generator(train_sub)
    _add_train_causal_video_tokenizer(train_sub)
    return parser


def check_finite_numbers(args) -> None:
    """Every float flag of every subcommand is a finite number: argparse's float() takes "nan" and "inf",
    which pass every range check (nan compares False) and then poison a run."""
    for name, value in vars(args).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{_flag(name)}={item} is not allowed: use a finite number")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_finite_numbers(args)
        args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as err:
        # KeyError's str() quotes its message; the message itself is what the user should read.
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"arstudio: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

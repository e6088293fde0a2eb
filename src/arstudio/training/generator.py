"""Train an AR generator (class- or text-conditioned) on tokens of procedural shapes.

1. Render ``num_images`` shapes (class set for class conditioning, caption set for text) and encode them
   once with the frozen tokenizer; captions go through the frozen text encoder once too. The table is
   saved beside the checkpoint, so a resumed run skips this.
2. Teacher-forced cross-entropy on (B, N) tokens with condition dropout (the null condition teaches CFG).
   Continuous generators (KL latents (B, N, d) or bridge level ids) train their head's loss instead
   (diffusion / flow MSE, per-dimension cross-entropy), on the same backbone and the same batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from arstudio.data.shapes import class_batch, make_text_item
from arstudio.generators.continuous import ContinuousGeneratorConfig, ContinuousImageGenerator
from arstudio.generators.image import GeneratorConfig, ImageGenerator
from arstudio.images import images_to_tensor
from arstudio.io import WEIGHTS_NAME, atomic_write_bytes, load_safetensors, load_weights_into
from arstudio.tokenizers.vq import VQTokenizer
from arstudio.training.batches import ConditionedBatches
from arstudio.training.common import (
    autocast,
    checkpoint_due,
    cosine_lr,
    generator_optimizer,
    optimizer_step,
    save_checkpoint,
    seeded,
    set_lr,
    start_training,
)

TOKENS_FILE = "train_tokens.safetensors"
WARM_START_NEW_KEYS = ("cls_embedding.position_embedding",)  # added after shapes-t2i v1 was trained


def _shapes_chunk(condition: str, seed: int, start: int, count: int, resolution: int, text_encoder):
    """Images (count, H, W, 3) and their condition: labels (count,) or text states (count, L, D) in fp16."""
    if condition == "class":
        images, labels, _ = class_batch(seed, count, resolution, start=start)
        return images, torch.from_numpy(labels)
    items = [make_text_item(seed, start + i, resolution) for i in range(count)]
    states = text_encoder([caption for _, caption, _ in items])
    return np.stack([image for image, _, _ in items]), states.to(torch.float16)


@torch.no_grad()
def tokenize_shapes(
    tokenizer: VQTokenizer,
    num_images: int,
    seed: int,
    condition: str = "class",
    text_encoder=None,
    chunk: int = 256,
):
    """(tokens (num_images, N) int64 or (num_images, N, d) vectors, conditions) of the seeded class or
    caption set."""
    resolution = tokenizer.config.resolution
    all_tokens, all_conds = [], []
    for start in tqdm(range(0, num_images, chunk), desc="tokenizing"):
        count = min(chunk, num_images - start)
        images, cond = _shapes_chunk(condition, seed, start, count, resolution, text_encoder)
        all_tokens.append(tokenizer.encode(images_to_tensor(images)).flatten(1, 2))  # grid -> raster order
        all_conds.append(cond)
    return torch.cat(all_tokens), torch.cat(all_conds)


def load_or_make_tokens(out_dir: Path, tokenizer, num_images: int, seed: int, condition: str, text_encoder):
    """The tokenized training set, cached in ``out_dir`` (a resumed run reuses it)."""
    from safetensors.torch import save

    path = out_dir / TOKENS_FILE
    if path.is_file():
        table = load_safetensors(path)
        if table["tokens"].shape[0] == num_images:
            tokens = table["tokens"]
            return (tokens if tokens.is_floating_point() else tokens.long()), table["cond"]
    tokens, cond = tokenize_shapes(tokenizer, num_images, seed, condition, text_encoder)
    stored = tokens if tokens.is_floating_point() else tokens.to(torch.int16)
    atomic_write_bytes(path, save({"tokens": stored.contiguous(), "cond": cond.contiguous()}))
    return tokens, cond


def _load_tokenizer(tokenizer_dir, config):
    """The tokenizer a generator config trains on, checked against it."""
    if isinstance(config, ContinuousGeneratorConfig):
        from arstudio.tokenizers.bridge import BridgeTokenizer
        from arstudio.tokenizers.kl import KLTokenizer

        bridge = config.head == "bridge"
        tokenizer = (BridgeTokenizer if bridge else KLTokenizer).from_pretrained(tokenizer_dir)
        if tokenizer.token_dim != config.token_dim:
            raise ValueError(
                f"tokenizer emits {tokenizer.token_dim}-dim tokens but token_dim={config.token_dim}"
            )
        if bridge and tokenizer.config.levels != config.levels:
            raise ValueError(f"tokenizer has {tokenizer.config.levels} levels but levels={config.levels}")
    else:
        tokenizer = VQTokenizer.from_pretrained(tokenizer_dir)
        if tokenizer.codebook_size != config.vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.codebook_size} codes but vocab_size={config.vocab_size}"
            )
    if tokenizer.grid_size != config.backbone.grid_size:
        raise ValueError(f"tokenizer grid {tokenizer.grid_size} != backbone grid {config.backbone.grid_size}")
    return tokenizer


def warm_start_bridge_trunk(
    model: ContinuousImageGenerator, state: dict[str, torch.Tensor], quantizer, source: str
) -> None:
    """Load the trunk (backbone, condition embedding, token input) of a generator trained on the bridge's
    unquantised latents (a diffusion/flow head run) into a bridge generator; the bridge head keeps its init.

    TokenBridge quantises a trained autoencoder's latents without retraining it, so the same images give the
    same latents; a backbone that already models them only needs a new head. The source embedded scaled
    latents x as W x + b; the bridge embeds standardised values s = (x - mean) / std, so the input layer
    becomes (W * std) s + (b + W mean): the same function of the same latent.
    """
    own = model.state_dict()
    trunk_keys = [k for k in own if not k.startswith("head.") and k != "bin_values"]
    missing = [k for k in trunk_keys if k not in state or state[k].shape != own[k].shape]
    if missing:
        raise ValueError(
            f"{source} does not hold this bridge generator's trunk; missing or misshapen: {missing[:6]}"
        )
    trunk = {k: state[k].to(own[k].dtype) for k in trunk_keys}
    weight, bias = trunk["tok_embeddings.weight"], trunk["tok_embeddings.bias"]  # (dim, d), (dim,)
    trunk["tok_embeddings.bias"] = bias + weight @ quantizer.mean
    trunk["tok_embeddings.weight"] = weight * quantizer.std
    model.load_state_dict(trunk, strict=False)


def train_generator(
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    config: GeneratorConfig | ContinuousGeneratorConfig,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 1e-3,
    num_images: int = 60_000,
    seed: int = 0,
    save_every: int = 250,
    text_encoder=None,
    init_from: str | Path | None = None,
    warm_lr_scale: float = 1.0,
    mixed_precision: str = "no",
) -> ImageGenerator | ContinuousImageGenerator:
    """Train ``config`` on tokens from ``tokenizer_dir``; text generators need the frozen ``text_encoder``.

    ``init_from``: warm start from another run's weights (same config; parameters added since, such as the
    text prefix's position embedding or a new control encoder, keep their init). ``warm_lr_scale`` scales
    the learning rate of the warm-started parameters (new ones train at ``lr``): a fine-tune that adds a
    control encoder moves the trained backbone slowly and the new encoder fast. A bridge generator may
    instead start from a diffusion/flow generator on the same KL latents (``warm_start_bridge_trunk``; its
    head is new). A config with a control encoder trains with control maps of the same images
    (training/control.py). ``mixed_precision="bf16"`` autocasts the forward (``training.common.autocast``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _load_tokenizer(tokenizer_dir, config)
    if config.condition == "text" and text_encoder is None:
        raise ValueError("a text-conditioned generator needs a text_encoder to encode the captions")
    tokens, conds = load_or_make_tokens(out_dir, tokenizer, num_images, seed, config.condition, text_encoder)

    continuous = isinstance(config, ContinuousGeneratorConfig)
    model = seeded(lambda: (ContinuousImageGenerator if continuous else ImageGenerator)(config), seed)
    bridge = continuous and config.head == "bridge"
    if bridge:
        model.bin_values.copy_(tokenizer.quantizer.values)  # the generator embeds ids as de-quantised values
    if warm_lr_scale != 1.0 and init_from is None:
        raise ValueError(f"warm_lr_scale={warm_lr_scale} applies to a warm start; pass init_from too")
    new_keys = []  # parameters the warm start did not load: they train at the full rate
    if init_from is not None:
        source = load_safetensors(Path(init_from) / WEIGHTS_NAME)
        if bridge and "bin_values" not in source:  # a diffusion/flow run on the same latents
            warm_start_bridge_trunk(model, source, tokenizer.quantizer, str(init_from))
            new_keys = [k for k in model.state_dict() if k.startswith("head.")]
        else:
            may_be_new = [k for k in model.state_dict() if k.startswith("control_encoder.")]
            load_weights_into(model, init_from, allow_missing=tuple(may_be_new) + WARM_START_NEW_KEYS)
            new_keys = [k for k in model.state_dict() if k not in source]
    optimizer = generator_optimizer(model, lr, new_keys, warm_lr_scale)
    start, accelerator, model, optimizer, unwrapped = start_training(model, optimizer, out_dir)
    precision = autocast(accelerator.device, mixed_precision)  # checked once, before any step runs
    if config.control is None:
        batches = ConditionedBatches(tokens, conds, batch_size, seed, unwrapped.cls_embedding)
    else:
        from arstudio.training.control import ControlledBatches, load_or_make_controls

        controls = load_or_make_controls(
            out_dir, config.condition, seed, num_images, tokenizer.config.resolution, config.control.types
        )
        batches = ControlledBatches(
            tokens, conds, batch_size, seed, unwrapped.cls_embedding, controls, config.control.dropout_prob
        )
    batches.skip(start)
    # diffusion/flow training noise (not replayed on resume)
    head_noise = torch.Generator().manual_seed(seed + 2)
    bar = tqdm(range(start, steps), desc="generator", initial=start, total=steps)
    for step in bar:
        set_lr(optimizer, cosine_lr(step, steps, lr, warmup=100))
        batch_tokens, batch_cond, *rest = batches.next(accelerator.device)
        control = None
        if rest:  # control tokens, through the (wrapped) model's encoder so gradients reach it
            control = unwrapped.encode_control(rest[0].maps, rest[0].kinds, keep=rest[0].keep)
        with precision:
            if continuous:
                loss = unwrapped.loss(batch_tokens, batch_cond, generator=head_noise, control=control)
            else:
                logits = model(batch_tokens, batch_cond, control)
                loss = F.cross_entropy(logits.float().flatten(0, 1), batch_tokens.reshape(-1))
        optimizer_step(accelerator, model, optimizer, loss, 1.0)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if checkpoint_due(step, steps, save_every):
            save_checkpoint(unwrapped, optimizer, step + 1, out_dir)
    return unwrapped.eval()

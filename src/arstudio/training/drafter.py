"""Train an EAGLE-style drafter on a frozen target's own teacher-forced hidden states (LANTERN's recipe).

Per batch: shapes images of the target's training distribution are tokenized, the target reads them, and
the drafter learns to predict hidden state f_{j+1} from (e_{j+1}, f_j):
    loss = SmoothL1(f^, f) + ce_weight * CE(softmax(head(f)), log_softmax(head(f^)))
Uniform noise (std 0.2) on the input features makes it robust to reading its own predictions when it
drafts several tokens in a row. Two options (``DrafterObjective``) aim the drafter at what decoding judges:

- ``guidance_scale`` (LANTERN's ``cfg_loss``): every sequence is read under its condition *and* the null
  condition, as CFG decoding runs it, and the cross-entropy compares the *guided* distributions
  softmax((l_u + s (l_c - l_u)) / T) of target and drafter, so the drafter is fitted to what a draft is
  accepted against. Without it, conditions are dropped to null at the target's rate and each stream is
  fitted on its own (the shipped drafters until issue 23).
- ``rollout`` = k > 1 (HASS-style training-time test): the drafter also predicts k - 1 further steps from
  its *own* predicted features, exactly as it drafts: at draft step s, the query at position i sees true
  features up to position i - s and its own step-1..s predictions after that (``rollout_mask``). The
  fed-back features are detached (HASS backpropagates through them; detaching halves the cost here).

``draft_acceptance`` reports, per draft position, the teacher-forced acceptance rate of exact speculative
sampling, sum_x min(p(x), q(x)), of target p and drafter q after the preset's guidance and temperature.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from arstudio.decoding.guidance import with_unconditional
from arstudio.decoding.logits import classifier_free_guidance
from arstudio.generators.drafter import Drafter, DrafterConfig
from arstudio.io import atomic_write_bytes, load_safetensors, load_weights_into
from arstudio.training.batches import ConditionedBatches
from arstudio.training.common import (
    checkpoint_due,
    cosine_lr,
    optimizer_step,
    save_checkpoint,
    seeded,
    set_lr,
    start_training,
)
from arstudio.training.generator import load_or_make_tokens, tokenize_shapes

EVAL_TOKENS_FILE = "eval_tokens.safetensors"
EVAL_SEED = 12345  # held out: training sets use seed 0 (items of other seeds are disjoint draws)
ACCEPTANCE_FILE = "acceptance.json"


@dataclass(frozen=True)
class DrafterObjective:
    """What the drafter is fitted to. Defaults: LANTERN's recipe (the conditional stream, teacher forced)."""

    guidance_scale: float | None = None  # a number: CFG-mixed targets (both streams read every sequence)
    temperature: float = 1.0  # with guidance_scale: the temperature the guided distributions are taken at
    rollout: int = 1  # draft steps trained per position; > 1 feeds the drafter's own predictions back
    ce_weight: float = 0.1  # LANTERN's weight of the cross-entropy beside the feature regression

    def __post_init__(self):
        if self.guidance_scale is not None and not (
            math.isfinite(self.guidance_scale) and self.guidance_scale >= 0
        ):
            raise ValueError(f"guidance_scale={self.guidance_scale!r}: use a finite number >= 0, or None")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature={self.temperature!r}: use a finite number > 0")
        if not isinstance(self.rollout, int) or not 1 <= self.rollout <= 8:
            raise ValueError(f"rollout={self.rollout!r}: use an integer 1..8 (draft steps per position)")
        if not (math.isfinite(self.ce_weight) and self.ce_weight >= 0):
            raise ValueError(f"ce_weight={self.ce_weight!r}: use a finite number >= 0")

    @property
    def guided(self) -> bool:
        return self.guidance_scale is not None


def rollout_mask(length: int, steps: int, device=None) -> torch.Tensor:
    """Visibility (steps * L, steps * L) over ``steps`` copies of an L-position sequence, copy s holding the
    inputs of draft step s: query (s, i) sees key (t, p) iff p <= i and t = max(0, p - (i - s)). That is what
    drafting from position i - s sees: true features up to i - s, then its own drafts of steps 1..s."""
    pos = torch.arange(length, device=device)
    step = torch.arange(steps, device=device)
    # (s, i, t, p): the step whose copy of key position p the query (s, i) reads.
    wanted = (pos[None, None, None, :] - pos[None, :, None, None] + step[:, None, None, None]).clamp(min=0)
    visible = (pos[None, None, None, :] <= pos[None, :, None, None]) & (wanted == step[None, None, :, None])
    return visible.reshape(steps * length, steps * length)


def rollout_features(
    drafter: Drafter, next_embeddings: torch.Tensor, features: torch.Tensor, steps: int
) -> list[torch.Tensor]:
    """Predicted features of draft steps 1..``steps``, each (B, L, dim): row i of step s predicts f_{i+1}
    after drafting s - 1 tokens from position i - s + 1 on the drafter's own features.

    next_embeddings, features (B, L, dim): position i holds (e_{i+1}, f_i). Step s + 1 reads at position i
    the step-s prediction made at i - 1 (position 0 keeps its true feature: nothing predicts it)."""
    length = features.shape[1]
    rope = drafter.backbone.rope[:length]
    inputs = [features]
    predictions = []
    for s in range(1, steps + 1):
        mask = None if s == 1 else rollout_mask(length, s, features.device)  # step 1: plain causal
        out = drafter(
            next_embeddings.repeat(1, s, 1), torch.cat(inputs, dim=1), mask=mask, rope=rope.repeat(s, 1, 1)
        )
        predicted = out[:, -length:]
        predictions.append(predicted)
        if s < steps:
            inputs.append(torch.cat([features[:, :1], predicted[:, :-1].detach()], dim=1))
    return predictions


def _target_states(target, tokens: torch.Tensor, cond_rows: torch.Tensor):
    """(drafter inputs e_{j+1} (B, P+N-1, dim), target hidden (B, P+N, dim)), teacher forced, no grad."""
    with torch.no_grad():
        inputs = torch.cat([target.cls_embedding(cond_rows), target.tok_embeddings(tokens)], dim=1)
        return inputs[:, 1:], target.backbone(inputs)  # f_j predicts the token at position j + 1


def _judged_logits(target, hidden: torch.Tensor, objective: DrafterObjective, batch: int) -> torch.Tensor:
    """Hidden states -> the logits a draft is judged by, (B, ..., V): guided from rows [cond; uncond]
    (2B, ..., dim) when the objective is, then divided by its temperature."""
    logits = target.head(hidden).float()
    if objective.guided:
        logits = classifier_free_guidance(logits[:batch], logits[batch:], objective.guidance_scale)
    return logits / objective.temperature


def _draft_rows(target, step: int) -> slice:
    """Drafter rows judged at draft step ``step`` (1-based): they predict image tokens 1..N-1 (row P-1 + n
    predicts token n + 1) from a start at or after row P - 1, where drafting begins."""
    return slice(target.prefix_len - 1 + step - 1, target.prefix_len + target.seq_len - 2)


def drafter_loss(
    drafter: Drafter,
    target,
    tokens: torch.Tensor,
    cond: torch.Tensor,
    noise_std: float,
    generator: torch.Generator | None = None,
    objective: DrafterObjective = DrafterObjective(),
) -> torch.Tensor:
    """Feature regression + ce_weight x soft cross-entropy, averaged over the ``objective.rollout`` draft
    steps, on the rows that predict image tokens 1..N-1."""
    batch = tokens.shape[0]
    if objective.guided:  # both streams read the same tokens, as under CFG decoding
        cond, tokens = with_unconditional(target, cond, None), tokens.repeat(2, 1)
    next_embeddings, hidden = _target_states(target, tokens, cond)
    features = hidden[:, :-1]
    if noise_std > 0:
        half_width = noise_std * math.sqrt(3.0)  # a uniform on [-a, a] has std a / sqrt(3)
        noise = torch.rand(features.shape, generator=generator, device=features.device) * 2 - 1
        features = features + half_width * noise
    predictions = rollout_features(drafter, next_embeddings, features, objective.rollout)
    total = 0.0
    for step, predicted in enumerate(predictions, start=1):
        rows = _draft_rows(target, step)
        predicted, wanted = predicted[:, rows], hidden[:, 1:][:, rows]
        regression = F.smooth_l1_loss(predicted, wanted)
        target_probs = _judged_logits(target, wanted, objective, batch).softmax(-1)
        log_q = _judged_logits(target, predicted, objective, batch).log_softmax(-1)
        cross_entropy = -(target_probs * log_q).sum(-1).mean()
        total = total + regression + objective.ce_weight * cross_entropy
    return total / len(predictions)


@torch.no_grad()
def draft_acceptance(
    drafter: Drafter,
    target,
    tokens: torch.Tensor,
    conds: torch.Tensor,
    depth: int,
    guidance_scale: float | None,
    temperature: float = 1.0,
    chunk: int = 32,
) -> list[float]:
    """Teacher-forced acceptance per draft position 1..``depth``: the mean over held-out sequences and
    positions of sum_x min(p(x), q(x)), target p and drafter q (fed its own features for the later
    positions) after CFG at ``guidance_scale`` (None: the conditional stream alone) and ``temperature``.
    It is the chance that exact speculative sampling accepts the draft at that position, given the ones
    before it were accepted."""
    drafter.check_target(target)
    objective = DrafterObjective(guidance_scale=guidance_scale, temperature=temperature)
    sums, count = torch.zeros(depth, dtype=torch.float64), 0
    for start in range(0, tokens.shape[0], chunk):
        batch_tokens, cond = tokens[start : start + chunk], conds[start : start + chunk]
        batch = batch_tokens.shape[0]
        cond = cond.float() if cond.is_floating_point() else cond
        if objective.guided:
            cond, batch_tokens = with_unconditional(target, cond, None), batch_tokens.repeat(2, 1)
        next_embeddings, hidden = _target_states(target, batch_tokens, cond)
        predictions = rollout_features(drafter, next_embeddings, hidden[:, :-1], depth)
        for step, predicted in enumerate(predictions):
            rows = _draft_rows(target, step + 1)
            p = _judged_logits(target, hidden[:, 1:][:, rows], objective, batch).softmax(-1)
            q = _judged_logits(target, predicted[:, rows], objective, batch).softmax(-1)
            sums[step] += torch.minimum(p, q).sum(-1).mean(-1).sum().double()
        count += batch
    return [round(float(s) / count, 4) for s in sums]


def expected_accepted(acceptance: list[float]) -> float:
    """Drafts accepted per round of len(acceptance) drafts, if each position's rate held independently."""
    return sum(math.prod(acceptance[: n + 1]) for n in range(len(acceptance)))


def load_or_make_eval_tokens(out_dir: Path, tokenizer, count: int, condition: str, text_encoder):
    """Held-out tokens (seed ``EVAL_SEED``) for the acceptance report, cached in ``out_dir``."""
    from safetensors.torch import save

    path = out_dir / EVAL_TOKENS_FILE
    if path.is_file():
        table = load_safetensors(path)
        if table["tokens"].shape[0] == count:
            return table["tokens"].long(), table["cond"]
    tokens, cond = tokenize_shapes(tokenizer, count, EVAL_SEED, condition, text_encoder)
    atomic_write_bytes(path, save({"tokens": tokens.to(torch.int16).contiguous(), "cond": cond.contiguous()}))
    return tokens, cond


def report_acceptance(drafter: Drafter, pipe, out_dir: Path, depth: int, eval_images: int) -> dict:
    """Acceptance per draft position under the preset's guidance and temperature (and without guidance),
    printed and written to ``out_dir/acceptance.json``."""
    defaults = pipe.preset.defaults
    guidance, temperature = defaults.get("guidance_scale", 1.0), defaults.get("temperature", 1.0)
    tokens, conds = load_or_make_eval_tokens(
        out_dir, pipe.tokenizer, eval_images, pipe.generator.config.condition, pipe.text_encoder
    )
    report = {
        "preset": pipe.preset.name,
        "eval_images": int(tokens.shape[0]),
        "guidance_scale": guidance,
        "temperature": temperature,
    }
    for name, scale in (("guided", guidance), ("conditional", None)):
        rates = draft_acceptance(drafter, pipe.generator, tokens, conds, depth, scale, temperature)
        report[name] = {"per_position": rates, "expected_accepted": round(expected_accepted(rates), 3)}
    atomic_write_bytes(out_dir / ACCEPTANCE_FILE, json.dumps(report, indent=2).encode())
    for name in ("guided", "conditional"):
        rates = ", ".join(f"{r:.3f}" for r in report[name]["per_position"])
        print(
            f"acceptance per draft position ({name}): {rates}; "
            f"expected accepted of {depth}: {report[name]['expected_accepted']:.2f}"
        )
    return report


class _KeepConditions:
    """Guided training reads every sequence under its condition and the null one, so no condition is
    dropped (stands in for the model's conditioning in ``ConditionedBatches``)."""

    @staticmethod
    def drop(cond: torch.Tensor, generator=None) -> torch.Tensor:
        return cond


def train_drafter(
    out_dir: str | Path,
    preset: str,
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 1e-3,
    num_images: int = 20_000,
    seed: int = 0,
    noise_std: float = 0.2,
    save_every: int = 250,
    objective: DrafterObjective = DrafterObjective(),
    report_depth: int = 4,
    eval_images: int = 256,
    init_from: str | Path | None = None,
) -> Drafter:
    """Train a one-block drafter for ``preset``'s generator (loaded with its shipped weights, frozen), then
    report its acceptance per draft position on held-out images (``report_depth`` 0: no report).
    ``init_from``: start from another drafter of the same target (e.g. the shipped one, fine-tuned to a new
    ``objective``); it is refused when it was trained for another target."""
    from arstudio.pipelines.loading import load_pipeline

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(preset, device="cpu", decoding_models=False)  # the shipped drafter may be stale
    target = pipe.generator.requires_grad_(False)
    condition = target.config.condition
    tokens, conds = load_or_make_tokens(
        out_dir, pipe.tokenizer, num_images, seed, condition, pipe.text_encoder
    )

    drafter = seeded(lambda: Drafter(DrafterConfig.for_target(target)), seed)
    if init_from is not None:
        Drafter.from_pretrained(init_from).check_target(target)
        load_weights_into(drafter, init_from)
    optimizer = torch.optim.AdamW(drafter.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    start, accelerator, drafter, optimizer, unwrapped = start_training(drafter, optimizer, out_dir)
    target.to(accelerator.device)
    conditioning = _KeepConditions() if objective.guided else target.cls_embedding
    batches = ConditionedBatches(tokens, conds, batch_size, seed, conditioning)
    batches.skip(start)
    noise_gen = torch.Generator().manual_seed(seed + 2)
    bar = tqdm(range(start, steps), desc="drafter", initial=start, total=steps)
    for step in bar:
        set_lr(optimizer, cosine_lr(step, steps, lr, warmup=50))
        batch_tokens, cond = batches.next(accelerator.device)
        loss = drafter_loss(drafter, target, batch_tokens, cond, noise_std, noise_gen, objective)
        optimizer_step(accelerator, drafter, optimizer, loss, 0.5)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if checkpoint_due(step, steps, save_every):
            save_checkpoint(unwrapped, optimizer, step + 1, out_dir)
    unwrapped.eval()
    if report_depth:
        report_acceptance(unwrapped, pipe, out_dir, report_depth, eval_images)
    return unwrapped

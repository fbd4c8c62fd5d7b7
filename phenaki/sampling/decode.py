"""The MaskGIT decode loop (Chang et al. 2022) with classifier-free guidance.

Start from all-mask (after an optional fixed prime), and at each of `steps` steps:
predict every masked token, sample one candidate per position, score it, and keep
the most confident ones so that the number still masked follows the schedule
gamma((step + 1) / steps); the last step reveals everything.

Guidance convention: logits = uncond + scale * (cond - uncond). scale 1 is the plain
conditional model, 0 the unconditional one, > 1 pushes towards the text. With
`guidance_ramp` the scale rises linearly from 1 at the first step to `guidance` at
the last (early steps lay out a diverse composition, later ones follow the text).
Conditional and unconditional rows run as ONE forward of batch 2B, and the text
context (cross-attention K/V) is prepared once per window (`condition`).

Confidence of a sampled token = its log-probability (after guidance, temperature
and filtering) + Gumbel noise * choice_temperature * (1 - (step + 1) / steps), annealed
as in the official MaskGIT, so early choices are diverse and late ones greedy
(`choice_temperature` defaults to `temperature`; lower keeps early reveals to the
tokens the model is sure of). With `use_critic`, the token critic's log-probability that
the token is right replaces the generator's log-probability; with `critic_revise` as well,
every token outside the prime competes for a place at every step, so the critic can send
back a token revealed earlier (Token-Critic's own sampler) instead of only ranking the new
ones. With `temporal_bias` b > 0 a token in token-frame t loses b * t of confidence, so
earlier token-frames are revealed first (b of 100 or more gives strict temporal order):
each tubelet is then drawn knowing where the ones before it put things. Prime tokens are
never re-masked, revealed ones only with `critic_revise`.

This module draws once per row; choosing among several draws (candidates, polish,
relevance, the matcher) is `phenaki.sampling.search`. All randomness comes from the
`generator` argument: a given seed gives the same tokens. Nothing here holds state; the
model is put in eval mode for the call and restored afterwards.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.maskgit import MaskGit, TextContext
from ..models.masking import Schedule, mask_schedule, uniform
from ..utils.torch_utils import eval_mode
from .settings import SamplingSettings, SettingsError

log = logging.getLogger(__name__)

__all__ = ["Conditioning", "Text", "check_prime", "condition", "filter_logits", "guidance_scales", "gumbel",
           "masked_counts", "sample"]

Progress = Callable[[int, int, Tensor], object]  # (step, steps, ids after the step [B, T', H', W'])
Text = tuple[Tensor, "Tensor | None"]  # text embeddings [B, L, D] and their mask [B, L] (None: no padding)


@dataclass
class Conditioning:
    """The text as one window's decode loop uses it, prepared once: its `batch` conditional rows,
    then (when `guided`) as many null rows, in one context."""

    context: TextContext
    batch: int
    guided: bool
    has_text: bool

    def conditional(self) -> TextContext:
        """The conditional rows alone: what the critic and the choice among draws judge against."""
        context = self.context
        if context.batch == self.batch:
            return context
        b = self.batch
        return TextContext(tokens=context.tokens[:b], mask=context.mask[:b],
                           kv=tuple((k[:b], v[:b]) for k, v in context.kv),
                           attn_mask=None if context.attn_mask is None else context.attn_mask[:b])


def condition(model: MaskGit, text: Text | None, settings: SamplingSettings, batch: int | None = None,
              negative: Text | None = None) -> Conditioning:
    """Prepare the text for a decode loop with these settings (`batch` needed only without text).

    Plain conditional (every step's scale 1) or plain unconditional (every scale 0) sampling
    needs only the B conditional rows; anything else runs B conditional + B unconditional rows.
    The unconditional rows read the null text, or `negative` (a negative prompt per row) when
    given, so guidance pushes away from it.
    """
    if text is None:
        if batch is None:
            raise ValueError("condition needs text or a batch size")
        return Conditioning(model.null_context(batch), batch, guided=False, has_text=False)
    text_emb, text_mask = text
    rows = text_emb.shape[0]
    if batch is not None and batch != rows:
        raise ValueError(f"text batch {rows} does not match batch {batch}")
    if not model.conditional:
        return Conditioning(model.null_context(rows), rows, guided=False, has_text=True)
    if text_mask is None:
        text_mask = torch.ones(text_emb.shape[:2], dtype=torch.bool, device=text_emb.device)
    scales = set(guidance_scales(settings.guidance, settings.steps, settings.guidance_ramp))
    guided = not (scales <= {1.0} or scales <= {0.0})
    if negative is not None:
        negative = _rows(negative, rows)
    if guided and negative is not None:
        context = model.prepare_context(*_stack(text_emb, text_mask, *negative))
    elif guided:
        drop = torch.arange(2 * rows, device=text_emb.device) >= rows
        context = model.prepare_context(torch.cat([text_emb, text_emb]), torch.cat([text_mask, text_mask]),
                                        drop_text=drop)
    elif float(settings.guidance) == 0.0 and negative is not None:
        context = model.prepare_context(*negative)  # plain unconditional: the negative text alone
    else:
        drop = torch.full((rows,), float(settings.guidance) == 0.0, dtype=torch.bool, device=text_emb.device)
        context = model.prepare_context(text_emb, text_mask, drop_text=drop)
    return Conditioning(context, rows, guided=guided, has_text=True)


def _rows(text: Text, rows: int) -> tuple[Tensor, Tensor]:
    """A text (embeddings, mask) checked to have `rows` rows, with its mask filled in."""
    emb, mask = text
    if emb.shape[0] != rows:
        raise ValueError(f"negative text batch {emb.shape[0]} does not match text batch {rows}")
    if mask is None:
        mask = torch.ones(emb.shape[:2], dtype=torch.bool, device=emb.device)
    return emb, mask


def _stack(a_emb: Tensor, a_mask: Tensor, b_emb: Tensor, b_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Two texts' rows one after the other, padded (masked) to the longer of the two."""
    length = max(a_emb.shape[1], b_emb.shape[1])

    def pad(emb: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        extra = length - emb.shape[1]
        return F.pad(emb, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)

    (a_emb, a_mask), (b_emb, b_mask) = pad(a_emb, a_mask), pad(b_emb.to(a_emb), b_mask.to(a_mask.device))
    return torch.cat([a_emb, b_emb]), torch.cat([a_mask, b_mask])


# ----------------------------------------------------------------------------- helpers


def masked_counts(num_tokens: int, steps: int, schedule: str | Schedule = "cosine") -> list[int]:
    """Tokens still masked after each step: floor(gamma((s+1)/steps) * N), >= 1 fewer each step, 0 at the end."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    gamma = mask_schedule(schedule)
    ratios = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    targets = torch.floor(gamma(ratios).clamp(0.0, 1.0) * num_tokens).long().tolist()
    counts, remaining = [], num_tokens
    for target in targets[:-1]:
        remaining = max(0, min(remaining - 1, target))
        counts.append(remaining)
    counts.append(0)
    return counts


def guidance_scales(guidance: float, steps: int, ramp: bool) -> list[float]:
    """Per-step guidance scale: constant, or linear from 1 (plain conditional) to `guidance`."""
    if not ramp or steps == 1:
        return [float(guidance)] * steps
    return [1.0 + (guidance - 1.0) * s / (steps - 1) for s in range(steps)]


def gumbel(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Standard Gumbel noise, drawn through `generator`."""
    u = uniform(shape, generator, device).clamp_(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set logits outside the top-k / nucleus (top-p) to -inf; the best token always survives."""
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(dim=-1)
            drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p  # mass before this token
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
    return logits


def check_prime(model: MaskGit, prime: Tensor | None, batch: int, frames: int) -> int:
    """Validate the prime ids; return the number of primed token-frames."""
    if prime is None:
        return 0
    model.check_ids(prime, allow_mask=False)
    if prime.shape[0] != batch:
        raise ValueError(f"prime batch {prime.shape[0]} does not match text batch {batch}")
    if prime.shape[1] > frames:
        raise ValueError(f"prime has {prime.shape[1]} token-frames, more than num_token_frames={frames}")
    return prime.shape[1]


def _guided_logits(
    model: MaskGit, ids: Tensor, context: TextContext, guided: bool, scale: float, only: Tensor
) -> Tensor:
    """Float logits [M, V] of the M positions in `only`, guidance applied (one forward of batch 2B
    when guided). Revealed and prime positions are never re-sampled, so their logits (and the
    softmax and noise over the codebook) are not computed."""
    if not guided:
        return model(ids, context=context, only=only).float()
    logits = model(torch.cat([ids, ids]), context=context, only=torch.cat([only, only])).float()
    cond, uncond = logits.chunk(2)  # row-major selection: every conditional row comes first
    return uncond + scale * (cond - uncond)


def _pick(
    logits: Tensor, temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Sample one token per row of logits [..., V]; return (tokens, their log-probs)."""
    if temperature > 0:
        logits = logits / temperature
    logits = filter_logits(logits, top_k, top_p)
    log_probs = logits.log_softmax(dim=-1)
    if temperature > 0:
        tokens = (log_probs + gumbel(tuple(log_probs.shape), generator, log_probs.device)).argmax(dim=-1)
    else:
        tokens = log_probs.argmax(dim=-1)
    return tokens, log_probs.gather(-1, tokens[..., None]).squeeze(-1)


# ----------------------------------------------------------------------------- sampler


@torch.no_grad()
def sample(
    model: MaskGit,
    cond: Conditioning,
    prime: Tensor | None,
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
    *,
    num_token_frames: int,
    progress: Progress | None = None,
) -> Tensor:
    """Draw token ids [B, num_token_frames, H', W'] for `cond`'s rows; `prime` fixes the first token-frames.

    Reads the decode settings (steps, guidance and its ramp, temperature, choice_temperature,
    schedule, top_k, top_p, temporal_bias, use_critic, critic_revise); the rest are the search's
    and the story loop's. `progress(step, steps, ids)` is called after each step with step = 1..steps
    and the ids as they stand (masked positions hold `model.mask_id`).
    """
    s = settings
    if s.use_critic and not model.has_critic:
        raise SettingsError("use_critic: the model has no token critic (config.critic is False)")
    if not 1 <= num_token_frames <= model.config.max_token_frames:
        raise ValueError(
            f"num_token_frames={num_token_frames} must be in 1..{model.config.max_token_frames} "
            f"(the model's max_token_frames)"
        )
    batch = cond.batch
    prime_frames = check_prime(model, prime, batch, num_token_frames)
    h, w = model.token_grid
    ids = torch.full((batch, num_token_frames * h * w), model.mask_id, dtype=torch.long, device=model.device)
    if prime is not None:
        ids[:, : prime_frames * h * w] = prime.to(model.device).reshape(batch, -1)
    num_free = (num_token_frames - prime_frames) * h * w
    if num_free == 0:
        return ids.view(batch, num_token_frames, h, w)

    scales = guidance_scales(s.guidance, s.steps, s.guidance_ramp)
    counts = masked_counts(num_free, s.steps, s.schedule)
    choice_temperature = s.temperature if s.choice_temperature is None else s.choice_temperature
    # confidence handicap of each position (token-frame index x bias), built once per call
    frame_penalty = None
    if s.temporal_bias > 0:
        frame_penalty = s.temporal_bias * (torch.arange(ids.shape[1], device=model.device) // (h * w)).float()
    # positions that may never be re-masked; None: whatever is revealed stays
    locked = None
    if s.critic_revise:
        locked = (torch.arange(ids.shape[1], device=model.device) < prime_frames * h * w).expand(batch, -1)
    with eval_mode(model):
        critic_ctx = cond.conditional() if s.use_critic else None
        if critic_ctx is not None:
            model.critic_kv(critic_ctx)  # computed once, cached on the context
        for step in range(s.steps):
            if step > 0 and counts[step - 1] == 0:
                log.debug("all tokens revealed after %d of %d steps", step, s.steps)
                break
            ids = _step(model, ids, cond, _StepPlan(step, s.steps, counts[step], scales[step], choice_temperature),
                        s, generator, critic_ctx, frame_penalty, locked)
            if progress is not None:
                progress(step + 1, s.steps, ids.view(batch, num_token_frames, h, w))
    return ids.view(batch, num_token_frames, h, w)


@dataclass(frozen=True)
class _StepPlan:
    """Where one step stands: its index, how many tokens stay masked after it, its guidance and noise."""

    step: int
    steps: int
    keep_masked: int
    scale: float
    choice_temperature: float


def _step(
    model: MaskGit,
    ids: Tensor,
    cond: Conditioning,
    plan: _StepPlan,
    settings: SamplingSettings,
    generator: torch.Generator | None,
    critic_ctx: TextContext | None,
    frame_penalty: Tensor | None,
    locked: Tensor | None,
) -> Tensor:
    """One decoding step on flat ids [B, N]: fill every masked position, re-mask the least sure.

    Only positions masked at the start of the step compete, unless `locked` [B, N] names
    the ones that may not (then every other position does).
    """
    b, n = ids.shape
    h, w = model.token_grid
    unknown = ids == model.mask_id
    logits = _guided_logits(model, ids.view(b, -1, h, w), cond.context, cond.guided, plan.scale,
                            unknown.view(b, -1, h, w))
    tokens, log_probs = _pick(logits, settings.temperature, settings.top_k, settings.top_p, generator)
    filled = ids.masked_scatter(unknown, tokens)
    if plan.keep_masked == 0:
        return filled
    if critic_ctx is not None:
        wrong = model.critic_logits(filled.view(b, -1, h, w), context=critic_ctx).view(b, n)
        confidence = F.logsigmoid(-wrong)  # log P(token is right)
    else:
        confidence = torch.zeros((b, n), dtype=log_probs.dtype, device=ids.device).masked_scatter(unknown, log_probs)
    noise_scale = plan.choice_temperature * (1.0 - (plan.step + 1) / plan.steps)
    if noise_scale > 0:
        confidence = confidence + noise_scale * gumbel((b, n), generator, ids.device)
    if frame_penalty is not None:
        confidence = confidence - frame_penalty.to(confidence.dtype)
    confidence = confidence.masked_fill(~unknown if locked is None else locked, math.inf)
    remask = confidence.topk(plan.keep_masked, dim=-1, largest=False).indices
    return filled.scatter(-1, remask, model.mask_id)

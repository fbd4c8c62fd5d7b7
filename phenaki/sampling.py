"""MaskGIT iterative decoding (Chang et al. 2022) with classifier-free guidance.

Start from all-mask (after an optional fixed prime), and at each of `steps` steps:
predict every masked token, sample one candidate per position, score it, and keep
the most confident ones so that the number still masked follows the schedule
gamma((step + 1) / steps); the last step reveals everything.

Guidance convention: logits = uncond + scale * (cond - uncond). scale 1 is the plain
conditional model, 0 the unconditional one, > 1 pushes towards the text. With
`guidance_ramp` the scale rises linearly from 1 at the first step to `guidance` at
the last (early steps lay out a diverse composition, later ones follow the text).
Conditional and unconditional rows run as ONE forward of batch 2B, and the text
context (cross-attention K/V) is prepared once per call.

Confidence of a sampled token = its log-probability (after guidance, temperature
and filtering) + Gumbel noise * choice_temperature * (1 - (step + 1) / steps), annealed
as in the official MaskGIT, so early choices are diverse and late ones greedy
(`choice_temperature` defaults to `temperature`; lower keeps early reveals to the
tokens the model is sure of). With
`use_critic`, the token critic's log-probability that the token is right replaces
the generator's log-probability; with `critic_revise` as well, every token outside the
prime competes for a place at every step, so the critic can send back a token revealed
earlier (Token-Critic's own sampler) instead of only ranking the new ones. With `temporal_bias` b > 0 a token in token-frame t
loses b * t of confidence, so earlier token-frames are revealed first (b of 100 or more
gives strict temporal order): each tubelet is then drawn knowing where the ones before it
put things. Prime tokens are never re-masked, revealed ones only with `critic_revise`.

With `candidates` K > 1, every row is drawn K times (one batch) and the draw the
transformer itself finds most likely is kept: its conditional pseudo-log-likelihood, the
sum over all tokens of log p(token | text, the others), with the tokens masked in
`RERANK_GROUPS` interleaved groups (one forward each). Each step of the sampler commits
to tokens one at a time; the score judges the whole window at once, so a draw whose
tokens disagree with each other ranks low. This is the reranking DALL-E did with CLIP,
done by the generator with no second model. Its known bias: a window of plain background
is very likely too, so an empty draw is not ruled out.

With `relevance_floor` r > 0 (and K > 1 and a text), a candidate's relevance is how much
the text raises its likelihood: its pseudo-log-likelihood over the drawn tokens given the
text minus the same given the null text. A candidate whose relevance falls below r times
the best relevance among its row's candidates is passed over before the likeliest is kept
(the most relevant one always stays eligible). An empty window is as likely without the
text as with it, so this takes the known bias away without letting the text-contrastive
score, which picks worse draws on its own, do the choosing. It costs `RERANK_GROUPS` more
forwards of the K rows, with the null text.

With `polish` p > 0, once the window is drawn (and chosen), every drawn token that the
transformer, given the text and all the other tokens, finds less likely than p is
replaced by the token it finds most likely there: one pass, prime tokens untouched. The
step loop commits to a token before its neighbours exist; a token that disagrees with
all of them afterwards (a stray piece of an object beside it) is the kind this mends. It
reuses the candidates' scores, so with K > 1 it costs nothing more, else
`RERANK_GROUPS` forwards. `polish_passes` n > 1 polishes n times, each pass scoring the
tokens as the last one left them (a replaced token changes what its neighbours should
be); the candidates are then chosen by the last pass's scores, those of the tokens it
was given, one pass closer to what is shown. Each further pass costs `RERANK_GROUPS`
forwards of the K rows.

All randomness comes from the `generator` argument: a given seed gives the same
tokens. Nothing here holds state; the model is put in eval mode for the call and
restored afterwards.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .maskgit import MaskGit, TextContext
from .masking import Schedule, mask_schedule, uniform
from .torch_utils import eval_mode

log = logging.getLogger(__name__)

__all__ = [
    "filter_logits", "guidance_scales", "gumbel", "masked_counts", "pseudo_log_likelihood", "relevant_enough",
    "sample", "token_log_likelihoods",
]

RERANK_GROUPS = 4

Progress = Callable[[int, int], None]
WindowScore = Callable[[Tensor, int], Tensor]  # (candidate ids [R*K, T, H, W], prime tokens) -> scores [R*K]


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


def _check_prime(model: MaskGit, prime: Tensor | None, batch: int, frames: int) -> int:
    """Validate the prime ids; return the number of primed token-frames."""
    if prime is None:
        return 0
    model.check_ids(prime, allow_mask=False)
    if prime.shape[0] != batch:
        raise ValueError(f"prime batch {prime.shape[0]} does not match text batch {batch}")
    if prime.shape[1] > frames:
        raise ValueError(f"prime has {prime.shape[1]} token-frames, more than num_token_frames={frames}")
    return prime.shape[1]


def _contexts(
    model: MaskGit, text_emb: Tensor | None, text_mask: Tensor | None, batch: int, guided: bool, scale: float
) -> TextContext:
    """The one context for the whole call: cond rows, then (when guided) null rows."""
    if text_emb is None or not model.conditional:
        return model.null_context(batch)
    if text_mask is None:
        text_mask = torch.ones(text_emb.shape[:2], dtype=torch.bool, device=text_emb.device)
    if guided:
        drop = torch.arange(2 * batch, device=text_emb.device) >= batch
        return model.prepare_context(
            torch.cat([text_emb, text_emb]), torch.cat([text_mask, text_mask]), drop_text=drop
        )
    drop = torch.full((batch,), scale == 0.0, dtype=torch.bool, device=text_emb.device)
    return model.prepare_context(text_emb, text_mask, drop_text=drop)


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
    text_emb: Tensor | None,
    text_mask: Tensor | None,
    *,
    num_token_frames: int,
    prime: Tensor | None = None,
    steps: int = 12,
    guidance: float = 3.0,
    guidance_ramp: bool = False,
    temperature: float = 1.0,
    schedule: str | Schedule = "cosine",
    top_k: int | None = None,
    top_p: float | None = None,
    choice_temperature: float | None = None,
    temporal_bias: float = 0.0,
    generator: torch.Generator | None = None,
    use_critic: bool = False,
    critic_revise: bool = False,
    progress: Progress | None = None,
    batch_size: int | None = None,
    candidates: int = 1,
    polish: float = 0.0,
    polish_passes: int = 1,
    relevance_floor: float = 0.0,
    window_score: WindowScore | None = None,
) -> Tensor:
    """Generate token ids [B, num_token_frames, H', W'] for the text; `prime` fixes the first frames.

    `temperature` scales the sampling logits (0 = greedy) and, unless `choice_temperature`
    is given, the confidence noise.
    `progress(step, steps)` is called after each step with step = 1..steps.
    `batch_size` is only needed when there is neither text nor prime (unconditional).
    `candidates` K > 1 draws each row K times and keeps the draw with the highest
    `pseudo_log_likelihood` (K times the sampling work, plus RERANK_GROUPS forwards).
    `polish` p in (0, 1) then replaces each drawn token the model finds less likely than p
    given all the others by its most likely token there (0: off), `polish_passes` times, each
    pass on the last one's tokens (the last pass's scores choose). `relevance_floor` r in [0, 1]
    passes over candidates the text explains less than r times the best of them (0: off).
    `window_score(ids, fixed)` (with `candidates` > 1) scores every candidate window, as it
    would be shown (polished), by anything else that knows what the text asks for (e.g. the
    pipeline's matcher); it is added to the likelihood when choosing.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if choice_temperature is None:
        choice_temperature = temperature
    elif choice_temperature < 0:
        raise ValueError(f"choice_temperature must be >= 0, got {choice_temperature}")
    if not 0 <= temporal_bias < math.inf:
        raise ValueError(f"temporal_bias must be finite and >= 0, got {temporal_bias}")
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    if not 0.0 <= polish < 1.0:
        raise ValueError(f"polish must be in [0, 1), got {polish}")
    if polish_passes < 1:
        raise ValueError(f"polish_passes must be >= 1, got {polish_passes}")
    if not 0.0 <= relevance_floor <= 1.0:
        raise ValueError(f"relevance_floor must be in [0, 1], got {relevance_floor}")
    if use_critic and not model.has_critic:
        raise ValueError("use_critic=True but the model has no token critic (config.critic is False)")
    if critic_revise and not use_critic:
        raise ValueError("critic_revise=True needs use_critic=True: only the critic can judge revealed tokens")
    if not 1 <= num_token_frames <= model.config.max_token_frames:
        raise ValueError(
            f"num_token_frames={num_token_frames} must be in 1..{model.config.max_token_frames} "
            f"(the model's max_token_frames)"
        )
    device = model.device
    batch = _batch_size(text_emb, prime, batch_size)
    prime_frames = _check_prime(model, prime, batch, num_token_frames)
    if prime_frames == num_token_frames:
        candidates = 1  # nothing to draw, so nothing to choose between
    if candidates > 1:
        text_emb, text_mask, prime = (None if t is None else t.repeat_interleave(candidates, dim=0)
                                      for t in (text_emb, text_mask, prime))
        batch *= candidates
    h, w = model.token_grid
    ids = torch.full((batch, num_token_frames * h * w), model.mask_id, dtype=torch.long, device=device)
    if prime is not None:
        ids[:, : prime_frames * h * w] = prime.to(device).reshape(batch, -1)
    num_free = (num_token_frames - prime_frames) * h * w
    if num_free == 0:
        return ids.view(batch, num_token_frames, h, w)

    scales = guidance_scales(guidance, steps, guidance_ramp)
    # plain conditional (all scales 1) or plain unconditional (all 0) need only B rows
    guided = model.conditional and text_emb is not None and not (set(scales) <= {1.0} or set(scales) <= {0.0})
    counts = masked_counts(num_free, steps, schedule)
    # confidence handicap of each position (token-frame index x bias), built once per call
    frame_penalty = None
    if temporal_bias > 0:
        frame_penalty = temporal_bias * (torch.arange(ids.shape[1], device=device) // (h * w)).float()
    # positions that may never be re-masked; None: whatever is revealed stays
    locked = None
    if critic_revise:
        locked = (torch.arange(ids.shape[1], device=device) < prime_frames * h * w).expand(batch, -1)
    with eval_mode(model):
        context = _contexts(model, text_emb, text_mask, batch, guided, float(guidance))
        critic_ctx = _cond_rows(context, batch) if use_critic else None
        if critic_ctx is not None:
            model.critic_kv(critic_ctx)  # computed once, cached on the context
        for step in range(steps):
            if step > 0 and counts[step - 1] == 0:
                log.debug("all tokens revealed after %d of %d steps", step, steps)
                break
            ids = _step(
                model, ids, context, step, steps, counts[step], guided, scales[step],
                temperature, choice_temperature, top_k, top_p, generator, critic_ctx, frame_penalty, locked,
            )
            if progress is not None:
                progress(step + 1, steps)
        ids = ids.view(batch, num_token_frames, h, w)
        if candidates > 1 or polish > 0:
            null = None
            if candidates > 1 and relevance_floor > 0 and model.conditional and text_emb is not None:
                null = model.null_context(batch)
            ids = _judge_window(model, ids, _cond_rows(context, batch), candidates, polish, prime_frames * h * w,
                                null=null, relevance_floor=relevance_floor, window_score=window_score,
                                polish_passes=polish_passes)
    return ids


def _judge_window(
    model: MaskGit, ids: Tensor, context: TextContext, candidates: int, polish: float, fixed: int,
    *, null: TextContext | None = None, relevance_floor: float = 0.0, window_score: WindowScore | None = None,
    polish_passes: int = 1,
) -> Tensor:
    """Keep, of every `candidates` consecutive rows of ids, the one the model scores highest
    (plus `window_score`, when given; among those relevant enough to the text, when `null` is
    given), with (`polish` > 0) its tokens after the first `fixed` that the model finds less
    likely than `polish` replaced by its own choice there, `polish_passes` times. The last
    pass's scores serve both."""
    passes = polish_passes if polish > 0 else 1
    for _ in range(passes):
        drawn = ids  # the tokens the scores below are of
        log_probs, choice = token_log_likelihoods(model, ids, context)
        if polish > 0:
            unlikely = log_probs < math.log(polish)
            unlikely[:, :fixed] = False
            if log.isEnabledFor(logging.DEBUG):
                log.debug("polish replaced %d of %d tokens", int(unlikely.sum()), unlikely[:, fixed:].numel())
            ids = torch.where(unlikely, choice, ids.reshape(len(ids), -1)).view_as(ids)
    if candidates > 1:
        scores = log_probs.sum(dim=-1)
        if window_score is not None:
            scores = scores + window_score(ids, fixed).to(scores)
        scores = scores.view(-1, candidates)
        if null is not None:
            null_scores = token_log_likelihoods(model, drawn, null)[0][:, fixed:].sum(dim=-1)
            relevance = (log_probs[:, fixed:].sum(dim=-1) - null_scores).view(-1, candidates)
            scores = scores.masked_fill(~relevant_enough(relevance, relevance_floor), -math.inf)
        best = scores.argmax(dim=-1)
        if log.isEnabledFor(logging.DEBUG):  # .tolist() waits for the device; only pay for it when shown
            log.debug("candidate scores %s, kept %s", scores.tolist(), best.tolist())
        rows = torch.arange(len(best), device=ids.device) * candidates + best
        ids = ids[rows]
    return ids


def relevant_enough(relevance: Tensor, floor: float) -> Tensor:
    """Which candidates [R, K] stay eligible: relevance >= floor * the row's best (when that
    is positive), and always the most relevant one, so no row is left without a choice."""
    if floor <= 0:
        return torch.ones_like(relevance, dtype=torch.bool)
    top = relevance.max(dim=-1, keepdim=True).values
    return (relevance >= floor * top.clamp(min=0)) | (relevance == top)


@torch.no_grad()
def token_log_likelihoods(
    model: MaskGit, ids: Tensor, context: TextContext, groups: int = RERANK_GROUPS
) -> tuple[Tensor, Tensor]:
    """log p(token | context, the tokens outside its group) of every token, and the model's
    most likely token at each position given the same: two [B, N] tensors (N = all tokens).

    The positions are split into `groups` interleaved groups by a fixed permutation
    (the same for every call, so scores compare across calls and no user randomness is
    drawn); each group is masked and predicted in one forward. More groups approach the
    true pseudo-likelihood (each token given all the others) at one forward each.
    """
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    model.check_ids(ids, allow_mask=False)
    b = ids.shape[0]
    flat = ids.reshape(b, -1)
    n = flat.shape[1]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).to(ids.device)
    group_of = torch.empty(n, dtype=torch.long, device=ids.device)
    group_of[order] = torch.arange(n, device=ids.device) % groups
    scores = torch.zeros((b, n), dtype=torch.float32, device=ids.device)
    choice = flat.clone()
    with eval_mode(model):
        for g in range(groups):
            chosen = group_of == g
            if not chosen.any():
                continue
            masked = flat.masked_fill(chosen, model.mask_id).view_as(ids)
            only = chosen.expand(b, -1).reshape(ids.shape)
            log_probs = model(masked, context=context, only=only).float().log_softmax(dim=-1)
            scores[:, chosen] = log_probs.gather(-1, flat[:, chosen].reshape(-1, 1)).view(b, -1)
            choice[:, chosen] = log_probs.argmax(dim=-1).view(b, -1)
    return scores, choice


def pseudo_log_likelihood(model: MaskGit, ids: Tensor, context: TextContext, groups: int = RERANK_GROUPS) -> Tensor:
    """Sum over every token of log p(token | context, the tokens outside its group): [B] floats
    (see `token_log_likelihoods`)."""
    return token_log_likelihoods(model, ids, context, groups)[0].sum(dim=-1)


def _batch_size(text_emb: Tensor | None, prime: Tensor | None, batch_size: int | None) -> int:
    if text_emb is not None:
        return text_emb.shape[0]
    if prime is not None:
        return prime.shape[0]
    if batch_size is None:
        raise ValueError("sample needs text_emb, prime or batch_size to know the batch size")
    return batch_size


def _step(
    model: MaskGit,
    ids: Tensor,
    context: TextContext,
    step: int,
    steps: int,
    keep_masked: int,
    guided: bool,
    scale: float,
    temperature: float,
    choice_temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
    critic_ctx: TextContext | None,
    frame_penalty: Tensor | None = None,
    locked: Tensor | None = None,
) -> Tensor:
    """One decoding step on flat ids [B, N]: fill every masked position, re-mask the least sure.

    Only positions masked at the start of the step compete, unless `locked` [B, N] names
    the ones that may not (then every other position does).
    """
    b, n = ids.shape
    h, w = model.token_grid
    unknown = ids == model.mask_id
    logits = _guided_logits(model, ids.view(b, -1, h, w), context, guided, scale, unknown.view(b, -1, h, w))
    tokens, log_probs = _pick(logits, temperature, top_k, top_p, generator)
    filled = ids.masked_scatter(unknown, tokens)
    if keep_masked == 0:
        return filled
    if critic_ctx is not None:
        wrong = model.critic_logits(filled.view(b, -1, h, w), context=critic_ctx).view(b, n)
        confidence = F.logsigmoid(-wrong)  # log P(token is right)
    else:
        confidence = torch.zeros((b, n), dtype=log_probs.dtype, device=ids.device).masked_scatter(unknown, log_probs)
    noise_scale = choice_temperature * (1.0 - (step + 1) / steps)
    if noise_scale > 0:
        confidence = confidence + noise_scale * gumbel((b, n), generator, ids.device)
    if frame_penalty is not None:
        confidence = confidence - frame_penalty.to(confidence.dtype)
    confidence = confidence.masked_fill(~unknown if locked is None else locked, math.inf)
    remask = confidence.topk(keep_masked, dim=-1, largest=False).indices
    return filled.scatter(-1, remask, model.mask_id)


def _cond_rows(context: TextContext, batch: int) -> TextContext:
    """The conditional half of a guided context: the critic judges against the real text."""
    if context.batch == batch:
        return context
    return TextContext(
        tokens=context.tokens[:batch],
        mask=context.mask[:batch],
        kv=tuple((k[:batch], v[:batch]) for k, v in context.kv),
        attn_mask=None if context.attn_mask is None else context.attn_mask[:batch],
    )

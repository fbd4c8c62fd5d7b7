"""Choosing among draws: the best of several candidate windows, polished.

The decode loop (`phenaki.sampling.decode`) commits to tokens one step at a time; this module
judges whole windows once they are drawn, by the transformer's own view of them.

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

A `window_score` (e.g. the pipeline's text-video matcher, `matcher_score`) adds anything else
that knows what the text asks for to the likelihood when choosing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..models.maskgit import MaskGit, TextContext
from ..utils.torch_utils import eval_mode
from ..video import pixels_to_frames
from .decode import Progress, Text, check_prime, condition, sample
from .settings import SamplingSettings

if TYPE_CHECKING:
    from ..models.cvivit import CViViT
    from ..models.matcher import TextVideoMatcher

log = logging.getLogger(__name__)

__all__ = ["RERANK_GROUPS", "choose", "draw", "matcher_score", "pseudo_log_likelihood", "relevant_enough",
           "token_log_likelihoods"]

RERANK_GROUPS = 4

WindowScore = Callable[[Tensor, int], Tensor]  # (candidate ids [R*K, T, H, W], prime tokens) -> scores [R*K]


@torch.no_grad()
def draw(
    model: MaskGit,
    text: Text | None,
    prime: Tensor | None,
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
    *,
    num_token_frames: int,
    batch_size: int | None = None,
    window_score: WindowScore | None = None,
    progress: Progress | None = None,
    negative: Text | None = None,
) -> Tensor:
    """Token ids [B, num_token_frames, H', W'] for the text: `settings.candidates` draws of every row
    by the decode loop, polished and the best kept (see the module docstring).

    `text` is (embeddings [B, L, D], mask [B, L] or None), or None for unconditional draws, when
    the batch comes from `prime` or `batch_size`. `window_score(ids, fixed)` (with candidates > 1)
    scores every candidate window as it would be shown (polished); it joins the likelihood.
    `negative` (same rows as `text`) takes the null text's place in the guidance.
    """
    batch = _batch_size(text, prime, batch_size)
    prime_frames = check_prime(model, prime, batch, num_token_frames)
    candidates = settings.candidates if prime_frames < num_token_frames else 1  # nothing to draw: no choice
    if candidates > 1:
        if text is not None:
            text = _repeat(text, candidates)
        if negative is not None:
            negative = _repeat(negative, candidates)
        prime = None if prime is None else prime.repeat_interleave(candidates, dim=0)
    rows = batch * candidates
    with eval_mode(model):
        cond = condition(model, text, settings, rows, negative=negative)
        ids = sample(model, cond, prime, settings, generator, num_token_frames=num_token_frames, progress=progress)
        if prime_frames < num_token_frames and (candidates > 1 or settings.polish > 0):
            null = None
            if candidates > 1 and settings.relevance_floor > 0 and model.conditional and cond.has_text:
                null = model.null_context(rows)
            h, w = model.token_grid
            ids = choose(model, ids, cond.conditional(), prime_frames * h * w, settings, candidates=candidates,
                         null=null, window_score=window_score)
    return ids


def matcher_score(matcher: "TextVideoMatcher", tokenizer: "CViViT", text: Text, new_frames: int, weight: float,
                  candidates: int) -> WindowScore:
    """The matcher's say in the choice among candidates: `weight` x the cosine similarity of each
    candidate's new frames, decoded as they would be shown, and its row's prompt."""
    from ..models.matcher import frames_to_matcher

    prompts = matcher.embed_text(*text).repeat_interleave(candidates, dim=0)

    def score(ids: Tensor, fixed: int) -> Tensor:
        frames = pixels_to_frames(tokenizer.decode(ids))[:, -new_frames:]
        video = matcher.embed_video(frames_to_matcher(frames).to(prompts.device))
        return weight * (video * prompts).sum(dim=-1)

    return score


def _repeat(text: Text, times: int) -> Text:
    return tuple(None if t is None else t.repeat_interleave(times, dim=0) for t in text)  # type: ignore[return-value]


def _batch_size(text: Text | None, prime: Tensor | None, batch_size: int | None) -> int:
    if text is not None:
        return text[0].shape[0]
    if prime is not None:
        return prime.shape[0]
    if batch_size is None:
        raise ValueError("draw needs text, prime or batch_size to know the batch size")
    return batch_size


def choose(
    model: MaskGit, ids: Tensor, context: TextContext, fixed: int, settings: SamplingSettings,
    *, candidates: int, null: TextContext | None = None, window_score: WindowScore | None = None,
) -> Tensor:
    """Keep, of every `candidates` consecutive rows of ids, the one the model scores highest
    (plus `window_score`, when given; among those relevant enough to the text, when `null` is
    given), with (`settings.polish` > 0) its tokens after the first `fixed` that the model finds
    less likely than `polish` replaced by its own choice there, `polish_passes` times. The last
    pass's scores serve both."""
    polish, relevance_floor = settings.polish, settings.relevance_floor
    passes = settings.polish_passes if polish > 0 else 1
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

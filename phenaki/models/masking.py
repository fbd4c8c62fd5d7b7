"""Training-time masking for MaskGIT and its loss; the mask schedules live here too.

A schedule gamma maps progress r in [0, 1] to the fraction of tokens still masked
(gamma(0) = 1, gamma(1) = 0). Training draws r ~ U(0, 1) per sample and masks
ceil(gamma(r) * N) tokens; the sampler walks r = 1/steps, 2/steps, ... 1. Both use
the functions here, so a model is always decoded with the schedule family it saw.

All randomness goes through an optional `torch.Generator` (drawn on the generator's
own device, then moved), so a seeded run is reproducible on CPU and GPU alike.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from .maskgit import MaskGit, TextContext

log = logging.getLogger(__name__)

__all__ = [
    "SCHEDULES",
    "Schedule",
    "continuation_prime",
    "critic_loss",
    "fill_with_samples",
    "mask_schedule",
    "maskgit_loss",
    "random_mask",
    "text_dropout",
    "uniform",
]

Schedule = Callable[[Tensor], Tensor]


# ----------------------------------------------------------------------------- schedules


def _cosine(r: Tensor) -> Tensor:
    return torch.cos(r * (math.pi / 2))


def _linear(r: Tensor) -> Tensor:
    return 1.0 - r


def _square(r: Tensor) -> Tensor:
    return 1.0 - r * r


def _sqrt(r: Tensor) -> Tensor:
    return 1.0 - r.sqrt()


def _arccos(r: Tensor) -> Tensor:
    return torch.arccos(r) / (math.pi / 2)


SCHEDULES: dict[str, Schedule] = {
    "cosine": _cosine,
    "linear": _linear,
    "square": _square,
    "sqrt": _sqrt,
    "arccos": _arccos,
}


def mask_schedule(name: str | Schedule = "cosine") -> Schedule:
    """gamma(r): masked fraction at progress r (tensor in, tensor out); a callable passes through."""
    if callable(name):
        return name
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(
            f"unknown mask schedule {name!r}; choose one of {', '.join(SCHEDULES)}"
        ) from None


# ----------------------------------------------------------------------------- random draws


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U[0, 1) drawn with `generator` on its own device (CPU generator + CUDA tensors work)."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _check_prob(name: str, prob: float) -> None:
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {prob}")


def text_dropout(
    batch: int,
    prob: float = 0.1,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """BoolTensor[B]: rows whose text becomes the null condition (trains classifier-free guidance)."""
    _check_prob("text dropout probability", prob)
    if prob == 0.0:
        return torch.zeros(batch, dtype=torch.bool, device=device)
    return uniform((batch,), generator, torch.device(device)) < prob


def continuation_prime(
    batch: int,
    num_token_frames: int,
    prob: float,
    generator: torch.Generator | None = None,
    context_token_frames: int | Tensor | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """LongTensor[B] of leading token-frames given unmasked (0 = ordinary masking).

    With probability `prob` a sample keeps its first k token-frames as a clean prefix
    and only later ones are masked, which is exactly the story-extension task at
    sampling time. k is `context_token_frames` when given (e.g. the token-frames the
    context frames of a scene occupy), else uniform in 1..T'-1.
    """
    _check_prob("continuation probability", prob)
    device = torch.device(device)
    zeros = torch.zeros(batch, dtype=torch.long, device=device)
    if prob == 0.0 or num_token_frames < 2:
        return zeros
    chosen = uniform((batch,), generator, device) < prob
    if context_token_frames is None:
        k = 1 + (uniform((batch,), generator, device) * (num_token_frames - 1)).long()
        k = k.clamp(max=num_token_frames - 1)
    else:
        k = torch.as_tensor(context_token_frames, dtype=torch.long, device=device).expand(batch)
        if bool(((k < 1) | (k >= num_token_frames)).any()):
            raise ValueError(
                f"context_token_frames must be in 1..{num_token_frames - 1} "
                f"for {num_token_frames} token-frames, got {context_token_frames}"
            )
    return torch.where(chosen, k, zeros)


def _prime_tensor(prime_frames: int | Tensor | None, batch: int, frames: int, device: torch.device) -> Tensor:
    """Normalise `prime_frames` to LongTensor[B] and check that something is left to mask."""
    if prime_frames is None:
        return torch.zeros(batch, dtype=torch.long, device=device)
    prime = torch.as_tensor(prime_frames, dtype=torch.long, device=device).expand(batch)
    if bool(((prime < 0) | (prime >= frames)).any()):
        raise ValueError(
            f"prime_frames must be in 0..{frames - 1} for {frames} token-frames "
            f"(at least one token-frame must remain to be masked), got {prime.tolist()}"
        )
    return prime


def random_mask(
    ids: Tensor,
    schedule: str | Schedule = "cosine",
    generator: torch.Generator | None = None,
    prime_frames: int | Tensor | None = None,
    temporal_prob: float = 0.0,
    temporal_spread: float = 1.0,
) -> Tensor:
    """BoolTensor like `ids` [B, T', H', W']: True where the token is replaced by the mask id.

    Per sample r ~ U(0, 1), ceil(gamma(r) * N) of its N maskable tokens are chosen
    uniformly without replacement (never fewer than one). Tokens in the first
    `prime_frames[b]` token-frames are never masked.

    With probability `temporal_prob` a sample is masked later token-frames first instead:
    token i is masked in order of t_i + `temporal_spread` * u_i (u_i ~ U(0, 1)), so earlier
    token-frames are mostly given and later ones mostly hidden, with a frontier about
    `temporal_spread` token-frames wide. These are the states a sampler with a temporal
    bias walks through, which uniform masking almost never shows the model.
    """
    if ids.dim() != 4:
        raise ValueError(f"ids must be [B, T', H', W'], got shape {tuple(ids.shape)}")
    _check_prob("temporal mask probability", temporal_prob)
    if not temporal_spread > 0:
        raise ValueError(f"temporal_spread must be > 0, got {temporal_spread}")
    gamma = mask_schedule(schedule)
    b, t, h, w = ids.shape
    device = ids.device
    per_frame = h * w
    prime = _prime_tensor(prime_frames, b, t, device)
    maskable = (t - prime) * per_frame  # [B]
    ratio = gamma(uniform((b,), generator, device)).clamp(0.0, 1.0)
    count = torch.ceil(ratio * maskable).long().clamp(min=1)
    count = torch.minimum(count, maskable)
    # random order of the tokens; prime tokens are pushed behind every maskable one
    scores = uniform((b, t * per_frame), generator, device)
    position = torch.arange(t * per_frame, device=device)
    if temporal_prob > 0:  # lowest score is masked first: later token-frames, blurred by the spread
        ordered = 1.0 - (position // per_frame + temporal_spread * scores) / (t + temporal_spread)
        chosen = uniform((b,), generator, device) < temporal_prob
        scores = torch.where(chosen[:, None], ordered, scores)
    in_prime = position[None, :] < (prime * per_frame)[:, None]
    scores = scores.masked_fill(in_prime, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    return (rank < count[:, None]).view(b, t, h, w)


# ----------------------------------------------------------------------------- critic


def fill_with_samples(
    logits: Tensor,
    ids: Tensor,
    masked: Tensor,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """`ids` with masked positions replaced by tokens sampled from `logits` (no gradient).

    This is how the token critic's training input is made: the generator's own
    guesses, some right and some wrong, in place of the masked tokens.
    """
    with torch.no_grad():
        scaled = logits.detach().float() / max(temperature, 1e-6)
        noise = -torch.log(-torch.log(uniform(tuple(scaled.shape), generator, scaled.device).clamp_min(1e-20)))
        sampled = (scaled + noise).argmax(dim=-1)
        return torch.where(masked, sampled, ids)


def critic_loss(
    model: MaskGit,
    filled: Tensor,
    target: Tensor,
    *,
    context: TextContext,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-Critic BCE: predict, for every token of `filled`, whether it differs from `target`."""
    labels = (filled != target).float()
    logits = model.critic_logits(filled, context=context).float()
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    with torch.no_grad():
        accuracy = ((logits > 0).float() == labels).float().mean()
        wrong = labels.mean()
    return loss, {"critic_loss": loss.detach(), "critic_acc": accuracy, "critic_wrong_frac": wrong}


# ----------------------------------------------------------------------------- loss


def maskgit_loss(  # one keyword per knob of the objective, each a `TrainConfig` field the trainer passes through
    model: MaskGit,
    ids: Tensor,
    text_emb: Tensor | None,
    text_mask: Tensor | None,
    *,
    schedule: str | Schedule = "cosine",
    cond_drop_prob: float = 0.1,
    continuation_prob: float = 0.0,
    label_smoothing: float = 0.0,
    generator: torch.Generator | None = None,
    prime_frames: int | Tensor | None = None,
    context_token_frames: int | Tensor | None = None,
    critic_weight: float = 1.0,
    temporal_mask_prob: float = 0.0,
    temporal_mask_spread: float = 1.0,
    critic_only: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One MaskGIT training loss: mask, predict, cross-entropy on the masked tokens only.

    `prime_frames` fixes the clean prefix per sample; otherwise, with probability
    `continuation_prob`, a random (or `context_token_frames`) prefix is kept clean.
    A fraction `cond_drop_prob` of rows sees the null text (for guidance). With a
    critic, its BCE loss (weight `critic_weight`) is added, trained on the
    generator's own samples; with `critic_only` the generator and the text (up to the
    projected context the critic reads) run without gradient and the loss is the
    critic's alone (the generator's cross-entropy is still reported).
    Metrics are detached 0-dim tensors (no device sync).
    """
    model.check_ids(ids, allow_mask=False)
    if critic_only and not model.has_critic:
        raise ValueError("critic_only=True but the model has no token critic (config.critic is False)")
    b, t = ids.shape[:2]
    device = ids.device
    if prime_frames is None:
        prime_frames = continuation_prime(
            b, t, continuation_prob, generator, context_token_frames, device=device
        )
    prime = _prime_tensor(prime_frames, b, t, device)
    masked = random_mask(ids, schedule, generator, prime, temporal_mask_prob, temporal_mask_spread)
    drop = text_dropout(b, cond_drop_prob, generator, device=device)
    inputs = ids.masked_fill(masked, model.mask_id)
    with torch.set_grad_enabled(torch.is_grad_enabled() and not critic_only):
        context = model.prepare_context(text_emb, text_mask, drop_text=drop, batch=b)
        if model.has_critic:  # the critic is trained on samples from every position's logits
            logits = model(inputs, context=context)
            picked = logits[masked]
        else:
            picked = model(inputs, context=context, only=masked)
        targets = ids[masked]
        loss = F.cross_entropy(picked, targets, label_smoothing=label_smoothing)
    with torch.no_grad():
        metrics = {
            "loss": loss.detach(),
            "masked_acc": (picked.argmax(-1) == targets).float().mean(),
            "mask_ratio": masked.float().mean(),
            "text_dropped": drop.float().mean(),
            "prime_frac": (prime.float() / t).mean(),
        }
    if model.has_critic:
        filled = fill_with_samples(logits, ids, masked, generator)
        c_loss, c_metrics = critic_loss(model, filled, ids, context=context)
        loss = c_loss if critic_only else loss + critic_weight * c_loss
        metrics.update(c_metrics)
        metrics["total_loss"] = loss.detach()
    return loss, metrics

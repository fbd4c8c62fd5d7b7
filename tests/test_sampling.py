"""MaskGIT iterative decoding: priming, schedule, guidance batching, determinism, learning."""

from __future__ import annotations

import math
from typing import Self

import pytest
import torch

from phenaki.config import TransformerConfig
from phenaki.maskgit import MaskGit
from phenaki.masking import maskgit_loss
from phenaki.sampling import (
    filter_logits, guidance_scales, masked_counts, pseudo_log_likelihood, relevant_enough, sample,
    token_log_likelihoods,
)

TEXT_DIM = 32


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, **overrides) -> MaskGit:
    torch.manual_seed(seed)
    base = {
        "dim": 64, "depth": 2, "heads": 4, "dim_head": 16, "max_token_frames": 3,
        "codebook_size": 16, "token_grid": (4, 4), "text_dim": TEXT_DIM,
    }
    base.update(overrides)
    return MaskGit(TransformerConfig(**base)).eval()


def text(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, 4, dtype=torch.bool)
    mask[0, 2:] = False
    return torch.randn(batch, 4, TEXT_DIM, generator=g), mask


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class ForwardSpy:
    """Records the input ids of every MaskGit forward (via a pre-hook)."""

    def __init__(self, model: MaskGit) -> None:
        self.inputs: list[torch.Tensor] = []
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        self.inputs.append(args[0].clone())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


# ----------------------------------------------------------------------------- helpers


def test_masked_counts_follow_schedule() -> None:
    counts = masked_counts(48, 6, "cosine")
    assert counts[-1] == 0
    assert all(a > b for a, b in zip([48] + counts, counts))  # >= 1 revealed per step
    expected = [math.floor(math.cos(math.pi / 2 * (s + 1) / 6) * 48) for s in range(5)]
    assert counts[:-1] == expected
    assert masked_counts(3, 6) == [2, 1, 0, 0, 0, 0]  # fewer tokens than steps


def test_guidance_scales_ramp() -> None:
    assert guidance_scales(3.0, 4, False) == [3.0] * 4
    assert guidance_scales(3.0, 5, True) == [1.0, 1.5, 2.0, 2.5, 3.0]


def test_filter_logits() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).sum() == 2
    kept = ~torch.isinf(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert (~torch.isinf(filter_logits(logits, top_p=0.1))).sum() == 1  # best always kept


# ----------------------------------------------------------------------------- sampler


def test_prime_survives_and_everything_is_revealed() -> None:
    model = tiny_model()
    emb, mask = text()
    prime = torch.randint(0, 16, (2, 1, 4, 4), generator=gen(0))
    out = sample(model, emb, mask, num_token_frames=3, prime=prime, steps=5, generator=gen(1))
    assert out.shape == (2, 3, 4, 4) and out.dtype == torch.long
    assert torch.equal(out[:, :1], prime)
    assert ((out >= 0) & (out < 16)).all()
    full = sample(model, emb, mask, num_token_frames=2, prime=prime[:, :1].repeat(1, 2, 1, 1), generator=gen(1))
    assert torch.equal(full, prime[:, :1].repeat(1, 2, 1, 1))  # nothing left to generate


def test_same_seed_same_tokens_different_seed_differs() -> None:
    model = tiny_model()
    emb, mask = text()
    kwargs = {"num_token_frames": 2, "steps": 4, "top_k": 8, "top_p": 0.95}
    torch.manual_seed(123)
    a = sample(model, emb, mask, generator=gen(7), **kwargs)
    torch.manual_seed(456)  # the global RNG must not matter
    b = sample(model, emb, mask, generator=gen(7), **kwargs)
    c = sample(model, emb, mask, generator=gen(8), **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_one_batched_forward_per_step_and_schedule() -> None:
    model = tiny_model()
    emb, mask = text()
    prime = torch.randint(0, 16, (2, 1, 4, 4), generator=gen(0))
    steps = 6
    calls = []
    with ForwardSpy(model) as spy:
        sample(
            model, emb, mask, num_token_frames=3, prime=prime, steps=steps, guidance=3.0,
            generator=gen(2), progress=lambda s, n: calls.append((s, n)),
        )
    assert len(spy.inputs) == steps
    assert all(x.shape[0] == 4 for x in spy.inputs)  # conditional + unconditional rows together
    for x in spy.inputs:
        assert torch.equal(x[:2], x[2:])  # both halves see the same tokens
    masked = [int((x[:2] == model.mask_id).flatten(1).sum(1).unique().item()) for x in spy.inputs]
    assert masked == [32] + masked_counts(32, steps)[:-1]
    assert calls == [(s, steps) for s in range(1, steps + 1)]


def test_choice_temperature_sets_the_reveal_noise_apart_from_sampling() -> None:
    model = tiny_model()
    emb, mask = text()
    kwargs = {"num_token_frames": 2, "steps": 4, "guidance": 1.0}
    first_reveals = {}
    for choice in (0.0, 3.0):
        with ForwardSpy(model) as spy:
            sample(model, emb, mask, temperature=0.0, choice_temperature=choice, generator=gen(5), **kwargs)
        first_reveals[choice] = spy.inputs[1] != model.mask_id
    # greedy tokens, no noise: step 1 reveals exactly the positions the model is surest of
    with torch.no_grad():
        logits = model(torch.full((2, 2, 4, 4), model.mask_id), context=model.prepare_context(emb, mask)).float()
    sure = logits.view(2, 32, -1).log_softmax(-1).amax(-1)
    keep = 32 - masked_counts(32, 4)[0]
    expected = torch.zeros(2, 32, dtype=torch.bool).scatter(1, sure.topk(keep, dim=1).indices, True)
    assert torch.equal(first_reveals[0.0].view(2, 32), expected)
    # noise in the choice changes which positions go first, though the tokens are greedy
    assert not torch.equal(first_reveals[3.0], first_reveals[0.0])
    # left unset it follows the sampling temperature, as before
    a = sample(model, emb, mask, temperature=0.7, generator=gen(9), **kwargs)
    b = sample(model, emb, mask, temperature=0.7, choice_temperature=0.7, generator=gen(9), **kwargs)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="choice_temperature must be >= 0"):
        sample(model, emb, mask, choice_temperature=-1.0, **kwargs)


def test_temporal_bias_reveals_earlier_token_frames_first() -> None:
    """A large bias: no token of a token-frame is revealed while an earlier one still has a masked
    token; without it the reveals are spread over all frames; the schedule is the same either way."""
    model = tiny_model()
    emb, mask = text()
    kwargs = {"num_token_frames": 3, "steps": 6, "guidance": 2.0, "temperature": 1.0}

    def reveals(bias: float) -> list[torch.Tensor]:
        with ForwardSpy(model) as spy:
            sample(model, emb, mask, temporal_bias=bias, generator=gen(3), **kwargs)
        return [(x[:2] != model.mask_id).view(2, 3, 16) for x in spy.inputs]

    ordered, free = reveals(1000.0), reveals(0.0)
    assert [int(r.sum()) for r in ordered] == [int(r.sum()) for r in free]
    for revealed in ordered:
        done = revealed.all(dim=2)  # [B, frames]: frame fully revealed
        for t in range(1, 3):
            assert not (revealed[:, t].any(dim=1) & ~done[:, t - 1]).any(), f"frame {t} began before {t - 1} ended"
    assert any((r[:, 1:].any(dim=2) & ~r[:, :1].all(dim=2)).any() for r in free)  # the unbiased order mixes
    with pytest.raises(ValueError, match="temporal_bias"):
        sample(model, emb, mask, temporal_bias=-1.0, **kwargs)


def test_no_guidance_means_batch_b() -> None:
    model = tiny_model()
    emb, mask = text()
    with ForwardSpy(model) as spy:
        sample(model, emb, mask, num_token_frames=1, steps=3, guidance=1.0, generator=gen(0))
    assert [x.shape[0] for x in spy.inputs] == [2, 2, 2]
    with ForwardSpy(model) as spy:
        sample(model, emb, mask, num_token_frames=1, steps=3, guidance=1.0, guidance_ramp=True)
    assert [x.shape[0] for x in spy.inputs] == [2, 2, 2]  # ramp to 1 = plain conditional


def test_guidance_formula() -> None:
    """scale s: logits = uncond + s * (cond - uncond); greedy decoding makes this checkable."""
    model = tiny_model()
    emb, mask = text()
    one_step = {"num_token_frames": 1, "steps": 1, "temperature": 0.0}
    x = torch.full((2, 1, 4, 4), model.mask_id)
    cond = model(x, emb, mask)
    uncond = model(x, context=model.null_context(2))
    for s in (0.0, 1.0, 2.5):
        expected = (uncond + s * (cond - uncond)).argmax(-1)
        assert torch.equal(sample(model, emb, mask, guidance=s, **one_step), expected)


def test_only_masked_positions_are_scored() -> None:
    """Prime tokens are never re-sampled, so the output layer scores the masked positions
    alone; guidance still pairs each conditional row with its own unconditional row."""
    model = tiny_model()
    emb, mask = text()
    prime = torch.randint(0, 16, (2, 1, 4, 4), generator=gen(3))
    x = torch.cat([prime, torch.full((2, 2, 4, 4), model.mask_id)], dim=1)
    rows: list[int] = []
    handle = model.to_logits.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        out = sample(model, emb, mask, num_token_frames=3, prime=prime, steps=1, guidance=2.0, temperature=0.0)
    finally:
        handle.remove()
    assert rows == [2 * 2 * 32]  # conditional + unconditional rows x 2 clips x 32 masked positions
    cond, uncond = model(x, emb, mask), model(x, context=model.null_context(2))
    expected = (uncond + 2.0 * (cond - uncond)).argmax(-1)
    assert torch.equal(out[:, :1], prime)
    assert torch.equal(out[:, 1:], expected[:, 1:])


def test_sampler_restores_training_mode_and_validates() -> None:
    model = tiny_model().train()
    emb, mask = text()
    sample(model, emb, mask, num_token_frames=1, steps=2, generator=gen(0))
    assert model.training
    with pytest.raises(ValueError, match="num_token_frames"):
        sample(model, emb, mask, num_token_frames=4)
    with pytest.raises(ValueError, match="no token critic"):
        sample(model, emb, mask, num_token_frames=1, use_critic=True)
    with pytest.raises(ValueError, match="more than num_token_frames"):
        sample(model, emb, mask, num_token_frames=1, prime=torch.zeros(2, 2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        sample(model, emb, mask, num_token_frames=2, prime=torch.full((2, 1, 4, 4), 16))


def test_critic_sampling_and_bf16_autocast() -> None:
    model = tiny_model(critic=True)
    emb, mask = text()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = sample(model, emb, mask, num_token_frames=2, steps=4, use_critic=True, generator=gen(3))
        b = sample(model, emb, mask, num_token_frames=2, steps=4, use_critic=True, generator=gen(3))
    assert torch.equal(a, b)
    assert ((a >= 0) & (a < 16)).all()


def test_critic_revise_sends_back_tokens_revealed_earlier() -> None:
    """A critic that first trusts token-frame 1 and then doubts it: only `critic_revise` re-masks it."""
    emb, mask = text()
    prime = torch.randint(0, 16, (2, 1, 4, 4), generator=gen(5))

    def run(revise: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        model = tiny_model(critic=True)
        seen: list[torch.Tensor] = []
        forward = model.forward

        def recording(x, *args, **kwargs):
            seen.append(x.clone())
            return forward(x, *args, **kwargs)

        def critic(x, *args, **kwargs):  # logit > 0: "wrong"
            doubt = torch.zeros(x.shape)
            doubt[:, 1] = -20.0 if critic.calls == 0 else 20.0
            critic.calls += 1
            return doubt

        critic.calls = 0
        model.forward = recording
        model.critic_logits = critic
        out = sample(model, emb, mask, num_token_frames=3, prime=prime, steps=4, guidance=1.0, temperature=0.0,
                     use_critic=True, critic_revise=revise, generator=gen(0))
        return seen, out

    for revise in (False, True):
        seen, out = run(revise)
        assert torch.equal(out[:, :1], prime) and all(torch.equal(x[:, :1], prime) for x in seen)
        first_reveal = seen[1][:, 1] != 16  # after step 1: the trusted frame 1 is revealed first
        assert first_reveal.sum(dim=(1, 2)).min() > 0 and (seen[1][:, 2] == 16).all()
        again = seen[2][:, 1] != 16
        if revise:
            assert not again.any()  # doubted now: sent back to the mask
        else:
            assert (again | ~first_reveal).all()  # revealed tokens stay
    with pytest.raises(ValueError, match="critic_revise=True needs use_critic"):
        sample(tiny_model(critic=True), emb, mask, num_token_frames=1, critic_revise=True)


# ----------------------------------------------------------------------------- learning


def test_pseudo_log_likelihood_is_each_token_given_the_others() -> None:
    model = tiny_model()
    emb, mask = text()
    ids = torch.randint(0, 16, (2, 2, 4, 4), generator=gen(4))
    context = model.prepare_context(emb, mask)
    n = ids[0].numel()
    with torch.no_grad():
        direct = torch.zeros(2)
        likeliest = torch.zeros(2, n, dtype=torch.long)
        for i in range(n):  # token i masked alone, predicted from all the others
            masked = ids.reshape(2, -1).clone()
            masked[:, i] = model.mask_id
            log_probs = model(masked.view_as(ids), context=context).float().log_softmax(-1).reshape(2, n, -1)
            direct += log_probs[:, i].gather(-1, ids.reshape(2, -1)[:, i : i + 1]).squeeze(-1)
            likeliest[:, i] = log_probs[:, i].argmax(-1)
        all_masked = model(torch.full_like(ids, model.mask_id), context=context).float().log_softmax(-1)
        from_text_alone = all_masked.gather(-1, ids[..., None]).reshape(2, -1).sum(-1)
    assert torch.allclose(pseudo_log_likelihood(model, ids, context, groups=n), direct, atol=1e-4)
    scores, choice = token_log_likelihoods(model, ids, context, groups=n)
    assert scores.shape == choice.shape == (2, n) and torch.equal(choice, likeliest)
    assert torch.allclose(pseudo_log_likelihood(model, ids, context, groups=1), from_text_alone, atol=1e-4)
    four = pseudo_log_likelihood(model, ids, context)
    assert torch.equal(four, pseudo_log_likelihood(model, ids, context))  # a fixed split, no randomness drawn
    with pytest.raises(ValueError, match="groups"):
        pseudo_log_likelihood(model, ids, context, groups=0)


def test_candidates_keep_the_draw_the_model_scores_highest() -> None:
    model = tiny_model()
    emb, mask = text()
    prime = torch.randint(0, 16, (2, 1, 4, 4), generator=gen(0))
    k = 3
    kwargs = {"num_token_frames": 3, "steps": 4, "guidance": 2.0}
    best = sample(model, emb, mask, prime=prime, candidates=k, generator=gen(5), **kwargs)
    assert best.shape == (2, 3, 4, 4)
    assert torch.equal(best[:, :1], prime)
    # the same draws, made as one batch of every row repeated k times
    rows = [t.repeat_interleave(k, dim=0) for t in (emb, mask, prime)]
    draws = sample(model, rows[0], rows[1], prime=rows[2], generator=gen(5), **kwargs)
    scores = pseudo_log_likelihood(model, draws, model.prepare_context(rows[0], rows[1])).view(2, k)
    for b in range(2):
        assert len({tuple(d.flatten().tolist()) for d in draws[b * k:(b + 1) * k]}) == k  # a real choice
        assert torch.equal(best[b], draws[b * k + int(scores[b].argmax())])
    with pytest.raises(ValueError, match="candidates"):
        sample(model, emb, mask, num_token_frames=1, candidates=0)
    nothing_to_draw = sample(model, emb, mask, num_token_frames=1, prime=prime, candidates=k)
    assert torch.equal(nothing_to_draw, prime)


@pytest.mark.parametrize("candidates", [1, 3])
def test_polish_replaces_only_the_unlikely_drawn_tokens(candidates: int) -> None:
    model = tiny_model()
    emb, mask = text()
    prime = torch.randint(0, 16, (2, 1, 4, 4), generator=gen(0))
    kwargs = {"num_token_frames": 3, "steps": 4, "guidance": 2.0, "temperature": 2.0, "candidates": candidates}
    drawn = sample(model, emb, mask, prime=prime, generator=gen(6), **kwargs)
    scores, choice = token_log_likelihoods(model, drawn, model.prepare_context(emb, mask))
    threshold = scores[:, 16:].median().exp().item()  # an untrained model: half the drawn tokens fall below
    polished = sample(model, emb, mask, prime=prime, polish=threshold, generator=gen(6), **kwargs)
    unlikely = scores < math.log(threshold)
    unlikely[:, :16] = False  # the prime is never touched
    assert 0 < unlikely.sum() < unlikely[:, 16:].numel()  # some tokens are replaced, not all
    expected = torch.where(unlikely, choice, drawn.reshape(2, -1)).view_as(drawn)
    assert torch.equal(polished, expected) and torch.equal(polished[:, :1], prime)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="polish"):
            sample(model, emb, mask, num_token_frames=1, polish=bad)


def test_a_second_polish_pass_mends_what_the_first_left_and_its_scores_choose() -> None:
    """`polish_passes` 2: the first pass's tokens are scored and polished again (prime untouched),
    and the candidates are chosen by those second scores (+ the window score of what is shown)."""
    model = tiny_model()
    emb, mask = text()
    prime = torch.randint(0, 16, (2, 1, 4, 4), generator=gen(0))
    k = 3
    rows = [t.repeat_interleave(k, dim=0) for t in (emb, mask, prime)]
    context = model.prepare_context(rows[0], rows[1])
    kwargs = {"num_token_frames": 3, "steps": 4, "guidance": 2.0, "temperature": 2.0}
    drawn = sample(model, rows[0], rows[1], prime=rows[2], generator=gen(5), **kwargs)
    threshold = 0.3

    def polish_once(ids: torch.Tensor, ctx=context) -> tuple[torch.Tensor, torch.Tensor]:
        scores, choice = token_log_likelihoods(model, ids, ctx)
        unlikely = scores < math.log(threshold)
        unlikely[:, :16] = False
        return torch.where(unlikely, choice, ids.reshape(len(ids), -1)).view_as(ids), scores.sum(-1)

    once, _ = polish_once(drawn)
    twice, second_scores = polish_once(once)
    assert not torch.equal(once, twice)  # the second pass has something left to mend
    shown: list[torch.Tensor] = []

    def record(ids: torch.Tensor, fixed: int) -> torch.Tensor:
        shown.append(ids.clone())
        return torch.zeros(len(ids))

    best = sample(model, emb, mask, prime=prime, candidates=k, polish=threshold, polish_passes=2,
                  generator=gen(5), window_score=record, **kwargs)
    assert len(shown) == 1 and torch.equal(shown[0], twice)
    pick = second_scores.view(2, k).argmax(dim=-1)
    for b in range(2):
        assert torch.equal(best[b], twice[b * k + int(pick[b])])
    assert torch.equal(best[:, :1], prime)
    alone = sample(model, emb, mask, prime=prime, generator=gen(7), **kwargs)  # one candidate: no choice
    expected = polish_once(polish_once(alone, model.prepare_context(emb, mask))[0], model.prepare_context(emb, mask))[0]
    assert torch.equal(sample(model, emb, mask, prime=prime, polish=threshold, polish_passes=2, generator=gen(7),
                              **kwargs), expected)
    with pytest.raises(ValueError, match="polish_passes"):
        sample(model, emb, mask, num_token_frames=1, polish=0.1, polish_passes=0)


def test_window_score_joins_the_likelihood_in_the_choice_of_candidates() -> None:
    model = tiny_model()
    emb, mask = text()
    prime = torch.randint(0, 16, (2, 1, 4, 4), generator=gen(0))
    k = 3
    kwargs = {"num_token_frames": 3, "steps": 4, "guidance": 2.0, "temperature": 2.0, "polish": 0.1}
    rows = [t.repeat_interleave(k, dim=0) for t in (emb, mask, prime)]
    draws = sample(model, rows[0], rows[1], prime=rows[2], generator=gen(5), **{**kwargs, "polish": 0.0})
    cond, choice = token_log_likelihoods(model, draws, model.prepare_context(rows[0], rows[1]))
    unlikely = cond < math.log(0.1)
    unlikely[:, :16] = False
    shown = torch.where(unlikely, choice, draws.reshape(2 * k, -1)).view_as(draws)  # what a pick would show
    seen: list[tuple[torch.Tensor, int]] = []

    def prefer_the_least_likely(ids: torch.Tensor, fixed: int) -> torch.Tensor:
        seen.append((ids.clone(), fixed))
        return -2 * cond.sum(-1)  # outweighs the likelihood: the least likely draw must win

    best = sample(model, emb, mask, prime=prime, candidates=k, generator=gen(5),
                  window_score=prefer_the_least_likely, **kwargs)
    assert len(seen) == 1 and seen[0][1] == 16 and torch.equal(seen[0][0], shown)  # scored as shown
    worst = cond.sum(-1).view(2, k).argmin(dim=-1)
    for b in range(2):
        assert torch.equal(best[b], shown[b * k + int(worst[b])])
    plain = sample(model, emb, mask, prime=prime, candidates=k, generator=gen(5), **kwargs)
    likeliest = cond.sum(-1).view(2, k).argmax(dim=-1)
    assert not torch.equal(worst, likeliest)  # so the score changed the choice
    for b in range(2):
        assert torch.equal(plain[b], shown[b * k + int(likeliest[b])])


def test_relevant_enough_keeps_candidates_near_the_most_relevant() -> None:
    relevance = torch.tensor([[10.0, 4.0, 6.0, -1.0], [-3.0, -1.0, -2.0, -5.0], [0.0, 0.0, 2.0, 1.0]])
    assert relevant_enough(relevance, 0.5).tolist() == [
        [True, False, True, False],
        [False, True, False, False],  # none relevant: the least irrelevant stays, so a choice is left
        [False, False, True, True],
    ]
    assert relevant_enough(relevance, 1.0).sum(-1).tolist() == [1, 1, 1]
    assert relevant_enough(relevance, 0.0).all()  # 0 = off


@pytest.mark.parametrize("floor", [0.5, 1.0])
def test_relevance_floor_passes_over_candidates_the_text_does_not_explain(floor: float) -> None:
    model = tiny_model()
    emb, mask = text()
    prime = torch.randint(0, 16, (2, 1, 4, 4), generator=gen(0))
    k = 4
    kwargs = {"num_token_frames": 3, "steps": 4, "guidance": 2.0, "temperature": 2.0}
    best = sample(model, emb, mask, prime=prime, candidates=k, relevance_floor=floor, generator=gen(5), **kwargs)
    plain = sample(model, emb, mask, prime=prime, candidates=k, generator=gen(5), **kwargs)
    # the same draws as one batch, scored directly: given the text, and given the null text
    rows = [t.repeat_interleave(k, dim=0) for t in (emb, mask, prime)]
    draws = sample(model, rows[0], rows[1], prime=rows[2], generator=gen(5), **kwargs)
    cond, _ = token_log_likelihoods(model, draws, model.prepare_context(rows[0], rows[1]))
    null, _ = token_log_likelihoods(model, draws, model.null_context(2 * k))
    relevance = (cond[:, 16:].sum(-1) - null[:, 16:].sum(-1)).view(2, k)  # drawn tokens only, not the prime
    eligible = relevant_enough(relevance, floor)
    scores = cond.sum(-1).view(2, k).masked_fill(~eligible, -math.inf)
    for b in range(2):
        assert torch.equal(best[b], draws[b * k + int(scores[b].argmax())])
        assert torch.equal(plain[b], draws[b * k + int(cond.sum(-1).view(2, k)[b].argmax())])
    if floor == 1.0:  # only the most relevant draw is left
        for b in range(2):
            assert torch.equal(best[b], draws[b * k + int(relevance[b].argmax())])
        assert not torch.equal(best, plain)  # here the likeliest draw is not the most relevant one
    assert torch.equal(best[:, :1], prime)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="relevance_floor"):
            sample(model, emb, mask, num_token_frames=1, relevance_floor=bad)


def test_tiny_model_learns_text_to_tokens() -> None:
    """4 fixed token sequences, each tied to its own random text, are learned and sampled back."""
    torch.manual_seed(0)
    model = MaskGit(
        TransformerConfig(
            dim=64, depth=2, heads=4, dim_head=16, max_token_frames=2,
            codebook_size=16, token_grid=(4, 4), text_dim=TEXT_DIM,
        )
    )
    targets = torch.randint(0, 16, (4, 2, 4, 4))
    texts = torch.randn(4, 3, TEXT_DIM)
    text_mask = torch.ones(4, 3, dtype=torch.bool)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    reps = 4
    model.train()
    for _ in range(300):
        loss, _metrics = maskgit_loss(
            model, targets.repeat(reps, 1, 1, 1), texts.repeat(reps, 1, 1), text_mask.repeat(reps, 1),
            cond_drop_prob=0.1, generator=g,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    out = sample(model, texts, text_mask, num_token_frames=2, steps=8, guidance=2.0, generator=gen(0))
    accuracy = (out == targets).float().mean().item()
    assert accuracy >= 0.9, f"sampled tokens match the trained sequences only {accuracy:.2%}"
    # continuation: given the first token-frame, the second follows
    cont = sample(
        model, texts, text_mask, num_token_frames=2, prime=targets[:, :1], steps=4, guidance=2.0, generator=gen(1)
    )
    assert (cont[:, 1] == targets[:, 1]).float().mean().item() >= 0.9
    # sampled hot, the model misses more; keeping the likeliest of 8 draws wins most of it back
    hot = {"num_token_frames": 2, "steps": 2, "guidance": 2.0, "temperature": 4.0}
    one = (sample(model, texts, text_mask, generator=gen(2), **hot) == targets).float().mean().item()
    eight = (sample(model, texts, text_mask, candidates=8, generator=gen(2), **hot) == targets).float().mean().item()
    assert eight > one + 0.05, f"8 candidates {eight:.2%} vs 1 draw {one:.2%}"
    # replacing each unlikely token by the model's choice given the others mends the same draws
    mended = (sample(model, texts, text_mask, polish=0.5, generator=gen(2), **hot) == targets).float().mean().item()
    assert mended > one + 0.05, f"polished {mended:.2%} vs drawn {one:.2%}"

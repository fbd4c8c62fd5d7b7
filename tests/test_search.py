"""Choosing among draws: candidates, polish and its passes, relevance floor, window scores, pseudo-likelihood."""

from __future__ import annotations

import math

import pytest
import torch
from sampling_models import TEXT_DIM, gen, text, tiny_model

from phenaki.config import TransformerConfig
from phenaki.models.maskgit import MaskGit
from phenaki.models.masking import maskgit_loss
from phenaki.sampling.search import (
    draw,
    pseudo_log_likelihood,
    relevant_enough,
    token_log_likelihoods,
)
from phenaki.sampling.settings import SamplingSettings

pytestmark = pytest.mark.usefixtures("one_thread")


def sample(model, emb, mask, *, num_token_frames, prime=None, generator=None, window_score=None,
           **values) -> torch.Tensor:
    """Draw with the search: `candidates` draws of every row, polished and the best kept."""
    return draw(model, (emb, mask), prime, SamplingSettings(**values), generator,
                num_token_frames=num_token_frames, window_score=window_score)


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

"""The MaskGIT decode loop on its own: priming, schedule, guidance batching, temperature, critic, determinism."""

from __future__ import annotations

import math

import pytest
import torch
from sampling_models import ForwardSpy, gen, text, tiny_model

from phenaki.sampling.decode import (
    condition,
    filter_logits,
    guidance_scales,
    masked_counts,
)
from phenaki.sampling.decode import sample as decode_sample
from phenaki.sampling.settings import SamplingSettings

pytestmark = pytest.mark.usefixtures("one_thread")


def sample(model, emb, mask, *, num_token_frames, prime=None, generator=None, progress=None, batch_size=None,
           **values) -> torch.Tensor:
    """One draw per row by the decode loop alone, with these settings."""
    s = SamplingSettings(**values)
    cond = condition(model, None if emb is None else (emb, mask), s, batch_size)
    return decode_sample(model, cond, prime, s, generator, num_token_frames=num_token_frames, progress=progress)


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
            generator=gen(2), progress=lambda s, n, ids: calls.append((s, n)),
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
    with pytest.raises(ValueError, match="critic_revise needs use_critic"):
        sample(tiny_model(critic=True), emb, mask, num_token_frames=1, critic_revise=True)

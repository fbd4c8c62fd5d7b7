"""MaskGit model, training-time masking and the MaskGIT loss."""

from __future__ import annotations

import math

import pytest
import torch

from phenaki.config import TransformerConfig
from phenaki.models.maskgit import MaskGit, critic_depth
from phenaki.models.masking import (
    SCHEDULES,
    continuation_prime,
    mask_schedule,
    maskgit_loss,
    random_mask,
    text_dropout,
)

TEXT_DIM = 32


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**overrides) -> TransformerConfig:
    base = {
        "dim": 64, "depth": 2, "heads": 4, "dim_head": 16, "max_token_frames": 3,
        "codebook_size": 16, "token_grid": (4, 4), "text_dim": TEXT_DIM,
    }
    base.update(overrides)
    return TransformerConfig(**base)


def tiny_model(seed: int = 0, **overrides) -> MaskGit:
    torch.manual_seed(seed)
    return MaskGit(tiny_config(**overrides)).eval()


def text(batch: int = 2, length: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, length, TEXT_DIM, generator=g)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 3:] = False  # first row padded
    return emb, mask


def ids(batch: int = 2, frames: int = 3, seed: int = 2, high: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, (batch, frames, 4, 4), generator=g)


# ----------------------------------------------------------------------------- model


def test_shapes_and_every_frame_count() -> None:
    model = tiny_model()
    emb, mask = text()
    for frames in (1, 2, 3):
        x = ids(frames=frames)
        x[0, 0, 0, 0] = model.mask_id
        out = model(x, emb, mask)
        assert out.shape == (2, frames, 4, 4, 16)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.full((1, 2, 4, 4), 17), "out of range"),
        (torch.full((1, 2, 4, 4), -1), "out of range"),
        (torch.zeros(1, 4, 4, 4, dtype=torch.long), "max_token_frames"),
        (torch.zeros(1, 2, 4, 5, dtype=torch.long), "token grid 4x5"),
        (torch.zeros(1, 2, 16, dtype=torch.long), r"\[B, T', H', W'\]"),
        (torch.zeros(1, 2, 4, 4), "integer"),
    ],
)
def test_clear_errors(bad: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_model()(bad)


def test_text_shape_errors() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="text embeddings"):
        model(ids(), torch.zeros(2, 5, TEXT_DIM + 1))
    with pytest.raises(ValueError, match="text mask shape"):
        model(ids(), torch.zeros(2, 5, TEXT_DIM), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch"):
        model(ids(batch=3), torch.zeros(2, 5, TEXT_DIM))


def test_padded_text_keys_are_ignored() -> None:
    model = tiny_model()
    emb, mask = text()
    x = ids()
    ref = model(x, emb, mask)
    changed = emb.clone()
    changed[0, 3:] = torch.randn(2, TEXT_DIM) * 100
    assert torch.allclose(model(x, changed, mask), ref, atol=1e-5)
    changed[0, 3:] = float("nan")
    assert torch.allclose(model(x, changed, mask), ref, atol=1e-5)
    # ... while the unpadded text does matter
    changed[0, :3] = torch.randn(3, TEXT_DIM)
    assert not torch.allclose(model(x, changed, mask)[0], ref[0], atol=1e-4)


def test_prepare_context_matches_plain_forward() -> None:
    model = tiny_model()
    emb, mask = text()
    x = ids()
    drop = torch.tensor([False, True])
    ctx = model.prepare_context(emb, mask, drop)
    assert torch.allclose(model(x, context=ctx), model(x, emb, mask, drop_text=drop), atol=1e-6)
    assert torch.allclose(model(x, context=ctx), model(x, context=ctx))  # reusable
    with pytest.raises(ValueError, match="either context"):
        model(x, emb, mask, context=ctx)


def test_dropped_text_is_the_null_condition() -> None:
    model = tiny_model()
    emb, mask = text()
    x = ids()
    drop = torch.tensor([True, False])
    out_a = model(x, emb, mask, drop_text=drop)
    out_b = model(x, torch.randn_like(emb), mask, drop_text=drop)
    assert torch.allclose(out_a[0], out_b[0], atol=1e-5)  # dropped row: text irrelevant
    assert not torch.allclose(out_a[1], out_b[1], atol=1e-4)
    null = model(x[:1], context=model.null_context(1))  # = the null condition, any padding
    assert torch.allclose(out_a[0], null[0], atol=1e-5)
    assert torch.allclose(model(x[:1]), null, atol=1e-6)  # no text at all = null text
    empty = torch.zeros_like(mask)  # all-padded text is treated as the null text, not NaN
    assert torch.allclose(model(x, emb, empty)[0], null[0], atol=1e-5)


def test_save_load_round_trip(tmp_path) -> None:
    model = tiny_model(critic=True)
    emb, mask = text()
    x = ids()
    model.save_pretrained(tmp_path / "ckpt")
    loaded = MaskGit.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    assert torch.equal(loaded(x, emb, mask), model(x, emb, mask))
    assert torch.equal(loaded.critic_logits(x, emb, mask), model.critic_logits(x, emb, mask))


def test_unconditional_model_ignores_text() -> None:
    model = tiny_model(cross_attend=False)
    emb, mask = text()
    x = ids()
    assert not model.conditional
    assert torch.allclose(model(x, emb, mask), model(x, torch.randn_like(emb), mask))


def test_bf16_autocast_forward() -> None:
    model = tiny_model()
    emb, mask = text()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ctx = model.prepare_context(emb, mask)
        out = model(ids(), context=ctx)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # a context made under autocast also works outside it
    assert torch.isfinite(model(ids(), context=ctx)).all()


# ----------------------------------------------------------------------------- critic


def test_critic_is_optional_and_trained_by_the_optimiser() -> None:
    assert tiny_model().critic is None
    with pytest.raises(ValueError, match="no token critic"):
        tiny_model().critic_logits(ids())
    model = tiny_model(critic=True).train()
    assert len(model.critic.blocks) == critic_depth(2) == 1
    critic_params = {id(p) for p in model.critic.parameters()} | {id(p) for p in model.to_critic.parameters()}
    assert critic_params <= {id(p) for p in model.parameters()}
    emb, mask = text()
    out = model.critic_logits(ids(), emb, mask)
    assert out.shape == (2, 3, 4, 4)

    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(("critic.", "to_critic."))}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss, metrics = maskgit_loss(model, ids(), emb, mask, generator=torch.Generator().manual_seed(0))
    loss.backward()
    opt.step()
    assert {"critic_loss", "critic_acc", "total_loss"} <= set(metrics)
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert "to_critic.weight" in changed and any(n.startswith("critic.blocks") for n in changed)


def test_a_critic_is_trained_onto_a_frozen_generator() -> None:
    """with_critic keeps the generator's outputs; critic_only leaves every generator weight without gradient."""
    model = tiny_model()
    emb, mask = text()
    judged = model.with_critic()
    assert judged.has_critic and judged.config.critic and not model.has_critic
    assert judged.with_critic() is judged
    assert torch.equal(judged(ids(), emb, mask), model(ids(), emb, mask))

    judged.train()
    loss, metrics = maskgit_loss(judged, ids(), emb, mask, generator=torch.Generator().manual_seed(0),
                                 critic_only=True)
    assert loss.item() == metrics["critic_loss"].item()
    assert "masked_acc" in metrics  # the generator's own accuracy is still reported
    loss.backward()
    for name, param in judged.named_parameters():
        learns = name.startswith(("critic.", "to_critic."))
        assert (param.grad is not None) == learns, name
    with pytest.raises(ValueError, match="no token critic"):
        maskgit_loss(model, ids(), emb, mask, critic_only=True)


def test_without_blocks_removes_exactly_the_named_blocks() -> None:
    """Dropping a block that adds nothing (all its projections zero) leaves the outputs as they
    were; every kept weight is copied, in order, in the model's own dtype."""
    model = tiny_model(depth=4)
    emb, mask = text()
    with torch.no_grad():
        for name, param in model.trunk.blocks[2].named_parameters():
            if "norm" not in name:
                param.zero_()
    smaller = model.without_blocks([2])
    assert smaller.config.depth == 3 and model.config.depth == 4 and not smaller.training
    torch.testing.assert_close(smaller(ids(), emb, mask), model(ids(), emb, mask))
    for new, old in zip(smaller.trunk.blocks, [model.trunk.blocks[i] for i in (0, 1, 3)]):
        for (name, a), b in zip(new.state_dict().items(), old.state_dict().values()):
            assert torch.equal(a, b), name
    assert torch.equal(smaller.to_logits.weight, model.to_logits.weight)
    assert torch.equal(smaller.null_text, model.null_text)

    two = model.without_blocks([3, 0, 3])  # order and repeats do not matter
    assert two.config.depth == 2
    assert torch.equal(two.trunk.blocks[0].attn_norm.weight, model.trunk.blocks[1].attn_norm.weight)
    half = tiny_model(depth=2).to(torch.bfloat16).without_blocks([1])
    assert half.to_logits.weight.dtype == torch.bfloat16 and half.config.depth == 1


@pytest.mark.parametrize(("drop", "message"), [
    ([], "no block"), ([2], "0..1"), ([-1], "0..1"), ([0, 1], "no transformer"),
])
def test_without_blocks_refuses_what_it_cannot_drop(drop, message) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_model().without_blocks(drop)


def test_without_blocks_refuses_a_model_with_a_critic() -> None:
    with pytest.raises(ValueError, match="token critic"):
        tiny_model(depth=4, critic=True).without_blocks([1])


# ----------------------------------------------------------------------------- masking


def test_schedules_endpoints() -> None:
    r = torch.tensor([0.0, 1.0])
    for name in SCHEDULES:
        g = mask_schedule(name)(r)
        assert torch.allclose(g, torch.tensor([1.0, 0.0]), atol=1e-6), name
    with pytest.raises(ValueError, match="unknown mask schedule 'cosin'"):
        mask_schedule("cosin")


def test_random_mask_follows_cosine_schedule() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(4000, 4, 8, 8, dtype=torch.long)  # 256 tokens each
    masked = random_mask(x, "cosine", g)
    frac = masked.float().mean(dim=(1, 2, 3))
    assert masked.flatten(1).sum(1).min() >= 1
    # E[cos(pi r / 2)] for r ~ U(0, 1) = 2 / pi (+ < 1/256 from the ceil)
    assert abs(frac.mean().item() - 2 / math.pi) < 0.015
    # linear: E[1 - r] = 1/2
    lin = random_mask(x, "linear", g).float().mean().item()
    assert abs(lin - 0.5) < 0.015


def test_random_mask_count_is_exact_and_primes_are_never_masked() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(500, 3, 4, 4, dtype=torch.long)
    prime = torch.randint(0, 3, (500,), generator=g)
    masked = random_mask(x, "cosine", g, prime_frames=prime)
    for b in range(500):
        p = int(prime[b])
        assert not masked[b, :p].any()
        assert masked[b, p:].sum() >= 1
    with pytest.raises(ValueError, match="prime_frames"):
        random_mask(x[:2], "cosine", g, prime_frames=3)
    # the masked count equals ceil(gamma(r) * N) for the same draw of r
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    r = torch.rand(2, generator=g1)
    counts = random_mask(x[:2], "cosine", g2).flatten(1).sum(1)
    expected = torch.ceil(torch.cos(r * math.pi / 2) * 48).clamp(min=1)
    assert torch.equal(counts, expected.long())


def test_temporal_masking_hides_later_token_frames_first() -> None:
    """Temporal samples keep the count of ordinary masking but hide later token-frames first,
    with a frontier about `temporal_spread` token-frames wide; primes stay given."""
    x = torch.zeros(2000, 6, 4, 4, dtype=torch.long)
    plain = random_mask(x, "cosine", torch.Generator().manual_seed(3))
    ordered = random_mask(x, "cosine", torch.Generator().manual_seed(3), temporal_prob=1.0, temporal_spread=1.0)
    assert torch.equal(plain.flatten(1).sum(1), ordered.flatten(1).sum(1))  # same r, same count
    per_frame = ordered.float().mean(dim=(2, 3))  # [B, T']
    assert (per_frame[:, 1:] >= per_frame[:, :-1] - 1e-6).float().mean() > 0.99  # later frames hide more
    # spread 1: a token-frame is fully hidden once the one before it has anything hidden
    partial = (per_frame > 0) & (per_frame < 1)
    assert partial.sum(1).max() <= 2
    wide = random_mask(x, "cosine", torch.Generator().manual_seed(3), temporal_prob=1.0, temporal_spread=3.0)
    assert ((wide.float().mean(dim=(2, 3)) > 0) & (wide.float().mean(dim=(2, 3)) < 1)).sum(1).float().mean() > \
        partial.sum(1).float().mean() + 0.5
    uniform_frames = plain.float().mean(dim=(2, 3))
    assert (uniform_frames[:, 0] - uniform_frames[:, -1]).abs().mean() < 0.1  # uniform masking: no such order
    half = random_mask(x, "cosine", torch.Generator().manual_seed(4), temporal_prob=0.5)
    first_last = half.float().mean(dim=(2, 3))
    share = ((first_last[:, -1] - first_last[:, 0]) > 0.5).float().mean().item()
    assert 0.3 < share < 0.55  # about half the samples are temporal (and most of those have a wide gap)
    prime = torch.full((2000,), 2)
    primed = random_mask(x, "cosine", torch.Generator().manual_seed(5), prime_frames=prime, temporal_prob=1.0)
    assert not primed[:, :2].any() and primed[:, -1].flatten(1).all(dim=1).float().mean() > 0.5
    with pytest.raises(ValueError, match="temporal mask probability"):
        random_mask(x, temporal_prob=1.5)
    with pytest.raises(ValueError, match="temporal_spread"):
        random_mask(x, temporal_prob=0.5, temporal_spread=0.0)


def test_text_dropout_rate() -> None:
    g = torch.Generator().manual_seed(0)
    assert abs(text_dropout(10_000, 0.1, g).float().mean().item() - 0.1) < 0.012
    assert not text_dropout(10_000, 0.0, g).any()
    assert text_dropout(100, 1.0, g).all()
    with pytest.raises(ValueError, match="probability"):
        text_dropout(4, 1.5, g)


def test_continuation_prime() -> None:
    g = torch.Generator().manual_seed(0)
    k = continuation_prime(10_000, 4, 0.3, g)
    assert abs((k > 0).float().mean().item() - 0.3) < 0.02
    assert set(k[k > 0].unique().tolist()) == {1, 2, 3}
    fixed = continuation_prime(1000, 4, 1.0, g, context_token_frames=2)
    assert (fixed == 2).all()
    assert not continuation_prime(100, 4, 0.0, g).any()
    assert not continuation_prime(100, 1, 1.0, g).any()  # nothing to continue from
    with pytest.raises(ValueError, match="context_token_frames"):
        continuation_prime(4, 3, 1.0, g, context_token_frames=3)


# ----------------------------------------------------------------------------- loss


def test_logits_of_chosen_positions_match_the_full_grid() -> None:
    """`only` runs the output layer on the chosen positions: the same logits as the full grid's."""
    model = tiny_model()
    emb, mask = text()
    x = ids()
    chosen = torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) < 0.4
    full = model(x, emb, mask)
    picked = model(x, emb, mask, only=chosen)
    assert picked.shape == (int(chosen.sum()), model.codebook_size)
    torch.testing.assert_close(picked, full[chosen], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="only must be a bool tensor"):
        model(x, emb, mask, only=chosen[:, :1])


def test_maskgit_loss_metrics_and_backward() -> None:
    model = tiny_model().train()
    emb, mask = text()
    loss, metrics = maskgit_loss(model, ids(), emb, mask, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert math.isfinite(loss.item())
    assert abs(loss.item() - math.log(16)) < 1.0  # untrained: about uniform
    assert {"loss", "masked_acc", "mask_ratio", "text_dropped", "prime_frac"} <= set(metrics)
    assert 0 < metrics["mask_ratio"].item() <= 1
    assert model.to_logits.weight.grad is not None
    with pytest.raises(ValueError, match="out of range"):
        maskgit_loss(model, torch.full((2, 3, 4, 4), 16), emb, mask)  # mask id is not a target


def _run_loss_capturing(model: MaskGit, x, emb, mask, p: float, seed: int):
    """maskgit_loss, returning (metrics, the model's input ids, its hidden states [B, N, dim]).

    The hidden states, not the logits: training runs the output layer on masked positions only."""
    seen = []
    handle = model.trunk.register_forward_hook(
        lambda mod, args, kwargs, out: seen.append((args[0], out)), with_kwargs=True
    )
    try:
        _, metrics = maskgit_loss(
            model, x, emb, mask, cond_drop_prob=p, generator=torch.Generator().manual_seed(seed)
        )
    finally:
        handle.remove()
    return metrics, *seen[0]


def test_maskgit_loss_dropped_rows_get_the_null_condition() -> None:
    model = tiny_model()
    emb, mask = text(batch=8)
    x = ids(batch=8)
    other = torch.randn_like(emb)
    metrics, inp, out_a = _run_loss_capturing(model, x, emb, mask, 0.5, seed=3)
    _, inp_b, out_b = _run_loss_capturing(model, x, other, mask, 0.5, seed=3)
    assert torch.equal(inp, inp_b)  # same seed: same masking and same dropped rows
    same = torch.tensor([torch.allclose(out_a[i], out_b[i], atol=1e-5) for i in range(8)])
    assert 0 < same.sum() < 8  # some rows dropped, some kept
    assert same.float().mean().item() == metrics["text_dropped"].item()
    null_context = model.null_context(8)
    null = model.trunk(inp, null_context.kv, null_context.attn_mask)
    assert torch.allclose(out_a[same], null[same], atol=1e-5)  # dropped rows: the null text
    assert not torch.allclose(out_a[~same], null[~same], atol=1e-4)
    _, _, never_a = _run_loss_capturing(model, x, emb, mask, 0.0, seed=3)
    _, _, never_b = _run_loss_capturing(model, x, other, mask, 0.0, seed=3)
    assert all(not torch.allclose(never_a[i], never_b[i], atol=1e-4) for i in range(8))


def test_maskgit_loss_continuation_keeps_prefix_unmasked() -> None:
    model = tiny_model()
    emb, mask = text()
    inputs = []
    handle = model.register_forward_pre_hook(lambda mod, args, kwargs: inputs.append(args[0]), with_kwargs=True)
    try:
        _, metrics = maskgit_loss(model, ids(), emb, mask, prime_frames=torch.tensor([2, 1]))
    finally:
        handle.remove()
    x = inputs[0]
    assert not (x[0, :2] == model.mask_id).any() and (x[0, 2:] == model.mask_id).any()
    assert not (x[1, :1] == model.mask_id).any()
    assert abs(metrics["prime_frac"].item() - 0.5) < 1e-6


def test_text_free_loss_and_zero_length_text() -> None:
    model = tiny_model()
    x = ids()
    empty = torch.zeros(2, 0, TEXT_DIM)
    null = model(x, context=model.null_context(2))
    assert torch.allclose(model(x, empty), null, atol=1e-6)
    loss, _ = maskgit_loss(model, x, None, None, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)

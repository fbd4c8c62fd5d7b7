"""`attend`: the explicit bf16 CPU path computes what SDPA computes, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from phenaki.models.attention import attend, uses_explicit_attention
from phenaki.models.cvivit import spatial_window_mask


def _qkv(n_q: int, n_k: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, 3, n_q, 16), (2, 3, n_k, 16), (2, 3, n_k, 16)]
    return [torch.randn(s, generator=g) for s in shapes]


def _padding_mask() -> torch.Tensor:
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[0, ..., 3:] = False  # first row: two padded keys
    return mask


CASES = {
    "full": (12, 12, {}),
    "causal": (12, 12, {"causal": True}),
    "window": (16, 16, {"mask": spatial_window_mask(4, 4, 1)}),
    "padded keys": (12, 5, {"mask": _padding_mask()}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_explicit_bf16_path_matches_sdpa_values_and_gradients(case: str) -> None:
    n_q, n_k, kwargs = CASES[case]
    ref = [t.clone().requires_grad_() for t in _qkv(n_q, n_k)]
    mask, causal = kwargs.get("mask"), kwargs.get("causal", False)
    out_ref = F.scaled_dot_product_attention(*ref, attn_mask=mask, is_causal=causal)
    grad = torch.randn_like(out_ref)
    out_ref.backward(grad)

    low = [t.detach().bfloat16().requires_grad_() for t in ref]
    assert uses_explicit_attention(low[0])
    out = attend(*low, **kwargs)
    out.backward(grad.bfloat16())
    torch.testing.assert_close(out.float(), out_ref.detach(), atol=0.05, rtol=0.05)
    for mine, theirs in zip(low, ref):
        torch.testing.assert_close(mine.grad.float(), theirs.grad, atol=0.08, rtol=0.08)
    if case == "padded keys":  # a padded key gets no weight, so no gradient
        assert low[1].grad[0, :, 3:].abs().max() == 0 and low[2].grad[0, :, 3:].abs().max() == 0


def test_causal_path_sees_no_later_key() -> None:
    q, k, v = (t.bfloat16().requires_grad_() for t in _qkv(8, 8))
    out = attend(q, k, v, causal=True)
    v2 = v.detach().clone()
    v2[..., 5:, :] += 10.0  # change only the last keys' values
    out2 = attend(q, k, v2.requires_grad_(), causal=True)
    assert torch.equal(out[..., :5, :], out2[..., :5, :])
    assert not torch.equal(out[..., 5:, :], out2[..., 5:, :])


@pytest.mark.parametrize("case", list(CASES))
def test_explicit_bf16_inference_matches_sdpa(case: str) -> None:
    """Sampling and decoding in bf16 take the same explicit path, without gradients."""
    n_q, n_k, kwargs = CASES[case]
    q, k, v = _qkv(n_q, n_k)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=kwargs.get("mask"), is_causal=kwargs.get("causal", False))
    low = [t.bfloat16() for t in (q, k, v)]
    with torch.no_grad():
        assert uses_explicit_attention(low[0])
        out = attend(*low, **kwargs)
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)


def test_fp32_uses_sdpa() -> None:
    q, k, v = _qkv(6, 6)
    assert not uses_explicit_attention(q.requires_grad_())
    with torch.no_grad():
        assert not uses_explicit_attention(q)
        out = attend(q, k, v)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))

"""Scaled dot-product attention for every transformer in the package, with one CPU exception.

`attend` is `F.scaled_dot_product_attention` everywhere except for bf16 tensors on a
CPU. There three explicit products are faster than torch's fused CPU kernel at this
package's sizes (384 tokens of 64 wide heads for MaskGit, 64-token frames and 6-token
columns of 32 wide heads for the tokenizer; see BENCHMARKS.md): its backward pass by
1.5-6x in training, and sampling a clip by about a fifth. So bf16 on a CPU takes the
explicit path: (q k^T) scaled, masked, softmax, times v, all in bf16 (softmax
accumulates in float32 internally). fp32, and every GPU, keep the fused kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["attend", "uses_explicit_attention"]


def uses_explicit_attention(q: Tensor) -> bool:
    """Whether `attend` takes the explicit path for `q`: bf16 on a CPU (training or inference)."""
    return q.device.type == "cpu" and q.dtype == torch.bfloat16


def attend(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, causal: bool = False,
           dropout: float = 0.0) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v over [..., heads, N, d] tensors.

    `mask` is bool (True = attend) and broadcasts to [..., N_q, N_k], as for SDPA;
    `causal` lets query i see keys 0..i. Every query must see at least one key.
    """
    if not uses_explicit_attention(q):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    if causal:
        n_q, n_k = scores.shape[-2:]
        tril = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril()
        mask = tril if mask is None else mask & tril
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    if dropout > 0:
        weights = F.dropout(weights, p=dropout)
    return weights @ v

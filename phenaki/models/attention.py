"""Scaled dot-product attention for every transformer in the package: two paths, one chosen per machine.

`attend` runs either `F.scaled_dot_product_attention` (torch's fused kernel) or the
explicit path: (q k^T) scaled, masked, softmax, times v, in the tensors' dtype (softmax
accumulates in float32 internally). Which is faster depends on the CPU, the dtype and
the shapes (BENCHMARKS.md): on an AMD EPYC with AVX512-BF16 the explicit path trained
1.5-6x faster in bf16 and sampled a clip about a fifth faster, on an Intel Xeon with AMX
the fused kernel wins at sampling, and on an AVX2-only CPU a bf16 explicit product is
emulated and 50x slower. Each attention layer therefore carries an `attention_path`
("sdpa", "explicit", or None for the built-in rule: explicit for bf16 on a CPU, else SDPA),
which `phenaki.kernels` sets by measuring. GPUs always take SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["attend", "uses_explicit_attention"]


def uses_explicit_attention(q: Tensor, path: str | None = None) -> bool:
    """Whether `attend` takes the explicit path for `q`: never on a GPU; on a CPU as `path` says,
    and without one (None) for bf16 only."""
    if q.device.type != "cpu":
        return False
    if path is not None:
        return path == "explicit"
    return q.dtype == torch.bfloat16


def attend(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, causal: bool = False,
           dropout: float = 0.0, path: str | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v over [..., heads, N, d] tensors.

    `mask` is bool (True = attend) and broadcasts to [..., N_q, N_k], as for SDPA;
    `causal` lets query i see keys 0..i. Every query must see at least one key.
    `path` picks the kernel on a CPU ("sdpa" | "explicit" | None: `uses_explicit_attention`).
    """
    if not uses_explicit_attention(q, path):
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

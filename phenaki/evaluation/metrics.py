"""Evaluation metrics for the tokenizer: reconstruction quality and codebook health.

Reconstruction metrics (`psnr`, `ssim`) take videos `[B, C, T, H, W]` or images
`[B, C, H, W]` in `[0, max_val]` and return one value per sample (`reduction="none"`)
or their mean. Codebook metrics take token ids of any shape and say how much of the
codebook a batch actually uses, which is the first thing to watch when a VQ collapses.
All return tensors (0-dim for scalars) so callers decide when to synchronise.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

__all__ = [
    "bits_per_pixel",
    "code_histogram",
    "codebook_perplexity",
    "codebook_usage",
    "perplexity_from_counts",
    "psnr",
    "ssim",
    "usage_from_counts",
]

Reduction = Literal["mean", "none"]


def _check_pair(a: Tensor, b: Tensor, name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: inputs differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim not in (4, 5):
        raise ValueError(
            f"{name}: expected videos [B, C, T, H, W] or images [B, C, H, W]; got shape {tuple(a.shape)}"
        )


def _reduce(values: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "none":
        return values
    if reduction == "mean":
        return values.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def psnr(a: Tensor, b: Tensor, max_val: float = 1.0, reduction: Reduction = "mean") -> Tensor:
    """Peak signal-to-noise ratio in dB, per sample over all its pixels (inf when identical).

    The mean is over per-sample PSNRs (the usual video-benchmark convention), computed
    in float64 so that tiny errors still give finite, accurate values.
    """
    _check_pair(a, b, "psnr")
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(dim=1)
    values = 10.0 * torch.log10(max_val**2 / mse)  # mse == 0 -> +inf, deliberately
    return _reduce(values.float(), reduction)


def _gaussian_window(size: int, sigma: float, channels: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g.expand(channels, 1, 1, size)  # depthwise kernel, row form


def _blur(x: Tensor, window: Tensor) -> Tensor:
    """Separable 'valid' gaussian filter (same as the reference SSIM, no padding)."""
    channels = x.shape[1]
    x = F.conv2d(x, window, groups=channels)
    return F.conv2d(x, window.transpose(2, 3), groups=channels)


def ssim(
    a: Tensor,
    b: Tensor,
    max_val: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    reduction: Reduction = "mean",
) -> Tensor:
    """Structural similarity (Wang et al. 2004: gaussian window 11, sigma 1.5), per sample.

    Videos are scored frame by frame and averaged over frames and channels.
    """
    _check_pair(a, b, "ssim")
    batch = a.shape[0]
    if a.ndim == 5:
        a = rearrange(a, "b c t h w -> (b t) c h w")
        b = rearrange(b, "b c t h w -> (b t) c h w")
    height, width = a.shape[-2:]
    if height < window_size or width < window_size:
        raise ValueError(
            f"ssim: frames of {height}x{width} are smaller than the {window_size}x{window_size} "
            "window; pass a smaller window_size"
        )
    a, b = a.double(), b.double()
    window = _gaussian_window(window_size, sigma, a.shape[1], a.dtype, a.device)
    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    mu_a, mu_b = _blur(a, window), _blur(b, window)
    var_a = _blur(a * a, window) - mu_a**2
    var_b = _blur(b * b, window) - mu_b**2
    cov = _blur(a * b, window) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    per_sample = (num / den).reshape(batch, -1).mean(dim=1)
    return _reduce(per_sample.float(), reduction)


def code_histogram(ids: Tensor, codebook_size: int, validate: bool = True) -> Tensor:
    """Counts of each code in `ids` (any shape), length `codebook_size`.

    `validate=False` skips the range check, which reads values back to the host; use
    it for ids that come straight from a quantizer (e.g. every training step on GPU).
    """
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise TypeError(f"ids must be an integer tensor, got {ids.dtype}")
    flat = ids.reshape(-1).long()
    if validate and flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= codebook_size):
        raise ValueError(
            f"ids must lie in [0, {codebook_size}): found min {int(flat.min())}, max {int(flat.max())}"
        )
    counts = torch.zeros(codebook_size, dtype=torch.long, device=ids.device)
    return counts.scatter_add_(0, flat, torch.ones_like(flat))


def usage_from_counts(counts: Tensor) -> Tensor:
    """Fraction of codes with a non-zero count."""
    return (counts > 0).float().mean()


def perplexity_from_counts(counts: Tensor) -> Tensor:
    """exp(entropy) of the normalised counts; 0 when there are no counts at all."""
    counts = counts.double()
    total = counts.sum()
    probs = counts / total.clamp_min(1)
    entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum()
    return torch.where(total > 0, entropy.exp(), torch.zeros_like(entropy)).float()


def codebook_usage(ids: Tensor, codebook_size: int) -> Tensor:
    """Fraction of the codebook that occurs at least once in `ids`."""
    return usage_from_counts(code_histogram(ids, codebook_size))


def codebook_perplexity(ids: Tensor, codebook_size: int) -> Tensor:
    """exp(entropy) of the code distribution in `ids`: the effective number of codes used.

    Equals the number of distinct codes when they are used equally often, and
    `codebook_size` at best.
    """
    return perplexity_from_counts(code_histogram(ids, codebook_size))


def bits_per_pixel(num_tokens: int, codebook_size: int, num_pixels: int) -> float:
    """Bits the token sequence spends per pixel (log2 of the codebook per token)."""
    if num_pixels <= 0:
        raise ValueError(f"num_pixels must be positive, got {num_pixels}")
    return num_tokens * math.log2(codebook_size) / num_pixels

"""Metrics: PSNR / SSIM on known cases, codebook statistics on known id sets."""

from __future__ import annotations

import math

import pytest
import torch

from phenaki.evaluation.metrics import (
    bits_per_pixel,
    code_histogram,
    codebook_perplexity,
    codebook_usage,
    psnr,
    ssim,
)


def clip(seed: int = 0, shape: tuple[int, ...] = (2, 3, 3, 16, 16)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.1


def test_psnr_identical_is_infinite() -> None:
    x = clip()
    assert math.isinf(float(psnr(x, x)))
    assert torch.isinf(psnr(x, x, reduction="none")).all()


def test_psnr_known_values() -> None:
    x = clip()
    assert float(psnr(x, x + 0.1)) == pytest.approx(20.0, abs=1e-4)
    assert float(psnr(x * 255, x * 255 + 25.5, max_val=255.0)) == pytest.approx(20.0, abs=1e-4)
    per_sample = psnr(x, torch.stack([x[0] + 0.1, x[1] + 0.01]), reduction="none")
    assert per_sample.shape == (2,)
    torch.testing.assert_close(per_sample, torch.tensor([20.0, 40.0]), rtol=0, atol=1e-3)
    assert float(psnr(x, torch.stack([x[0] + 0.1, x[1] + 0.01]))) == pytest.approx(30.0, abs=1e-3)


def test_psnr_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(clip(), clip()[:, :, :2])
    with pytest.raises(ValueError, match="reduction"):
        psnr(clip(), clip(), reduction="sum")  # type: ignore[arg-type]


def test_ssim_identical_is_one_and_noise_lowers_it() -> None:
    x = clip()
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    slight = (x + 0.02 * torch.randn_like(x)).clamp(0, 1)
    heavy = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    s_slight, s_heavy = float(ssim(x, slight)), float(ssim(x, heavy))
    assert 1.0 > s_slight > s_heavy
    assert ssim(x, heavy, reduction="none").shape == (2,)


def test_ssim_on_images_matches_one_frame_videos() -> None:
    a, b = clip(1, (2, 3, 16, 16)), clip(2, (2, 3, 16, 16))
    torch.testing.assert_close(ssim(a, b), ssim(a.unsqueeze(2), b.unsqueeze(2)))
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        ssim(a[..., :8, :8], b[..., :8, :8])


def test_ssim_of_a_constant_shift_follows_the_luminance_term() -> None:
    # shifting a flat image by d leaves structure intact: SSIM = (2 m (m+d) + c1) / (m^2 + (m+d)^2 + c1)
    a = torch.full((1, 1, 16, 16), 0.5)
    b = a + 0.1
    c1 = 0.01**2
    expected = (2 * 0.5 * 0.6 + c1) / (0.5**2 + 0.6**2 + c1)
    assert float(ssim(a, b)) == pytest.approx(expected, rel=1e-5)


def test_codebook_usage_and_perplexity_on_known_ids() -> None:
    half = torch.tensor([[0, 0], [1, 1]])
    assert float(codebook_usage(half, 4)) == pytest.approx(0.5)
    assert float(codebook_perplexity(half, 4)) == pytest.approx(2.0)
    every = torch.arange(8).view(2, 2, 2)
    assert float(codebook_usage(every, 8)) == pytest.approx(1.0)
    assert float(codebook_perplexity(every, 8)) == pytest.approx(8.0)
    single = torch.zeros(10, dtype=torch.long)
    assert float(codebook_usage(single, 1024)) == pytest.approx(1 / 1024)
    assert float(codebook_perplexity(single, 1024)) == pytest.approx(1.0)
    skewed = torch.tensor([0, 0, 0, 1])  # p = (3/4, 1/4)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(codebook_perplexity(skewed, 2)) == pytest.approx(math.exp(entropy), rel=1e-6)
    assert code_histogram(skewed, 3).tolist() == [3, 1, 0]


def test_codebook_stats_reject_bad_ids() -> None:
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 4\): found min 0, max 4"):
        codebook_usage(torch.tensor([0, 4]), 4)
    with pytest.raises(TypeError, match="integer"):
        codebook_perplexity(torch.tensor([0.0, 1.0]), 4)


def test_bits_per_pixel() -> None:
    # 11 frames of 64x64 -> 6 token-frames of 8x8 codes from a 1024 codebook
    assert bits_per_pixel(6 * 64, 1024, 11 * 64 * 64) == pytest.approx(6 * 64 * 10 / (11 * 64 * 64))
    assert bits_per_pixel(1, 2, 1) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="num_pixels"):
        bits_per_pixel(1, 2, 0)


def test_empty_ids_have_no_usage() -> None:
    empty = torch.zeros(0, dtype=torch.long)
    assert float(codebook_usage(empty, 8)) == 0.0
    assert float(codebook_perplexity(empty, 8)) == 0.0

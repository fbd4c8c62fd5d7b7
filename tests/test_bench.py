"""The benchmark's work accounting: FLOP counts and the fastest-possible ratio it reports."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.common import gflop
from bench.run import work_table


def test_gflop_counts_fused_cpu_attention_as_its_products() -> None:
    """torch has no FLOP formula for the fused CPU attention kernel; the count must not be zero."""
    q = torch.randn(2, 4, 96, 32)
    expected = 4 * 2 * 4 * 96 * 96 * 32 / 1e9  # q k^T and weights v, 2 FLOP per multiply-add
    for dtype in (torch.float32, torch.bfloat16):
        x = q.to(dtype)
        assert gflop(lambda: F.scaled_dot_product_attention(x, x, x)) == expected
    w = torch.randn(64, 32)
    assert gflop(lambda: q @ w.T) == 2 * 2 * 4 * 96 * 32 * 64 / 1e9


def test_work_table_bounds_the_ratio_by_the_matmul_peak() -> None:
    """Ours at the peak with nothing else: peer seconds / (our GFLOP / peak)."""
    base = {"kind": "train", "config": "demo", "batch": 16, "dtype": "fp32"}
    results = [
        {**base, "impl": "ours", "samples_per_s": 12.0, "samples_per_s_gflop": 10.0},
        {**base, "impl": "peer", "samples_per_s": 8.0, "samples_per_s_gflop": 16.0},
        {"kind": "matmul", "impl": "ours", "config": "-", "batch": 1, "dtype": "fp32", "tflops": 0.2},
    ]
    table = work_table(results, {"fp32": 0.2})
    # peer: 0.125 s per sample; ours at 0.2 TFLOP/s: 10 GFLOP -> 0.05 s; at most 2.5x
    assert "| train | demo | 16 | fp32 | samples_per_s | sample | 10 | 16 | 2.50x |" in table


def test_machine_names_the_isa_and_measures_the_product_speed() -> None:
    from bench.common import machine
    from bench.run import machine_line

    info = machine()
    assert set(info["isa"]) <= {"avx2", "avx512", "avx512_bf16", "amx"}
    assert info["fp32_matmul_gflops"] > 0 and info["bf16_matmul_gflops"] > 0
    line = machine_line(info)
    assert line.startswith(f"machine: {info['cpu']}, {info['cores']} cores") and "GFLOP/s fp32" in line


def test_profile_groups_the_ops_into_categories_that_add_up() -> None:
    """Op names land in their category, and a profiled guided forward accounts for its whole time."""
    from bench.profile import categorise, profile_ops, sample_forward
    from phenaki.config import TransformerConfig
    from phenaki.models.maskgit import MaskGit

    expected = {"aten::addmm": "matmul", "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
                "aten::_softmax": "softmax", "aten::silu": "elementwise", "aten::native_layer_norm": "norm",
                "aten::copy_": "copy/layout", "aten::_fused_adamw_": "optimizer",
                "aten::_foreach_mul_": "optimizer", "mkldnn::_linear_pointwise": "matmul",
                "MmBackward0": "python/framework", "aten::frobnicate": "other", "custom::op": "other"}
    assert {name: categorise(name) for name in expected} == expected
    torch.manual_seed(0)
    model = MaskGit(TransformerConfig(dim=32, depth=1, heads=2, dim_head=16, max_token_frames=2, codebook_size=64,
                                      token_grid=(4, 4), text_dim=16))
    fn = sample_forward(model, torch.randn(1, 5, 16), torch.ones(1, 5, dtype=torch.bool), token_frames=2)
    result = profile_ops(fn, repeat=2, top=5)
    shares = {name: row["share"] for name, row in result["categories"].items()}
    assert abs(sum(shares.values()) - 100) < 1e-6 and shares["matmul"] > 0
    assert result["categories"]["matmul"]["calls"] > 0 and 0 < len(result["top"]) <= 5
    assert all(op["category"] == categorise(op["op"]) for op in result["top"])


def test_the_story_case_draws_what_the_peer_draws(monkeypatch) -> None:
    """Ours and the peer must do the same work: one draw per window of the same steps and guidance
    (the config's own defaults, 36 steps and 4 candidates, would time three times as much)."""
    from bench import cases
    from phenaki.pipeline import Phenaki

    calls: list[dict] = []
    monkeypatch.setattr(Phenaki, "generate", lambda self, prompts, **kw: calls.append(kw))
    result = cases.story("ours", "demo", 1, "fp32", "cpu", repeat=1)
    assert calls and all(kw["steps"] == cases.SAMPLE_STEPS and kw["guidance"] == cases.GUIDANCE
                         and kw["candidates"] == 1 and kw["polish"] == 0 for kw in calls)
    assert result["frames"] == 23 and "story_s_gflop" in result

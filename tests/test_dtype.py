"""dtype 'auto' on the CPU: bf16 only where a bf16 product measurably beats fp32."""

import os
import subprocess
import sys

import pytest
import torch

from phenaki.utils import torch_utils
from phenaki.utils.torch_utils import resolve_dtype

CPU = torch.device("cpu")


def test_auto_follows_the_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch_utils, "cpu_bf16_speedup", lambda: 0.02)  # emulated bf16
    assert resolve_dtype("auto", CPU) == torch.float32
    monkeypatch.setattr(torch_utils, "cpu_bf16_speedup", lambda: 3.5)  # AMX
    assert resolve_dtype("auto", CPU) == torch.bfloat16
    assert resolve_dtype(None, CPU) == torch.bfloat16
    assert resolve_dtype("fp32", CPU) == torch.float32 and resolve_dtype(torch.float16, CPU) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'half'"):
        resolve_dtype("half", CPU)


def test_no_native_bf16_means_float32_without_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    torch_utils.cpu_bf16_speedup.cache_clear()
    monkeypatch.setattr(torch_utils, "_cpu_has_bf16_flags", lambda: False)
    try:
        assert torch_utils.cpu_bf16_speedup() == 0.0
        assert resolve_dtype("auto", CPU) == torch.float32
    finally:
        torch_utils.cpu_bf16_speedup.cache_clear()


def test_kernels_held_to_avx2_never_get_bf16() -> None:
    """With oneDNN held to AVX2 (no AVX512-BF16, no AMX) bf16 products are emulated, whatever the
    CPU's flags say: 'auto' must measure that and choose float32."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
           "ATEN_CPU_CAPABILITY": "avx2"}
    code = ("import torch; from phenaki.utils.torch_utils import resolve_dtype; "
            "print(resolve_dtype('auto', torch.device('cpu')))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "torch.float32", out.stderr

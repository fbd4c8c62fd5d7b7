"""Small torch helpers shared across the library: modes, devices and dtypes."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the call (no dropout), then every submodule's own flag back."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto' = bf16 where the hardware computes it fast: CUDA with bf16, or a CPU on which a bf16
    matrix product measurably beats fp32 (`cpu_bf16_speedup`), never one that emulates it."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_bf16_speedup() >= BF16_MIN_SPEEDUP else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return names[dtype]


BF16_MIN_SPEEDUP = 1.2
"""bf16 must beat fp32 by this much on the CPU's matrix products for 'auto' to choose it."""


ISA_FLAGS = {"avx2": "avx2", "avx512": "avx512f", "avx512_bf16": "avx512_bf16", "amx": "amx_bf16"}
"""The instruction sets that decide our kernels: their names here, and their /proc/cpuinfo flags."""


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, tuple[str, ...]]:
    """The CPU's model name and which of `ISA_FLAGS` it has, from /proc/cpuinfo (read once; the
    platform's name and none where there is no such file): what kernel choices depend on."""
    import platform

    name = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return name, ()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), name)
    flags = set(next((line for line in lines if line.startswith("flags")), "").split())
    return name, tuple(isa for isa, flag in ISA_FLAGS.items() if flag in flags)


def _cpu_has_bf16_flags() -> bool:
    return bool({"avx512_bf16", "amx"} & set(cpu_info()[1]))


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup(size: int = 384, repeat: int = 5) -> float:
    """fp32 time / bf16 time of one square matrix product on this CPU, measured once per process.

    The CPU flags are not enough: a machine with AMX whose kernels are held to AVX2
    (ONEDNN_MAX_CPU_ISA, as on many containers and older libraries) runs bf16 products 60x
    slower than fp32, in emulation. 0 without native bf16 (nothing is measured then).
    """
    if not _cpu_has_bf16_flags():
        log.info("dtype auto: no native bf16 on this CPU (no avx512_bf16 / amx_bf16): float32")
        return 0.0
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        x @ y  # first call: kernel selection and caches
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - start)
        return min(times)

    fp32 = best(a, b)
    bf16 = best(a.bfloat16(), b.bfloat16())
    speedup = fp32 / max(bf16, 1e-9)
    log.info("dtype auto: a %d^3 bf16 product runs %.2fx as fast as fp32 on this CPU: %s", size, speedup,
             "bfloat16" if speedup >= BF16_MIN_SPEEDUP else "float32")
    return speedup

"""Shared pieces of the benchmarks: configs, the peer's import, timing, memory, machine info."""

from __future__ import annotations

import importlib.machinery
import platform
import resource
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"demo": ROOT / "configs" / "shapes_demo.yaml", "paper": ROOT / "configs" / "phenaki_paper.yaml"}
# the paper's T5-XXL width; the demo model's scratch text encoder width
TEXT_DIM = {"demo": 256, "paper": 4096}
TEXT_LEN = 16


def load(config: str, transformer_depth: int | None = None) -> Any:
    """The resolved project config for `config` (demo or paper), depth optionally reduced."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from phenaki.config import load_config

    cfg = load_config(CONFIGS[config])
    cfg.resolve(text_dim=TEXT_DIM[config])
    if transformer_depth:
        cfg.transformer.depth = transformer_depth
    return cfg


def import_peer(peer: str) -> None:
    """Make `phenaki_pytorch` importable from a `pip install --no-deps --target` folder.

    Its torchvision import (used only by the VGG loss, off here) gets an empty stub,
    and the package's __init__ and T5 wrapper are bypassed: the benchmarks pass
    random text embeddings instead.
    """
    stub = types.ModuleType("torchvision")
    stub.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    sys.modules.setdefault("torchvision", stub)
    package = types.ModuleType("phenaki_pytorch")
    package.__path__ = [str(Path(peer) / "phenaki_pytorch")]
    sys.modules["phenaki_pytorch"] = package
    # its T5 wrapper is replaced by random embeddings of the same width (no weights here)
    t5 = types.ModuleType("phenaki_pytorch.t5")
    t5.DEFAULT_T5_NAME = "google/t5-v1_1-base"
    t5.get_encoded_dim = lambda name: 768
    t5.t5_encode_text = lambda *args, **kwargs: None
    sys.modules["phenaki_pytorch.t5"] = t5
    if peer not in sys.path:
        sys.path.insert(0, peer)


def best_of(fn: Callable[[], object], repeat: int, sync: Callable[[], None] = lambda: None) -> float:
    """Seconds of the fastest of `repeat` calls, after one warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def gflop(fn: Callable[[], object]) -> float:
    """GFLOP of one call of `fn`: its matrix products, attention and convolutions, as torch counts them.

    The same count for ours and the peer shows whether a speed ratio comes from doing less
    work or from doing the same work with less overhead. Attention runs on SDPA's math
    backend while counting: torch has no FLOP formula for its fused CPU kernel, which would
    count as zero; the math backend's products are the same work.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, sdpa_kernel([SDPBackend.MATH]):
        fn()
    return counter.get_total_flops() / 1e9


def peak_memory_mb(device: str) -> float:
    """Peak resident memory of this process (CPU) or peak allocated CUDA memory."""
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import os

    import torch

    from phenaki.utils.torch_utils import cpu_info

    info = {
        "cpu": cpu_info()[0],
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    info.update(cpu_features())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cpu_features(size: int = 1024) -> dict[str, Any]:
    """The instruction sets that decide our kernels, what torch will use, and the measured
    fp32 / bf16 product speed (GFLOP/s, one size^3 product, all threads): the machine's own
    yardstick, so each figure can be read against what the machine can do."""
    import torch

    from phenaki.utils.torch_utils import cpu_bf16_speedup, cpu_info

    info: dict[str, Any] = {"isa": list(cpu_info()[1]),
                            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                            "threads": torch.get_num_threads()}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        seconds = best_of(lambda: a @ b, 3)
        info[f"{name}_matmul_gflops"] = round(2 * size**3 / seconds / 1e9, 1)
    info["auto_dtype_bf16_speedup"] = round(cpu_bf16_speedup(), 2)
    return info

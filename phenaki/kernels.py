"""Which kernels run fastest on this machine, chosen by measurement and remembered per machine.

The fastest way to run the same model differs between CPUs. On an Intel Xeon with AMX,
torch's fused attention kernel (SDPA) beats three explicit products in bf16; on an AMD
EPYC with AVX512-BF16 the explicit products sampled a clip about a fifth faster; on an
AVX2-only CPU, fused SDPA wins in fp32 while a bf16 explicit product runs 50x slower (it
is emulated). Small batch-1 forwards may also run faster on fewer intra-op threads where
two "cores" are one core's hyper-threads. So nothing here is guessed from CPU flags: like
`cudnn.benchmark`, the first use of a model at a shape times the candidates on that very
model and shape, keeps the fastest, and writes the choice to a per-user cache so later
runs start at once.

    kernels="auto"      measure (first use per machine, model, dtype and shape), then cache
    kernels="sdpa"      force torch's fused attention kernel everywhere
    kernels="explicit"  force the explicit products everywhere
    kernels="default"   no measuring: bf16 on a CPU takes the explicit path, all else SDPA

`PHENAKI_KERNELS` gives the default for a process (the argument of `Phenaki`, the trainers
and `phenaki-sample --kernels` take precedence); `PHENAKI_KERNEL_CACHE` moves the cache
file (default `$XDG_CACHE_HOME/phenaki/kernels.json`). GPUs always take SDPA.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import KERNELS, to_dict
from .utils.torch_utils import cpu_info

log = logging.getLogger(__name__)

__all__ = ["KERNELS", "KernelChoice", "KernelError", "apply", "cache_path", "machine_fingerprint",
           "resolve_kernels", "set_attention_path", "tune", "tune_sampling", "tune_training", "use_threads"]

ATTENTION_PATHS = ("sdpa", "explicit")
MARGIN = 0.05
"""A candidate other than the default (SDPA at all threads) must be this much faster to be chosen:
timing noise alone then never flips the choice, and with it the numbers a model draws."""


class KernelError(ValueError):
    """A kernel setting that does not exist."""


def resolve_kernels(kernels: str | None) -> str:
    """The kernel mode to use: the caller's, else `PHENAKI_KERNELS`, else auto; checked once here."""
    mode = kernels if kernels is not None else os.environ.get("PHENAKI_KERNELS", "auto")
    mode = str(mode).strip().lower()
    if mode not in KERNELS:
        source = "kernels" if kernels is not None else "PHENAKI_KERNELS"
        raise KernelError(f"{source}: unknown kernel mode {mode!r}; choose from {', '.join(KERNELS)}")
    return mode


@dataclass(frozen=True)
class KernelChoice:
    """What one model runs with: its attention path and intra-op threads (0 = leave torch's as they are)."""

    attention: str | None  # "sdpa" | "explicit" | None (the built-in rule: explicit for bf16 on a CPU)
    threads: int = 0
    measured: bool = False  # timed here (or read from the cache of such a timing), not forced


def set_attention_path(model: nn.Module, path: str | None) -> None:
    """Point every attention layer of `model` at `path` (None: the built-in rule)."""
    if path is not None and path not in ATTENTION_PATHS:
        raise KernelError(f"attention path must be one of {', '.join(ATTENTION_PATHS)}, got {path!r}")
    for module in model.modules():
        if hasattr(module, "attention_path"):
            module.attention_path = path


@contextlib.contextmanager
def use_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to `threads` for the block (0: unchanged), then restored."""
    before = torch.get_num_threads()
    if threads and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def apply(choice: KernelChoice, models: Sequence[nn.Module]) -> None:
    """Give `models` the choice's attention path (threads are applied around each call, `use_threads`)."""
    for model in models:
        set_attention_path(model, choice.attention)


# ----------------------------------------------------------------------------- the cache


def cache_path() -> Path:
    """Where measured choices are kept: `PHENAKI_KERNEL_CACHE`, else the user's cache folder."""
    explicit = os.environ.get("PHENAKI_KERNEL_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "phenaki" / "kernels.json"


_ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR")


def machine_fingerprint() -> dict[str, Any]:
    """What a choice depends on besides the model: the CPU, its flags, torch and any ISA restriction."""
    cpu, isa = cpu_info()
    return {"cpu": cpu, "isa": list(isa), "cores": os.cpu_count(), "torch": torch.__version__,
            "capability": torch.backends.cpu.get_cpu_capability(),
            "restricted": {k: os.environ[k] for k in _ISA_ENV if k in os.environ}}


_lock = threading.Lock()
_memory: dict[str, KernelChoice] = {}


def _entry_key(case: dict[str, Any]) -> str:
    blob = json.dumps({"machine": machine_fingerprint(), "case": case}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("kernel cache %s is unreadable (%s): measuring again", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, key: str, record: dict[str, Any]) -> None:
    """Add one record; a temporary file renamed into place, so a reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[key] = record
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as exc:  # a read-only home is no reason to fail a run
        log.warning("could not write the kernel cache %s (%s): the choice holds for this process only", path, exc)


# ----------------------------------------------------------------------------- measuring


BUSY_CORES = 0.3
"""Other processes using more than this many cores while measuring make the timings those of a
shared machine (fewer threads win there): the choice is then not cached for later runs."""


class OtherLoad:
    """CPU time other processes used while the block ran, in cores (Linux /proc/stat; 0 elsewhere).

    Timings taken beside another busy process favour fewer threads; caching them would keep
    a quiet machine on one thread for good."""

    cores: float = 0.0

    @staticmethod
    def _busy() -> float | None:
        try:
            fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> "OtherLoad":
        self._start = (self._busy(), time.process_time(), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        busy, cpu, wall = self._busy(), time.process_time(), time.perf_counter()
        if busy is None or self._start[0] is None:
            return
        others = (busy - self._start[0]) - (cpu - self._start[1])
        self.cores = max(0.0, others / max(wall - self._start[2], 1e-6))


def _time(run: Callable[[], object], repeat: int) -> float:
    """Best of `repeat` timed calls after a warm-up; a call slower than a fifth of a second is timed once."""
    start = time.perf_counter()
    run()
    if time.perf_counter() - start > 0.2:
        repeat = 1
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def thread_candidates() -> list[int]:
    """All of torch's threads, then halves down to one: 2 -> [2, 1], 16 -> [16, 8, 4, 2, 1]."""
    counts, n = [], torch.get_num_threads()
    while n >= 1:
        counts.append(n)
        n //= 2
    return counts


def tune(case: dict[str, Any], run: Callable[[], object], models: Sequence[nn.Module], *, mode: str | None = "auto",
         device: torch.device | str = "cpu", threads: bool = True, repeat: int = 3) -> KernelChoice:
    """The fastest (attention path, threads) for `run` on `models`, measured once per machine and `case`.

    `case` names what is timed (model config, dtype, shapes, ...): a new case is measured,
    a known one read back. `run` must be repeatable and side-effect free (random inputs of
    the real shapes). The default (SDPA, all threads) is kept unless a candidate beats it by
    `MARGIN`. Forced modes and GPUs measure nothing.
    """
    mode = resolve_kernels(mode)
    if torch.device(device).type != "cpu" or mode in ("sdpa", "explicit"):
        choice = KernelChoice("sdpa" if torch.device(device).type != "cpu" else mode)
        apply(choice, models)
        return choice
    if mode == "default":
        choice = KernelChoice(None)
        apply(choice, models)
        return choice
    case = {**case, "threads_tuned": threads, "threads_now": torch.get_num_threads()}
    key = _entry_key(case)
    with _lock:
        choice = _memory.get(key)
        if choice is None:
            record = _read_cache(cache_path()).get(key)
            if isinstance(record, dict) and record.get("attention") in ATTENTION_PATHS:
                choice = KernelChoice(record["attention"], int(record.get("threads", 0)), measured=True)
        if choice is None:
            with OtherLoad() as load:
                choice, times = _measure(run, models, threads, repeat)
            log.info("kernels for %s: %s at %s threads (%s)", case.get("what", "model"), choice.attention,
                     choice.threads or torch.get_num_threads(),
                     ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in times.items()))
            if load.cores > BUSY_CORES:  # a choice made on a busy machine holds for this process only
                log.info("kernels: other processes kept %.1f cores busy while measuring; the choice is not "
                         "cached", load.cores)
            else:
                _write_cache(cache_path(), key, {**asdict(choice), "case": case, "times_ms": {
                    k: round(v * 1e3, 3) for k, v in times.items()}, "date": time.strftime("%Y-%m-%d")})
        _memory[key] = choice
    apply(choice, models)
    return choice


def _measure(run: Callable[[], object], models: Sequence[nn.Module], threads: bool,
             repeat: int) -> tuple[KernelChoice, dict[str, float]]:
    """SDPA at each thread count, then the explicit path at the best count: the two choices hardly
    interact, and each timing of a large sampling batch costs a second."""
    counts = thread_candidates() if threads else [torch.get_num_threads()]
    times: dict[str, float] = {}

    def timed(path: str, count: int) -> float:
        apply(KernelChoice(path), models)
        with use_threads(count):
            times[f"{path}@{count}"] = _time(run, repeat)
        # anything but the default (SDPA, all threads) must win by the margin
        return times[f"{path}@{count}"] * (1 if (path, count) == ("sdpa", counts[0]) else 1 + MARGIN)

    scored = {("sdpa", count): timed("sdpa", count) for count in counts}
    best_count = min(scored, key=scored.__getitem__)[1]
    scored[("explicit", best_count)] = timed("explicit", best_count)
    path, count = min(scored, key=scored.__getitem__)
    return KernelChoice(path, count if count != counts[0] else 0, measured=True), times


def _autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def tune_sampling(transformer: nn.Module, tokenizer: nn.Module, *, rows: int, batch: int, token_frames: int,
                  text_len: int, dtype: torch.dtype, device: torch.device | str = "cpu",
                  mode: str | None = "auto") -> KernelChoice:
    """Attention path and threads for sampling: the transformer's forward over `batch` rows of
    `token_frames` (guided rows and candidates included) picks both; the tokenizer's decode of
    `rows` clips then picks its own path at those threads. Random inputs of the real shapes, built
    only when something is measured: a known choice costs `generate` nothing but a lookup."""
    device = torch.device(device)
    cfg = transformer.config  # type: ignore[attr-defined]
    grid = (token_frames, *transformer.token_grid)  # type: ignore[attr-defined]

    @functools.cache
    def inputs() -> tuple[torch.Tensor, torch.Tensor, Any]:
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, transformer.codebook_size, (batch, *grid), generator=generator)  # type: ignore[attr-defined]
        codes = ids[:rows].to(device)
        ids = ids.masked_fill(torch.rand(ids.shape, generator=generator) < 0.5, transformer.mask_id).to(device)
        emb = torch.randn(batch, text_len, cfg.text_dim, generator=generator).to(device)
        with torch.no_grad(), _autocast(device, dtype):
            context = transformer.prepare_context(emb, torch.ones(batch, text_len, dtype=torch.bool, device=device))
        return ids, codes, context

    def forward() -> None:
        ids, _, context = inputs()
        with torch.no_grad(), _autocast(device, dtype):
            transformer(ids, context=context)

    def decode() -> None:
        with torch.no_grad(), _autocast(device, dtype):
            tokenizer.decode(inputs()[1])  # type: ignore[attr-defined]

    common = {"dtype": str(dtype), "grid": grid}
    choice = tune({"what": "sampling forward", "model": to_dict(cfg), "batch": batch, "text": text_len, **common},
                  forward, [transformer], mode=mode, device=device)
    with use_threads(choice.threads):
        tune({"what": "tokenizer decode", "model": to_dict(tokenizer.config), "batch": rows, **common},  # type: ignore[attr-defined]
             decode, [tokenizer], mode=mode, device=device, threads=False)
    return choice


def tune_training(model: nn.Module, step: Callable[[], torch.Tensor], case: dict[str, Any], *,
                  mode: str | None = "auto", device: torch.device | str = "cpu", threads: bool = True) -> KernelChoice:
    """Attention path (and threads) for training: `step()` returns a loss on a real-shaped batch, and
    forward plus backward are timed; gradients are cleared after each timing."""
    def run() -> None:
        step().backward()
        model.zero_grad(set_to_none=True)

    return tune({"what": "training step", **case}, run, [model], mode=mode, device=device, threads=threads)


def clear_memory() -> None:
    """Forget this process's choices (tests; a changed cache file)."""
    with _lock:
        _memory.clear()

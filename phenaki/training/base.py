"""What every trainer shares: accelerate setup, schedules, EMA, exact resume.

The trainers (tokenizer, MaskGIT, text-video matcher) subclass `Trainer` and only say how
to compute a loss and a preview. Everything that makes a run trustworthy lives here once:

- accelerate for devices, mixed precision (bf16 on CPU and GPU), DDP and gradient
  accumulation; gradients clipped, LR warm-up then cosine decay, EMA weights;
- a data order that depends only on (seed, sample position), so a resumed run reads
  exactly the samples the uninterrupted run would have read;
- checkpoints holding the full state (models, EMA, optimisers, schedulers, RNG,
  step) written atomically, with a record of their checksums; tensors in safetensors,
  optimiser/RNG state loaded back with `torch.load(weights_only=True)` only: nothing
  arbitrary is unpickled;
- training state is never lost: `--resume latest` verifies the newest checkpoint and
  falls back, with a warning naming the damage, to the newest intact one; pruning
  never deletes the checkpoint just written; what a killed run left half-written
  (temporary files, a checkpoint set aside mid-swap) is cleaned up or put back when
  the next run starts; a checkpoint that cannot be written (a full disk) is a
  `CheckpointWriteError` naming it, with the earlier checkpoints untouched;
- only the main process writes checkpoints, previews and logs;
- FSDP runs (accelerate's FSDP plugin) save and resume completely too: each process writes its
  shard of the model, the optimiser state and the EMA through accelerate's FSDP checkpoint
  functions (torch.distributed.checkpoint), the rest is written as above, and the final model
  is gathered into the usual single-file export. torch.distributed.checkpoint reads each
  part's index (`.metadata`) with pickle, so those files' hashes are recorded in the
  checkpoint and checked before anything is read. On a machine without CUDA, an FSDP launch
  config trains with torch's FSDP on CPU (gloo), so the sharded path can be tried anywhere.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import itertools
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from packaging.version import Version
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from ..checkpoint import load_state_dict, read_json, save_state_dict, write_json
from ..config import Config, TrainConfig, to_dict
from ..integrity import CheckpointError, record_folder, verify_folder
from ..kernels import KernelChoice, resolve_kernels, tune_training, use_threads
from ..utils.fileio import (
    atomic_write_dir,
    clean_temporaries,
    recover_dir,
    remove_tree,
    temp_name,
)

log = logging.getLogger(__name__)

STEP_DIR_RE = re.compile(r"^step-(\d+)$")
STATE_FILE = "state.json"  # a checkpoint's step and config; its presence marks a checkpoint directory
EMA_FILE = "ema.safetensors"  # a checkpoint's EMA weights


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to `min_ratio` at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def adamw_fused_kwargs(device: torch.device) -> dict[str, bool]:
    """`fused=True` for AdamW where the kernel exists (CUDA; CPU since torch 2.4): one pass over
    each parameter instead of a dozen elementwise ops, 6-7 ms of the demo tokenizer's 0.35 s
    CPU step."""
    if device.type not in ("cpu", "cuda"):
        return {}
    if device.type == "cpu" and Version(torch.__version__.split("+")[0]) < Version("2.4"):
        return {}
    return {"fused": True}


class EMA:
    """Exponential moving average of a model's parameters (fp32 shadow copy).

    Buffers (e.g. codebooks updated by EMA inside the quantizer) are copied as they
    are, since averaging them again would double-smooth them. Given the update's
    number, the decay warms up as min(decay, (1 + n) / (10 + n)): without it, after
    n updates a share decay**n of the average is still the random initialisation
    (37% after 1000 steps at 0.999), which spoils previews and short runs.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
        self.param_names = {name for name, _ in model.named_parameters()}

    def decay_at(self, step: int | None) -> float:
        """The decay for update number `step` (0-based); None: the configured decay."""
        return self.decay if step is None else min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        decay = self.decay_at(step)
        for key, value in model.state_dict().items():
            shadow = self.shadow[key]
            if shadow.device != value.device:  # the model moved (accelerate.prepare put it on the GPU)
                shadow = self.shadow[key] = shadow.to(value.device)
            if key in self.param_names and value.is_floating_point():
                shadow.lerp_(value.detach().float(), 1.0 - decay)
            else:
                shadow.copy_(value.detach())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise ValueError(f"EMA state is missing {sorted(missing)[:5]}")
        self.shadow = {k: state[k].float() if state[k].is_floating_point() else state[k] for k in self.shadow}

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into `model` (e.g. a copy used for export)."""
        own = model.state_dict()
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in self.shadow.items()})


class ShardedEMA(EMA):
    """The EMA of an FSDP-wrapped model, kept on each process for its own shard of the parameters.

    Under FSDP a process holds only its slice of each parameter, so the average is kept for
    that slice (no process ever holds the whole model). Buffers are replicated by FSDP and not
    averaged (as in `EMA`). The whole averaged model exists only when `gather` assembles it on
    the main process, for a preview or the export; `copy_to` then works as `EMA.copy_to`.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:  # pylint: disable=super-init-not-called
        self.decay = decay
        self.params = dict(model.named_parameters())  # the local shards (views FSDP keeps up to date)
        self.shadow = {k: p.detach().float().clone() for k, p in self.params.items()}
        self.param_names = set(self.params)
        self.full: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def update(self, model: nn.Module | None = None, step: int | None = None) -> None:
        decay = self.decay_at(step)
        for key, param in self.params.items():
            self.shadow[key].lerp_(param.detach().float(), 1.0 - decay)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged shards in the model's parameters for the duration (every process at once)."""
        saved = {k: p.detach().clone() for k, p in self.params.items()}
        try:
            with torch.no_grad():
                for key, param in self.params.items():
                    param.data.copy_(self.shadow[key].to(param.dtype))
            yield
        finally:
            with torch.no_grad():
                for key, param in self.params.items():
                    param.data.copy_(saved[key])

    def take_from_model(self) -> None:
        """Make the model's current shards the average (after loading averaged weights into it)."""
        self.shadow = {k: p.detach().float().clone() for k, p in self.params.items()}

    def gather(self, accelerator: Any, model: nn.Module) -> None:
        """Assemble the whole averaged model on the main process (a collective: every process calls it)."""
        with self.swapped_in():
            state = full_state_dict(accelerator, model)
        self.full = {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu() for k, v in state.items()} \
            if accelerator.is_main_process else None

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.full is None:
            raise RuntimeError("the sharded EMA is not gathered: call gather() on every process first")
        return dict(self.full)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        raise RuntimeError("a sharded EMA is loaded through the model (Trainer.load_checkpoint), not from one file")

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        own = model.state_dict()
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in self.state_dict().items()})


def fsdp_plugin(accelerator: Any) -> Any:
    """The accelerator's FSDP plugin when the run is sharded with FSDP, else None."""
    from accelerate.utils import DistributedType

    return accelerator.state.fsdp_plugin if accelerator.distributed_type == DistributedType.FSDP else None


def full_state_dict(accelerator: Any, model: nn.Module) -> dict[str, torch.Tensor]:
    """A prepared model's whole weights. Under FSDP every process must call it and the main process
    gets them ({} elsewhere): on GPUs gathered into CPU memory (accelerate's `get_state_dict`), on
    CPU gathered in place (torch's CPU offload of an FSDP state dict on CPU hands back freed memory)."""
    plugin = fsdp_plugin(accelerator)
    if plugin is None or plugin.fsdp_version != 1 or accelerator.device.type != "cpu":
        return accelerator.get_state_dict(model)
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    config = FullStateDictConfig(offload_to_cpu=False, rank0_only=True)
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, config):
        state = model.state_dict()
    return state if accelerator.is_main_process else {}


def _fsdp_on_cpu(accelerator: Any, mixed_precision: str) -> None:
    """Run an FSDP launch config on a machine without CUDA with torch's FSDP on CPU (gloo).

    accelerate enables FSDP only on accelerators: on CPU it would quietly train DDP instead.
    torch's FSDP runs on CPU, so the project's trainers switch the run to it, keeping one code
    path from a laptop to a GPU cluster (as they do for DDP, see `cpu_only`).
    """
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")
    if not wants_fsdp or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* settings of the launch config
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):
        shared["distributed_type"] = DistributedType.FSDP
        shared["device"] = torch.device("cpu")
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    log.info("FSDP on CPU: %d processes, one gloo group", accelerator.num_processes)


def _shard_metadata(folder: Path) -> dict[str, str]:
    """SHA-256 of the hidden index files (`.metadata`) in a checkpoint's FSDP parts."""
    from ..integrity import file_sha256

    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.glob("*.fsdp/**/.*")) if p.is_file()}


@torch.no_grad()
def _init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give a fresh optimiser its per-parameter state (zeros) without changing a weight: a step at
    learning rate 0 on zero gradients. Sharded optimiser state is read into the state the optimiser
    already has, so one that has not stepped yet would resume with its moments lost."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    if inner.state:
        return
    lrs = [group["lr"] for group in inner.param_groups]
    for group in inner.param_groups:
        group["lr"] = 0.0
        for param in group["params"]:
            if param.requires_grad and param.grad is None:
                param.grad = torch.zeros_like(param)
    inner.step()
    for group, lr in zip(inner.param_groups, lrs):
        group["lr"] = lr
    inner.zero_grad(set_to_none=True)


def _broadcast_weights(model: nn.Module) -> None:
    """Give every process rank 0's weights (what `sync_module_states` does on GPUs)."""
    for tensor in model.state_dict().values():
        torch.distributed.broadcast(tensor.data, src=0)


class ResumableSampler(Sampler[int]):
    """An endless, shuffled, per-process index stream that can start at any position.

    Epoch e is a permutation drawn from (seed, e); process r of w takes every w-th
    index. Starting at `start` (samples already consumed by this process) reproduces
    exactly what an uninterrupted run would read next.
    """

    def __init__(self, size: int, *, seed: int, rank: int = 0, world: int = 1, start: int = 0) -> None:
        if size < world:
            raise ValueError(f"dataset of {size} samples is smaller than {world} processes")
        self.size, self.seed, self.rank, self.world, self.start = size, seed, rank, world, start

    def per_epoch(self) -> int:
        return self.size // self.world

    def __iter__(self) -> Iterator[int]:
        per_epoch = self.per_epoch()
        epoch, offset = divmod(self.start, per_epoch)
        while True:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.size, generator=gen)[self.rank : per_epoch * self.world : self.world]
            yield from order[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # DataLoader asks; the stream itself is endless
        return 2**62


def collate_clips(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group samples by frame count (images are 1-frame clips) so each group stacks.

    Works for pixel clips (`video`, [T, H, W, 3]) and token clips (`ids`, [T', H', W']).
    """
    key = "video" if "video" in batch[0] else "ids"
    groups: dict[int, list[dict[str, Any]]] = {}
    for item in batch:
        groups.setdefault(int(item[key].shape[0]), []).append(item)
    out = []
    for _, items in sorted(groups.items(), reverse=True):
        group: dict[str, Any] = {}
        for key in items[0]:
            values = [it[key] for it in items]
            if isinstance(values[0], torch.Tensor):
                group[key] = torch.stack(values)
            elif isinstance(values[0], (int, float)):
                group[key] = torch.tensor(values)
            else:
                group[key] = values
        out.append(group)
    return out


def group_shares(batch: list[dict[str, Any]]) -> list[float]:
    """Each group's weight in the step's loss: its share of the real samples (stand-ins weigh 0)."""
    key = "video" if "video" in batch[0] else "ids"
    sizes = [0 if group.get("stand_in") else len(group[key]) for group in batch]
    total = max(1, sum(sizes))
    return [size / total for size in sizes]


def stand_in_group(like: dict[str, Any], frames: int) -> dict[str, Any]:
    """A one-sample, zero-weight group of `frames` frames cut (or padded) from a real group.

    Several processes must run the same forwards in the same order (DDP broadcasts
    buffers at each forward and the quantizer all-reduces its codebook statistics),
    so a process whose batch lacks a frame count that another process has runs this
    stand-in instead; its loss weight is 0, so gradients are those of the real samples.
    """
    key = "video" if "video" in like else "ids"
    x = like[key][:1]
    if x.shape[1] >= frames:
        x = x[:, :frames]
    else:  # hold the last frame
        x = torch.cat([x, x[:, -1:].expand(1, frames - x.shape[1], *x.shape[2:])], dim=1)
    group: dict[str, Any] = {}
    for name, value in like.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            group[name] = torch.zeros_like(value[:1])  # per-sample numbers (context lengths): none
        elif isinstance(value, list):
            group[name] = value[:1]
        else:
            group[name] = value
    group[key] = x.clone()
    group["stand_in"] = True
    return group


def align_groups(batch: list[dict[str, Any]], accelerator: Any) -> list[dict[str, Any]]:
    """Give every process the same sequence of group frame counts (see `stand_in_group`)."""
    from accelerate.utils import gather_object

    key = "video" if "video" in batch[0] else "ids"
    mine = [int(group[key].shape[1]) for group in batch]
    union = sorted({f for frames in gather_object([mine]) for f in frames}, reverse=True)
    if union == mine:
        return batch
    by_frames = dict(zip(mine, batch))
    return [by_frames[f] if f in by_frames else stand_in_group(batch[0], f) for f in union]


class CheckpointWriteError(CheckpointError):
    """A training checkpoint (or the final export) could not be written, e.g. the disk is full.
    Nothing already on disk was changed: the earlier checkpoints are intact."""


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """The run's `checkpoints/step-N` folders, newest (highest N) first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    steps = sorted(((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR_RE.match(p.name)) and p.is_dir()),
                   reverse=True)
    return [p for _, p in steps]


def check_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's step file, once its checksums are verified (`verify_folder`; a folder written
    before records existed is not checked). Any damage is a `CheckpointError` naming the file."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path / STATE_FILE}: missing (not a complete training checkpoint)")
    verify_folder(path)  # IntegrityError (a CheckpointError) naming the first damaged file
    state = read_json(path / STATE_FILE)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{path / STATE_FILE}: no step recorded")
    return state


def _torch_load(file: Path) -> Any:
    """`torch.load(weights_only=True)`; a missing or damaged file is a `CheckpointError` naming it."""
    if not file.is_file():
        raise CheckpointError(f"{file}: missing")
    try:
        return torch.load(file, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - zip, pickle and EOF errors of a damaged file
        raise CheckpointError(f"{file}: not readable by torch.load ({_one_line(exc)})") from None


def resume_candidates(output_dir: Path, resume: str) -> tuple[list[Path], bool]:
    """(the checkpoints `--resume` may continue from, newest first; whether the user named one).

    `latest`: the run's `checkpoints/step-N`, newest first; otherwise the folder given (put back
    first if a killed save had set it aside)."""
    if resume == "latest":
        return checkpoint_dirs(output_dir), False
    path = recover_dir(Path(resume))
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a training checkpoint (no {STATE_FILE})")
    return [path], True


def first_intact(output_dir: Path, resume: str, load: Callable[[Path], Any]) -> tuple[Path, Any] | None:
    """The first of `resume`'s candidates that `load` takes without a `CheckpointError`, and what it returned.

    Each damaged one is named in a warning with what is wrong with it. None when there is no
    checkpoint at all; a `CheckpointError` listing every one when none is intact, or naming the
    damaged file when the user named the checkpoint (`--resume DIR`).
    """
    candidates, explicit = resume_candidates(Path(output_dir), resume)
    problems = []
    for path in candidates:
        try:
            return path, load(path)
        except CheckpointError as exc:
            if explicit:
                raise CheckpointError(f"--resume {resume}: the checkpoint is damaged: {exc}") from None
            log.warning("checkpoint %s is damaged, not resuming from it: %s", path, exc)
            problems.append(f"{path.name}: {exc}")
    if problems:
        raise CheckpointError(f"no intact checkpoint to resume in {Path(output_dir) / 'checkpoints'} "
                              f"({len(problems)} damaged): " + "; ".join(problems))
    return None


def find_checkpoint(output_dir: Path, resume: str) -> Path | None:
    """The checkpoint `--resume` would continue from, judged by its checksums (`Trainer.fit` also
    falls back past one whose files a reader refuses)."""
    found = first_intact(output_dir, resume, check_checkpoint)
    return None if found is None else found[0]


def _tracker_config(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The run's config as trackers take it (TensorBoard's hyperparameters): flat keys, plain values."""
    flat: dict[str, Any] = {"trainer": name}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        else:
            flat[prefix] = str(value)

    walk("", config)
    return flat


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200] + ("..." if len(text) > 200 else "")


def _write_error(exc: BaseException) -> str:
    """What went wrong in a write, in words (`[Errno 28] No space left on device`)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}" if exc.errno else exc.strerror
    return _one_line(exc)


class _ErrorKeepingWriter:
    """A file object for torch.save that keeps the OSError of a failed write: torch reports it
    only as "unexpected pos", which says nothing about a full disk."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.error = fh, None

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def torch_save(obj: Any, path: Path) -> None:
    """`torch.save`, raising the OSError itself (EFBIG, ENOSPC) when the file cannot be written."""
    with open(path, "wb") as fh:
        writer = _ErrorKeepingWriter(fh)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def _write_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a failed write raises (an OSError, or safetensors' own error type)."""
    from safetensors import SafetensorError

    return (OSError, SafetensorError)


def cpu_only() -> bool:
    """True without CUDA: processes spawned by `accelerate launch --multi_gpu` (torchrun) then
    join one gloo group on CPU, so the same launch line trains on a CPU box and on GPUs."""
    return not torch.cuda.is_available()


class Trainer(abc.ABC):
    """A training loop with everything but the loss: subclasses implement `training_step`.

    Subclasses set `self.model` (the module whose EMA is kept and exported), may add
    more modules/optimisers to `self.modules` / `self.optimizers`, and implement
    `training_step(batch, step) -> (loss, metrics)`, `preview(step)` and `export(dir)`.
    """

    name = "model"
    kernel_tuning = False  # True where training_step has no side effect, so its forward and backward may be
    # timed on the first batch to choose the attention path and threads (phenaki.kernels)

    def __init__(self, config: Config, train: TrainConfig, *, output_dir: str | Path | None = None,
                 progress: bool = True, cpu: bool | None = None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.config = config
        self.train_cfg = train
        if output_dir is not None:  # checkpoints and exports record where the run really lives
            train.output_dir = str(output_dir)
        self.output_dir = Path(train.output_dir)
        self.progress = progress
        self.accelerator = Accelerator(mixed_precision=train.mixed_precision, cpu=cpu_only() if cpu is None else cpu,
                                       log_with=list(train.log_with) or None,
                                       project_dir=str(self.output_dir) if train.log_with else None)
        _fsdp_on_cpu(self.accelerator, train.mixed_precision)
        if train.log_with:
            self.accelerator.init_trackers(f"{self.name}", config=_tracker_config(to_dict(config), self.name))
        set_seed(train.seed + self.accelerator.process_index)
        self.step = 0
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.ema: EMA | None = None
        self._metrics_file = self.output_dir / "metrics.jsonl"

    # ------------------------------------------------------------------ setup
    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        """accelerate's prepare, then torch.compile when the config asks: in place (`Module.compile`),
        so state-dict keys, EMA and checkpoints stay those of the plain module; and per trainer,
        not through the accelerator's process-wide dynamo setting."""
        plugin = fsdp_plugin(self.accelerator)
        synced = plugin is not None and (plugin.sync_module_states if plugin.fsdp_version == 1
                                         else plugin.cpu_ram_efficient_loading)
        if plugin is not None and not synced and self.accelerator.num_processes > 1:
            _broadcast_weights(model.to(self.device))  # every process starts from rank 0's weights
        model, optimizer = self.accelerator.prepare(model, optimizer)
        if self.train_cfg.compile:
            model.compile()
        return model, optimizer

    def register_model(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, nn.Module]:
        """Make `model` the trained one: its EMA, accelerate's prepare, and the bookkeeping that
        checkpoints and resumes it. Returns (the prepared model, a frozen copy to export the EMA
        weights through)."""
        self.ema = EMA(model, self.train_cfg.ema_decay)
        ema_copy = copy.deepcopy(model).requires_grad_(False).eval()
        model, optimizer = self.prepare(model, optimizer)
        if self.sharded:  # each process averages its own shard
            self.ema = ShardedEMA(model, self.train_cfg.ema_decay)
        self.modules[self.name] = model
        self.optimizers[self.name] = optimizer
        self.schedulers[self.name] = self.make_scheduler(optimizer)
        return model, ema_copy

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def sharded(self) -> bool:
        """True under FSDP: no process holds the whole model, optimiser state or EMA."""
        return fsdp_plugin(self.accelerator) is not None

    def gather_ema(self) -> None:
        """Under FSDP, assemble the averaged model on the main process (every process must call
        this) so that `self.ema.copy_to` works there for a preview or the export."""
        if isinstance(self.ema, ShardedEMA):
            self.ema.gather(self.accelerator, self.modules[self.name])

    def make_optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        """AdamW with weight decay on matrices only (norms, biases and embeddings of size 1-D are spared)."""
        decay = [p for p in params if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in params if p.requires_grad and p.ndim < 2]
        groups = [
            {"params": decay, "weight_decay": self.train_cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr, betas=self.train_cfg.betas, **self._fused_adamw())

    def _fused_adamw(self) -> dict[str, bool]:
        """Fused AdamW unless a sharded engine (FSDP, DeepSpeed) owns the parameters: their flat
        or distributed parameters are not what the fused kernel expects."""
        from accelerate.utils import DistributedType

        plain = self.accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_GPU,
                                                      DistributedType.MULTI_CPU)
        return adamw_fused_kwargs(self.device) if plain else {}

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        cfg = self.train_cfg
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        )

    def make_loader(self, dataset: Dataset, start_step: int) -> DataLoader:
        """A loader whose order depends only on the seed and the samples already consumed."""
        cfg = self.train_cfg
        per_step = cfg.batch_size * cfg.grad_accum
        workers = self.config.data.num_workers
        if isinstance(dataset, IterableDataset):
            # streamed data (tar shards) splits itself across processes and workers; a
            # resumed run starts a new epoch of shard order instead of replaying samples
            if start_step and hasattr(dataset, "set_epoch"):
                dataset.set_epoch(start_step)
            return DataLoader(dataset, batch_size=cfg.batch_size, num_workers=workers, collate_fn=collate_clips,
                              pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                              drop_last=True)
        sampler = ResumableSampler(
            len(dataset),  # type: ignore[arg-type]
            seed=cfg.seed,
            rank=self.accelerator.process_index,
            world=self.accelerator.num_processes,
            start=start_step * per_step,
        )
        return DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate_clips,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(cfg.seed),  # never touches the global RNG
            drop_last=True,
        )

    # ----------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path | None:
        """Full training state at the current step, written by the main process; keeps the last K.

        Every process takes part in gathering (model state, which FSDP must collect,
        and each process's RNG state, so a resumed run draws what the uninterrupted
        one would have on every rank); only the main process writes. Under FSDP every
        process first writes its shards (`_save_shards`) into a folder the main process
        then moves into the checkpoint, so the checkpoint appears whole or not at all;
        the output folder must then be on storage all machines share.
        """
        from accelerate.utils import gather_object

        self.accelerator.wait_for_everyone()
        states = {} if self.sharded else {name: self.accelerator.get_state_dict(module)
                                          for name, module in self.modules.items()}
        rng_states = gather_object([_rng_state()])
        path = self.output_dir / "checkpoints" / f"step-{self.step:07d}"
        staged = self._save_shards(path) if self.sharded else None
        if not self.is_main:
            return None
        writing = {"file": ""}  # the file being written, for the error message

        def write(tmp: Path) -> None:
            if staged is not None:
                for part in sorted(staged.iterdir()):
                    os.replace(part, tmp / part.name)
                staged.rmdir()
            for name, state in states.items():
                writing["file"] = f"{name}.safetensors"
                save_state_dict(state, tmp / writing["file"])
            if self.ema is not None and staged is None:
                writing["file"] = EMA_FILE
                save_state_dict(self.ema.state_dict(), tmp / EMA_FILE)
            writing["file"] = "optim.pt"
            optimizers = {} if staged is not None else {k: o.state_dict() for k, o in self.optimizers.items()}
            schedulers = {k: s.state_dict() for k, s in self.schedulers.items()}
            torch_save({"optimizers": optimizers, "schedulers": schedulers}, tmp / "optim.pt")
            writing["file"] = "rng.pt"
            torch_save({"per_process": rng_states}, tmp / "rng.pt")
            writing["file"] = STATE_FILE
            write_json(tmp / STATE_FILE, {"step": self.step, "config": to_dict(self.config),
                                            "num_processes": self.accelerator.num_processes,
                                            "sharded": staged is not None, "shard_metadata": _shard_metadata(tmp)})
            writing["file"] = "checksums.json"
            record_folder(tmp)

        try:
            atomic_write_dir(path, write)
        except _write_errors() as exc:
            if staged is not None:
                remove_tree(staged)
            others = [p.name for p in checkpoint_dirs(self.output_dir) if p != path]
            message = (f"cannot write checkpoint {path} ({writing['file']}): {_write_error(exc)}; nothing was "
                       "changed on disk, " + (f"the newest checkpoint is still {others[0]}" if others
                                             else "and the run has no earlier checkpoint"))
            log.error(message)
            raise CheckpointWriteError(message) from exc
        self._prune_checkpoints(path)
        log.info("saved checkpoint %s", path)
        return path

    def _save_shards(self, path: Path) -> Path:
        """Under FSDP: every process writes its shards of the models (`NAME.fsdp/`), optimisers
        (`NAME.optim.fsdp/`) and EMA (`ema.fsdp/`) through accelerate's FSDP checkpoint functions
        into a staging folder named by the main process; returns that folder."""
        from accelerate.utils import (
            broadcast_object_list,
            save_fsdp_model,
            save_fsdp_optimizer,
        )

        plugin = fsdp_plugin(self.accelerator)
        unmatched = sorted(set(self.optimizers) - set(self.modules))
        if unmatched:
            raise ValueError(f"FSDP checkpoints save each optimiser with its model: no model named {unmatched}")
        name_box = [str(temp_name(path)) if self.is_main else ""]
        staged = Path(broadcast_object_list(name_box, from_process=0)[0])
        if self.is_main:
            staged.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        try:
            for name, module in self.modules.items():
                save_fsdp_model(plugin, self.accelerator, module, staged / f"{name}.fsdp")
                if name in self.optimizers:
                    save_fsdp_optimizer(plugin, self.accelerator, self.optimizers[name], module,
                                        staged / f"{name}.optim.fsdp")
            if isinstance(self.ema, ShardedEMA):
                with self.ema.swapped_in():
                    save_fsdp_model(plugin, self.accelerator, self.modules[self.name], staged / "ema.fsdp")
        except _write_errors() as exc:
            message = f"cannot write the shards of checkpoint {path}: {_write_error(exc)}"
            log.error(message)
            raise CheckpointWriteError(message) from exc
        self.accelerator.wait_for_everyone()
        return staged

    def _prune_checkpoints(self, saved: Path | None = None) -> None:
        """Keep the newest `keep_checkpoints` checkpoints (0: all), and always `saved`, the one
        just written: a run that fell back past damaged newer checkpoints keeps its only intact one.
        Each is renamed away before it is deleted, so a kill mid-deletion leaves no half checkpoint."""
        keep = self.train_cfg.keep_checkpoints
        if keep <= 0:
            return
        for old in checkpoint_dirs(self.output_dir)[keep:]:
            if saved is None or old != saved:
                remove_tree(old)

    def _clean_output_dir(self) -> None:
        """Put back checkpoints a killed save had set aside and remove the half-written files of
        killed runs (main process, before anything is written)."""
        for folder in (self.output_dir, self.output_dir / "checkpoints", self.output_dir / "previews",
                       self.output_dir / "tokens"):
            clean_temporaries(folder)

    def load_checkpoint(self, path: Path) -> None:
        """Restore everything `save_checkpoint` wrote (tensors via safetensors, the rest weights_only).

        The checksums are verified first. A damaged checkpoint is a `CheckpointError` naming the
        file; the trainer may then hold part of it, so load another one (as `fit` does) or stop.
        Files are read one at a time, so no more than one of them is in memory beside the model.
        An FSDP checkpoint is loaded by an FSDP run (every process reads its shards)."""
        path = Path(path)
        state = check_checkpoint(path)
        if bool(state.get("sharded")) != self.sharded:
            raise CheckpointError(f"{path}: written by {'an FSDP' if state.get('sharded') else 'a non-FSDP'} run; "
                                  f"resume it with {'an FSDP' if state.get('sharded') else 'a DDP or one-process'} "
                                  "accelerate config (or export it and fine-tune from the export)")
        if self.sharded:
            self._load_shards(path, state.get("shard_metadata") or {})
        else:
            for name, module in self.modules.items():
                self.accelerator.unwrap_model(module).load_state_dict(load_state_dict(path / f"{name}.safetensors"))
            if self.ema is not None:
                self.ema.load_state_dict(load_state_dict(path / EMA_FILE))
        optim = _torch_load(path / "optim.pt")
        for key, opt in self.optimizers.items() if not self.sharded else ():  # FSDP: read with the shards
            opt.load_state_dict(optim["optimizers"][key])
        for key, sched in self.schedulers.items():
            sched.load_state_dict(optim["schedulers"][key])
        del optim
        rng = _torch_load(path / "rng.pt")
        per_process = rng.get("per_process", [rng])  # older checkpoints hold one state
        rank = self.accelerator.process_index
        if len(per_process) != self.accelerator.num_processes:
            log.warning("checkpoint was written by %d processes, resuming with %d: random streams differ from "
                        "an uninterrupted run", len(per_process), self.accelerator.num_processes)
        _set_rng_state(per_process[rank % len(per_process)])
        self.step = state["step"]
        log.info("resumed from %s at step %d", path, self.step)

    def _load_shards(self, path: Path, recorded: dict[str, str]) -> None:
        """Under FSDP: every process reads its shards of the EMA, models and optimisers.

        torch.distributed.checkpoint reads each part's index (`.metadata`) with pickle, and the
        folder's checksums leave hidden files out, so those indexes are checked here against the
        hashes `state.json` recorded before anything is read."""
        from accelerate.utils import load_fsdp_model, load_fsdp_optimizer

        found = _shard_metadata(path)
        for rel in sorted(set(found) | set(recorded)):
            if found.get(rel) != recorded.get(rel):
                raise CheckpointError(f"{path / rel}: " + ("missing" if rel not in found else "not recorded" if rel
                                      not in recorded else "damaged (its hash differs from the one recorded)"))

        plugin = fsdp_plugin(self.accelerator)
        parts = [path / f"{name}.fsdp" for name in self.modules]
        parts += [path / f"{name}.optim.fsdp" for name in self.optimizers]
        parts += [path / "ema.fsdp"] if isinstance(self.ema, ShardedEMA) else []
        for part in parts:
            if not part.is_dir():
                raise CheckpointError(f"{part}: missing (not a complete FSDP checkpoint)")
        try:
            if isinstance(self.ema, ShardedEMA):  # through the model: each process keeps its shard
                load_fsdp_model(plugin, self.accelerator, self.modules[self.name], path / "ema.fsdp")
                self.ema.take_from_model()
            for name, module in self.modules.items():
                load_fsdp_model(plugin, self.accelerator, module, path / f"{name}.fsdp")
                if name in self.optimizers:
                    _init_optimizer_state(self.optimizers[name])
                    load_fsdp_optimizer(plugin, self.accelerator, self.optimizers[name], module,
                                        path / f"{name}.optim.fsdp")
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: the FSDP shards cannot be read ({_one_line(exc)})") from None

    # ------------------------------------------------------------------ loop
    def log_metrics(self, metrics: dict[str, float]) -> None:
        """Append one JSON line per log step (main process only)."""
        if not self.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        record = {"step": self.step, **{k: round(float(v), 6) for k, v in metrics.items()}}
        with self._metrics_file.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.train_cfg.log_with:
            self.accelerator.log({k: float(v) for k, v in metrics.items()}, step=self.step)
        log.info("step %d %s", self.step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

    @abc.abstractmethod
    def training_step(self, batch: list[dict[str, Any]], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one micro-batch (and metrics to log)."""

    def after_optimizer_step(self) -> None:
        """Hook for extra per-step updates (e.g. a discriminator)."""

    def preview(self) -> None:
        """Write previews for the current step (main process only)."""

    def log_preview(self, path: Path, frames: torch.Tensor) -> None:
        """Hand a written preview (uint8 [T, H, W, 3]) to the trackers: TensorBoard gets its middle
        frame as an image, W&B the clip, MLflow the file."""
        for tracker in self.accelerator.trackers if self.train_cfg.log_with else []:
            try:
                if tracker.name == "tensorboard":
                    tracker.writer.add_image("preview", frames[len(frames) // 2].permute(2, 0, 1), self.step)
                elif tracker.name == "wandb":
                    import wandb

                    tracker.log({"preview": wandb.Video(str(path))}, step=self.step)
                elif tracker.name == "mlflow":
                    import mlflow

                    mlflow.log_artifact(str(path), artifact_path="previews")
            except Exception as exc:  # noqa: BLE001 - a tracker's hiccup must not stop training
                log.warning("could not send preview %s to %s: %s", path, tracker.name, exc)

    @abc.abstractmethod
    def export(self, path: Path) -> Path:
        """Write the final model (EMA weights) as a `from_pretrained` directory."""

    def _check_extension(self, ckpt: Path) -> None:
        """Resuming with more steps extends a run; with fewer than already done it is a mistake.

        The LR schedule is a function of `train.steps`, so an extended run goes on from the
        cosine's value at step k of the new total (a warm restart), not where it stopped.
        """
        total = self.train_cfg.steps
        if self.step > total:
            raise ValueError(f"{ckpt} is at step {self.step}, beyond train.steps={total}: "
                             f"raise the steps (e.g. --set train_{self.name}.steps=N) to extend the run")
        if self.step < total:
            factor = lr_factor(self.step, self.train_cfg.warmup_steps, total, self.train_cfg.min_lr_ratio)
            log.info("resuming at step %d of %d: learning rate %.3g", self.step, total, self.train_cfg.lr * factor)

    def fit(self, dataset: Dataset, resume: str | None = None, stop_at: int | None = None,
            export_to: str | Path | None = None) -> Path:
        """Train to `train.steps`, checkpointing, previewing and logging on the way.

        `stop_at` ends this invocation early at that step with a checkpoint (for
        time-boxed jobs); a later `resume="latest"` continues exactly. Returns the
        final model directory, or the checkpoint when stopped early. `export_to` trains
        nothing: it writes the `resume` checkpoint's model there (`export_checkpoint`).
        """
        from tqdm import tqdm

        if export_to is not None:
            return self.export_checkpoint(resume or "latest", Path(export_to))
        cfg = self.train_cfg
        if self.is_main:
            self._clean_output_dir()
        self.accelerator.wait_for_everyone()
        if resume:
            self._resume(resume)
        model = self.modules[self.name]
        loader = iter(self.make_loader(dataset, self.step))
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {self.name}",
                   disable=not (self.progress and self.is_main), dynamic_ncols=True)
        running: dict[str, float] = {}
        count = 0
        started = time.perf_counter()
        optimizer = self.optimizers[self.name]
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        threads = 0
        if self.step < end:  # the kernels are timed on the first batch, which is then trained on as usual
            first = next(loader)
            threads = self._tune_kernels(first).threads
            loader = itertools.chain([first], loader)
        with use_threads(threads):
            while self.step < end:
                for micro in range(cfg.grad_accum):
                    batch = next(loader)
                    if self.accelerator.num_processes > 1:
                        batch = align_groups(batch, self.accelerator)
                    # DDP all-reduces only on the last micro-batch of an accumulation.
                    sync = micro == cfg.grad_accum - 1
                    with contextlib.nullcontext() if sync else self.accelerator.no_sync(model):
                        loss, metrics = self.training_step(batch, self.step)
                        self.accelerator.backward(loss / cfg.grad_accum)
                    for key, value in metrics.items():
                        running[key] = running.get(key, 0.0) + float(value)
                    count += 1
                if cfg.grad_clip > 0:
                    running["grad_norm"] = running.get("grad_norm", 0.0) + cfg.grad_accum * float(
                        self.accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    )
                optimizer.step()
                self.schedulers[self.name].step()
                optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.update(None if self.sharded else self.accelerator.unwrap_model(model), self.step)
                self.after_optimizer_step()
                self.step += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    averaged = {k: v / count for k, v in running.items()}
                    averaged["lr"] = self.schedulers[self.name].get_last_lr()[0]
                    averaged["sec_per_step"] = (time.perf_counter() - started) / max(1, count / cfg.grad_accum)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in averaged.items() if k in ("loss", "psnr")})
                    self.log_metrics(averaged)
                    running, count, started = {}, 0, time.perf_counter()
                if cfg.preview_every and self.step % cfg.preview_every == 0:
                    self._preview()
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < end:
                    self.save_checkpoint()
        bar.close()
        return self._finish(end)

    def _tune_kernels(self, batch: Any) -> KernelChoice:
        """The attention path and threads this machine trains fastest with, timed on the first batch
        (forward and backward; the random generators are restored after) or read from the cache.
        Only a single process measures: timings differ between processes, and every process must
        run the same number of backward passes and the same kernels."""
        model = self.modules[self.name]
        mode = resolve_kernels(self.train_cfg.kernels)
        if mode == "auto" and not (self.kernel_tuning and self.accelerator.num_processes == 1):
            mode = "default"
        # keyed by the configured batch, not this batch's shapes: a resumed run must find the same choice
        case = {"trainer": self.name, "precision": self.train_cfg.mixed_precision,
                "batch_size": self.train_cfg.batch_size, "parameters": sum(p.numel() for p in model.parameters()), "compiled": self.train_cfg.compile,
                "model": type(self.accelerator.unwrap_model(model)).__name__}
        with torch.random.fork_rng(devices=[]):
            choice = tune_training(model, lambda: self.training_step(batch, self.step)[0], case, mode=mode,
                                   device=self.device)
        if choice.measured:
            log.info("training kernels: attention %s, %s threads", choice.attention,
                     choice.threads or torch.get_num_threads())
        return choice

    def export_checkpoint(self, resume: str, path: Path) -> Path:
        """A checkpoint's model (its EMA weights) written as the final model would be, with no training,
        so a long run can be measured between its parts. Nothing in the run's folder is touched,
        so this may run while the run itself goes on."""
        found = first_intact(self.output_dir, resume, self.load_checkpoint)
        if found is None:
            raise CheckpointError(f"nothing to export: no intact checkpoint for {resume!r} in {self.output_dir}")
        self.accelerator.wait_for_everyone()
        self.gather_ema()
        if self.is_main:
            self.export(path)
            log.info("exported %s (step %d) to %s", found[0], self.step, path)
        self.accelerator.wait_for_everyone()
        return path

    def _preview(self) -> None:
        """Previews on the main process (under FSDP every process first helps gather the EMA)."""
        self.gather_ema()
        if self.is_main:
            self.preview()
        if isinstance(self.ema, ShardedEMA):
            self.ema.full = None

    def _resume(self, resume: str) -> None:
        """Load the newest intact checkpoint `resume` names (saying when newer ones are damaged)."""
        found = first_intact(self.output_dir, resume, self.load_checkpoint)
        if found is None:
            log.info("no checkpoint to resume in %s; starting fresh", self.output_dir)
            return
        ckpt = found[0]
        newest = checkpoint_dirs(self.output_dir)[:1]
        if resume == "latest" and newest and newest[0] != ckpt and self.is_main:
            log.warning("resuming from %s, the newest intact checkpoint (newer ones are damaged)", ckpt)
        self._check_extension(ckpt)

    def _finish(self, end: int) -> Path:
        """The last checkpoint, then (when the run reached its steps) the exported final model."""
        cfg = self.train_cfg
        checkpoint = self.save_checkpoint()
        if cfg.log_with:
            self.accelerator.end_training()
        if self.step < cfg.steps:
            self.accelerator.wait_for_everyone()
            return checkpoint or self.output_dir / "checkpoints"
        final = self.output_dir / "final"
        self.accelerator.wait_for_everyone()
        self.gather_ema()  # under FSDP the whole averaged model, on the main process
        if self.is_main:
            try:
                self.export(final)
            except _write_errors() as exc:
                message = (f"cannot export the final model to {final}: {_write_error(exc)}; the checkpoint "
                           f"{checkpoint} holds the trained state (run again with --resume latest to export)")
                log.error(message)
                raise CheckpointWriteError(message) from exc
        self.accelerator.wait_for_everyone()
        return final


def _rng_state() -> dict[str, Any]:
    """This process's torch and Python RNG state (what a resumed run must continue from)."""
    version, state, gauss = random.getstate()
    rng = {"torch": torch.get_rng_state(), "python": list(state), "python_version": version, "python_gauss": gauss}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()  # masks are drawn on the GPU there
    return rng


def _set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"].cpu())
    random.setstate((rng["python_version"], tuple(rng["python"]), rng["python_gauss"]))


def parse_overrides(items: tuple[str, ...]) -> dict[str, Any]:
    """`--set train_tokenizer.steps=100` pairs; values are YAML (numbers, lists, true/false)."""
    import yaml

    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE (e.g. train_tokenizer.steps=100), got '{item}'")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides

"""Run by tests/test_distributed.py under `accelerate launch` (2 CPU processes, gloo).

    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml tests/distributed_run.py \
        tokenizer OUT [--stop-at N] [--resume] [--tokenizer DIR]

Also run by tests/test_fsdp.py (cpu_2proc_fsdp.yaml) and tests/test_multinode.py (two
accelerate machine ranks), and by bench/gpu_check.sh on a GPU.

Trains a tiny model with the project's trainer exactly as the train scripts do, and
each process then writes what the test checks: the dataset indices it read, and its
final weights (rank-R.json, rank-R.safetensors).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from accelerate import PartialState
from safetensors.torch import save_file
from torch.utils.data import Dataset

from phenaki.config import Config, from_dict
from phenaki.training.base import cpu_only, full_state_dict

TOKENIZER = {"dim": 32, "spatial_depth": 1, "temporal_depth": 1, "heads": 2, "dim_head": 16,
             "quantizer": "vq", "codebook_size": 64, "codebook_dim": 8, "num_frames": 5}
DATA = {"kind": "shapes", "num_frames": 5, "num_samples": 40, "image_prob": 0.25, "context_frames": 3,
        "straddle_prob": 0.5}
TRAIN = {"steps": 4, "batch_size": 3, "warmup_steps": 1, "save_every": 2, "preview_every": 2, "log_every": 1,
         "ema_decay": 0.9, "mixed_precision": "no"}


def config(which: str, out: Path) -> Config:
    section = {"output_dir": str(out), **TRAIN}
    if which == "tokenizer":
        return from_dict(Config, {"tokenizer": TOKENIZER, "data": DATA, "train_tokenizer": section})
    return from_dict(Config, {
        "tokenizer": TOKENIZER, "data": DATA,
        "transformer": {"dim": 32, "depth": 1, "heads": 2, "dim_head": 16, "max_token_frames": 3},
        "text": {"kind": "scratch", "dim": 16, "depth": 1, "heads": 2, "ff_dim": 32, "max_length": 12},
        "train_maskgit": {**section, "continuation_prob": 0.5, "preview_prompts": ["a red ball rises"]},
        "sampling": {"first_frames": 5, "scene_frames": 2, "context_frames": 3, "steps": 2},
    })


class Recording(Dataset):
    """Remembers which indices this process read (num_workers=0: reads happen here)."""

    def __init__(self, inner: Dataset) -> None:
        self.inner, self.indices = inner, []

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        self.indices.append(int(index))
        return self.inner[index]

    def __getattr__(self, name: str):  # captions etc. of the wrapped dataset
        return getattr(self.__dict__["inner"], name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("which", choices=["tokenizer", "maskgit"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--stop-at", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--tokenizer", type=Path, default=None)
    args = parser.parse_args()
    state = PartialState(cpu=cpu_only())
    cfg = config(args.which, args.out)
    if args.which == "tokenizer":
        from phenaki.data import build_dataset
        from phenaki.training.tokenizer_trainer import TokenizerTrainer

        trainer = TokenizerTrainer(cfg, progress=False)
        dataset = Recording(build_dataset(cfg.data, "train"))
    else:
        from phenaki.training.maskgit_trainer import (
            MaskGitTrainer,
            ensure_token_cache,
            training_captions,
        )
        from phenaki.training.token_cache import TokenDataset

        with state.main_process_first():
            cache = ensure_token_cache(cfg, args.tokenizer)
        dataset = Recording(TokenDataset(cache))
        trainer = MaskGitTrainer(cfg, args.tokenizer, training_captions(dataset.inner), progress=False)
    trainer.fit(dataset, resume="latest" if args.resume else None, stop_at=args.stop_at)
    # under FSDP the whole weights are gathered on the main process only (the others report none)
    states = {name: full_state_dict(trainer.accelerator, module) if trainer.sharded
              else trainer.accelerator.unwrap_model(module).state_dict() for name, module in trainer.modules.items()}
    weights = {f"{name}.{key}": value.detach().float().clone()
               for name, state in states.items() for key, value in state.items() if value.is_floating_point()}
    rank = state.process_index
    save_file(weights, str(args.out / f"rank-{rank}.safetensors"))
    (args.out / f"rank-{rank}.json").write_text(json.dumps({
        "indices": dataset.indices, "num_processes": state.num_processes, "step": trainer.step,
        "is_main": state.is_main_process, "sharded": trainer.sharded,
    }))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()

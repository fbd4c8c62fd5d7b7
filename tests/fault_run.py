"""Run a train script or a `phenaki-*` command, and SIGKILL it at a chosen point (tests/test_faults_training.py).

    python tests/fault_run.py [--kill SPEC]... train/train_tokenizer.py --config cfg.yaml --resume latest
    python tests/fault_run.py [--kill SPEC]... phenaki-data tokenize --tokenizer TOK --in SHARDS --out TOKENS

The command runs in this process exactly as from the shell (the script through runpy, a
`phenaki-*` command through its click entry point), with one thread. Each `--kill SPEC` wraps
a library function so that the process sends itself SIGKILL at that point: no cleanup code,
no `finally`, no atexit runs, as when the machine's OOM killer or a scheduler ends a job. The
library has no hook for this; the wrapping happens here. Before dying the process writes one
line `FAULT_RUN killed: <where>` to stderr, so a test can tell where the kill landed.

SPEC (N a step number, K a chunk index, F a file name of a checkpoint):
  step:N        in the training step at step N, after the forward pass (before the update)
  save:N:F      while checkpoint step-N is written: right after F went into its temporary folder
                (F = tokenizer.safetensors, ema.safetensors, optim.pt, rng.pt, state.json,
                checksums.json: the last one means complete but not yet renamed into place)
  swap:NAME     between the two renames that replace an existing folder NAME (e.g. step-0000002,
                final): the old one set aside, the new one not yet in place
  prune:N       while checkpoint step-N is being deleted by pruning (after one file went)
  export        while the final model is being written (after its first weights file)
  cache:K       after token chunk K was written under its temporary name, before the rename
  encode:N      in the N-th call of the tokenizer's `encode` (1-based; mid-chunk)
"""

from __future__ import annotations

import os
import re
import runpy
import shutil
import signal
import sys
from pathlib import Path


def die(where: str) -> None:
    sys.stderr.write(f"FAULT_RUN killed: {where}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _step_of(folder: Path) -> int | None:
    match = re.match(r"^\.step-(\d+)\.tmp-", folder.name)
    return int(match.group(1)) if match else None


def install(spec: str) -> None:
    kind, _, arg = spec.partition(":")
    if kind == "step":
        from phenaki.training.maskgit_trainer import MaskGitTrainer
        from phenaki.training.tokenizer_trainer import TokenizerTrainer

        target = int(arg)
        for cls in (TokenizerTrainer, MaskGitTrainer):
            original = cls.training_step

            def training_step(self, batch, step, _original=original):
                out = _original(self, batch, step)
                if step == target:
                    die(f"in training step {step}")
                return out

            cls.training_step = training_step
    elif kind == "save":
        from phenaki.training import base

        step_text, _, name = arg.partition(":")
        target = int(step_text)

        def after(written: Path, folder: Path) -> None:
            if _step_of(folder) == target and written.name == name:
                die(f"saving checkpoint step {target}, after {name}")

        for attr, position in (("save_state_dict", 1), ("torch_save", 1), ("write_json", 0)):
            original = getattr(base, attr)

            def wrapped(*args, _original=original, _position=position, **kwargs):
                out = _original(*args, **kwargs)
                path = Path(args[_position])
                after(path, path.parent)
                return out

            setattr(base, attr, wrapped)
        original_record = base.record_folder

        def record_folder(folder):
            out = original_record(folder)
            after(Path(folder) / "checksums.json", Path(folder))
            return out

        base.record_folder = record_folder
    elif kind == "swap":
        original_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            out = original_replace(src, dst, *args, **kwargs)
            if re.match(rf"^\.{re.escape(arg)}\.old-[0-9a-f]{{8}}$", Path(dst).name):
                die(f"between the renames replacing {arg}")
            return out

        os.replace = replace
    elif kind == "prune":
        target = int(arg)
        original_rmtree = shutil.rmtree

        def rmtree(path, *args, **kwargs):
            path = Path(path)
            if _step_of(path) == target and path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file())
                if files:
                    files[0].unlink()
                    die(f"pruning checkpoint step {target}, after deleting {files[0].name}")
            return original_rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree
    elif kind == "export":
        from phenaki import checkpoint

        original_save = checkpoint.save_state_dict

        def save_state_dict(state, path, *args, **kwargs):
            out = original_save(state, path, *args, **kwargs)
            if any(part.startswith(".final.tmp-") for part in Path(path).parts):
                die(f"exporting the final model, after {Path(path).name}")
            return out

        checkpoint.save_state_dict = save_state_dict
    elif kind == "cache":
        from phenaki.training import token_cache

        prefix = f".chunk-{int(arg):05d}.safetensors.tmp-"
        original_save_file = token_cache.save_file

        def save_file(tensors, filename, *args, **kwargs):
            out = original_save_file(tensors, filename, *args, **kwargs)
            if Path(filename).name.startswith(prefix):
                die(f"writing token chunk {arg}, before its rename")
            return out

        token_cache.save_file = save_file
    elif kind == "encode":
        from phenaki.models.cvivit import CViViT

        target, calls = int(arg), [0]
        original_encode = CViViT.encode

        def encode(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == target:
                die(f"in tokenizer encode call {target}")
            return original_encode(self, *args, **kwargs)

        CViViT.encode = encode
    else:
        raise SystemExit(f"fault_run: unknown kill point {spec!r}")


def main() -> None:
    args = sys.argv[1:]
    specs = []
    while args and args[0] == "--kill":
        specs.append(args[1])
        args = args[2:]
    if not args:
        raise SystemExit(__doc__)
    import torch

    torch.set_num_threads(1)
    for spec in specs:
        install(spec)
    command, rest = args[0], args[1:]
    if command.endswith(".py"):
        sys.argv = [command, *rest]
        sys.path.insert(0, str(Path(command).resolve().parent))
        runpy.run_path(command, run_name="__main__")
    else:
        from phenaki import cli

        entry = {"phenaki-data": cli.data_main, "phenaki-sample": cli.sample_main}[command]
        entry.main(rest, prog_name=command)


if __name__ == "__main__":
    main()

"""Training state is never lost and damage is named: damaged checkpoints, runs killed at any
point (SIGKILL, in real subprocesses), and a full disk.

- Resuming falls back past a damaged checkpoint (warning naming it and the damage) and then
  continues exactly; with none intact, or an explicit damaged one, a clear error.
- A run killed during a step, a checkpoint write, a swap, a prune, the export, the token
  cache build or shard tokenising resumes exactly when run again, kill after kill, and leaves
  no `.tmp-` / `.old-` file behind (tests/fault_run.py does the killing).
- A full disk (a file-size limit, SIGXFSZ ignored, so writes fail with EFBIG) during a
  checkpoint write or a video write is one clear error naming the output, with the previous
  checkpoint or file intact and no temporary file left.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_TOKENIZER
from safetensors.torch import load_file

from phenaki.config import Config, TokenizerConfig, from_dict
from phenaki.integrity import CheckpointError, IntegrityError, verify_folder
from phenaki.training.base import checkpoint_dirs, find_checkpoint
from phenaki.training.tokenizer_trainer import train_tokenizer
from phenaki.utils.fileio import clean_temporaries

REPO = Path(__file__).resolve().parents[1]
FAULT_RUN = REPO / "tests" / "fault_run.py"
TRAIN_TOKENIZER = REPO / "train" / "train_tokenizer.py"
TRAIN_MASKGIT = REPO / "train" / "train_maskgit.py"
FSQ = TINY_TOKENIZER


# ----------------------------------------------------------------------------- helpers


def tokenizer_config(out: Path, steps: int = 6, **train) -> dict:
    return {
        "tokenizer": {"dim": 32, "spatial_depth": 1, "temporal_depth": 1, "heads": 2, "dim_head": 16,
                      "quantizer": "vq", "codebook_size": 64, "codebook_dim": 8, "num_frames": 5, "dropout": 0.1},
        "data": {"kind": "shapes", "num_frames": 5, "num_samples": 40, "image_prob": 0.25, "context_frames": 2},
        "train_tokenizer": {"output_dir": str(out), "steps": steps, "batch_size": 3, "warmup_steps": 1,
                            "save_every": 2, "preview_every": 0, "log_every": 1, "ema_decay": 0.9,
                            "mixed_precision": "bf16", **train},
    }


def maskgit_config(out: Path, steps: int = 6) -> dict:
    return {
        "tokenizer": FSQ,
        "transformer": {"dim": 32, "depth": 1, "heads": 2, "dim_head": 16, "max_token_frames": 3},
        "text": {"kind": "scratch", "dim": 16, "depth": 1, "heads": 2, "ff_dim": 32, "max_length": 12},
        "data": {"kind": "shapes", "num_frames": 5, "num_samples": 24, "context_frames": 3, "image_prob": 0.2,
                 "straddle_prob": 0.5},
        "train_maskgit": {"output_dir": str(out), "steps": steps, "batch_size": 4, "warmup_steps": 1,
                          "save_every": 2, "preview_every": 0, "log_every": 1, "ema_decay": 0.9,
                          "mixed_precision": "bf16", "continuation_prob": 0.5},
        "sampling": {"first_frames": 5, "scene_frames": 2, "context_frames": 3, "steps": 2},
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def limit_file_size(limit: int):
    """preexec_fn: files may not grow past `limit` bytes, and a write past it fails with EFBIG
    instead of killing the process (SIGXFSZ ignored; the disposition survives exec)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def run(*command, kill: str | None = None, fsize: int | None = None, timeout: float = 180,
        expect_kill: bool | None = None) -> subprocess.CompletedProcess:
    """Run `command` under tests/fault_run.py (one thread), optionally killed at `kill`."""
    args = [sys.executable, str(FAULT_RUN)] + (["--kill", kill] if kill else []) + [str(c) for c in command]
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
                            preexec_fn=limit_file_size(fsize) if fsize else None)
    if expect_kill is None:
        expect_kill = kill is not None
    if expect_kill:
        assert result.returncode == -signal.SIGKILL and "FAULT_RUN killed" in result.stderr, (
            f"not killed at {kill} (rc {result.returncode}):\n{result.stderr[-3000:]}")
    elif expect_kill is False and fsize is None:
        assert result.returncode == 0, f"rc {result.returncode}:\n{result.stderr[-3000:]}"
    return result


def train(script: Path, config: Path, *extra, kill: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    return run(script, "--config", config, "--no-progress", "--resume", "latest", *extra, kill=kill, **kwargs)


def leftovers(root: Path) -> list[str]:
    """Every temporary (`.x.tmp-*`) or set-aside (`.x.old-*`) file or folder below `root`."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


def trained_state(out: Path, step: int) -> dict[str, torch.Tensor]:
    """All tensors of a run: its checkpoint at `step` (weights, EMA, optimiser state) and its export."""
    ckpt = out / "checkpoints" / f"step-{step:07d}"
    state = {}
    for file in sorted(ckpt.glob("*.safetensors")) + sorted((out / "final").rglob("*.safetensors")):
        for key, value in load_file(str(file)).items():
            state[f"{file.relative_to(out)}:{key}"] = value
    optim = torch.load(ckpt / "optim.pt", weights_only=True)
    for name, opt in optim["optimizers"].items():
        for index, entry in opt["state"].items():
            for key, value in entry.items():
                state[f"optim:{name}:{index}:{key}"] = value
    assert state
    return state


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:5]}"


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    elif how == "delete":
        path.unlink()
    else:
        raise ValueError(how)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 6-step tokenizer run (subprocess, like every faulty run it is compared to)."""
    root = tmp_path_factory.mktemp("reference")
    config = write_config(root / "config.yaml", tokenizer_config(root / "run", steps=6))
    train(TRAIN_TOKENIZER, config)
    return trained_state(root / "run", 6)


# ------------------------------------------------------------ damaged checkpoints (in process)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """An uninterrupted 6-step run in this process, one thread (what resumed in-process runs must equal)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("straight") / "run"
        train_tokenizer(from_dict(Config, tokenizer_config(out)), progress=False)
    finally:
        torch.set_num_threads(threads)
    return trained_state(out, 6)


def in_process(out: Path, *, resume: str | None = None, stop_at: int | None = None, steps: int = 6, **options):
    return train_tokenizer(from_dict(Config, tokenizer_config(out, steps=steps, **options)), resume=resume,
                           stop_at=stop_at, progress=False)


@pytest.mark.parametrize("how, file, says", [
    ("truncate", "optim.pt", r"optim\.pt: truncated"),
    ("flip", "tokenizer.safetensors", r"tokenizer\.safetensors: contents differ"),
    ("delete", "rng.pt", r"rng\.pt: missing"),
    ("truncate", "checksums.json", r"checksums\.json: damaged record"),
])
def test_resume_falls_back_past_a_damaged_checkpoint_and_continues_exactly(
        tmp_path, one_thread, straight_run, caplog, how, file, says):
    out = tmp_path / "run"
    in_process(out, stop_at=4)
    assert [p.name for p in checkpoint_dirs(out)] == ["step-0000004", "step-0000002"]
    damage(out / "checkpoints" / "step-0000004" / file, how)
    with caplog.at_level(logging.WARNING, logger="phenaki.training.base"):
        in_process(out, resume="latest")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step-0000004 is damaged" in w and re.search(says, w) for w in warnings), warnings
    assert any("resuming from" in w and "step-0000002" in w for w in warnings), warnings
    assert_identical(trained_state(out, 6), straight_run)
    verify_folder(out / "checkpoints" / "step-0000004")  # the damaged one was written again, whole


def test_checkpoint_without_a_record_that_readers_refuse_is_damaged_too(tmp_path, one_thread, caplog):
    """A checkpoint written before records existed is read unchecked; a file no reader accepts
    (torch.load, safetensors) is named like a checksum mismatch, and resume falls back."""
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    in_process(out, stop_at=4, steps=4)
    for step in (2, 4):
        (ckpts / f"step-{step:07d}" / "checksums.json").unlink()
    (ckpts / "step-0000004" / "optim.pt").write_bytes(b"not a zip archive")
    assert find_checkpoint(out, "latest").name == "step-0000004"  # no record: nothing to see by checksums
    with caplog.at_level(logging.INFO, logger="phenaki.training.base"):
        in_process(out, resume="latest", steps=4)
    messages = [r.getMessage() for r in caplog.records]
    assert any("step-0000004 is damaged" in m and "optim.pt: not readable by torch.load" in m for m in messages)
    assert any("resumed from" in m and "step-0000002" in m for m in messages)
    (ckpts / "step-0000004" / "checksums.json").unlink()  # written again, with a record: take it away
    (ckpts / "step-0000004" / "rng.pt").unlink()
    (ckpts / "step-0000002" / "ema.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match=r"no intact checkpoint .*\(2 damaged\): step-0000004: .*rng\.pt: "
                                              r"missing.*step-0000002: .*ema\.safetensors: not a readable"):
        in_process(out, resume="latest", steps=4)


def test_no_intact_checkpoint_or_a_damaged_explicit_one_is_a_clear_error(tmp_path, one_thread):
    out = tmp_path / "run"
    in_process(out, stop_at=4)
    ckpts = out / "checkpoints"
    damage(ckpts / "step-0000004" / "ema.safetensors", "flip")
    damage(ckpts / "step-0000002" / "optim.pt", "truncate")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint to resume in .*checkpoints \(2 damaged\): "
                                              r"step-0000004: .*ema\.safetensors.*step-0000002: .*optim\.pt"):
        in_process(out, resume="latest")
    with pytest.raises(CheckpointError, match="no intact checkpoint"):  # by checksums alone, too
        find_checkpoint(out, "latest")
    with pytest.raises(CheckpointError, match=r"--resume .*step-0000002: the checkpoint is damaged: .*optim\.pt: "
                                              r"truncated"):
        in_process(out, resume=str(ckpts / "step-0000002"))
    with pytest.raises(IntegrityError):  # the same damage, found by checksums alone
        verify_folder(ckpts / "step-0000004")
    # a run with no checkpoint at all still starts fresh
    assert find_checkpoint(tmp_path / "fresh", "latest") is None


def test_pruning_never_deletes_the_only_intact_checkpoint(tmp_path, one_thread, caplog):
    """Newer checkpoints damaged, the run falls back and saves an older step: with keep_checkpoints=1
    the just-written (only intact) checkpoint stays, and a later resume finds it."""
    out = tmp_path / "run"
    in_process(out, keep_checkpoints=3)
    assert [p.name for p in checkpoint_dirs(out)] == ["step-0000006", "step-0000004", "step-0000002"]
    damage(out / "checkpoints" / "step-0000006" / "optim.pt", "truncate")
    damage(out / "checkpoints" / "step-0000004" / "rng.pt", "flip")
    in_process(out, resume="latest", stop_at=4, keep_checkpoints=1)  # from step 2, saves step 4 again
    names = [p.name for p in checkpoint_dirs(out)]
    assert "step-0000004" in names and "step-0000002" not in names
    verify_folder(out / "checkpoints" / "step-0000004")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="phenaki.training.base"):
        in_process(out, resume="latest", keep_checkpoints=1)
    assert any("resumed from" in r.getMessage() and "step-0000004" in r.getMessage() for r in caplog.records)
    assert [p.name for p in checkpoint_dirs(out)] == ["step-0000006"]  # written again, whole; the rest pruned
    verify_folder(out / "checkpoints" / "step-0000006")


def test_clean_temporaries_restores_set_aside_folders_and_removes_dead_writes(tmp_path):
    gone = dead_pid()
    (tmp_path / "step-0000004").mkdir()
    (tmp_path / "step-0000004" / "a").write_text("new")
    (tmp_path / ".step-0000004.old-0123abcd").mkdir()  # swap finished, deletion lost
    (tmp_path / ".step-0000002.old-89abcdef").mkdir()  # killed between the renames
    (tmp_path / ".step-0000002.old-89abcdef" / "a").write_text("previous")
    (tmp_path / f".step-0000006.tmp-{gone}-0011aabb").mkdir()  # a write that never finished
    (tmp_path / f".chunk-00001.safetensors.tmp-{gone}-ffeeddcc").write_bytes(b"partial")
    (tmp_path / f".v.mp4.tmp-{gone}-12345678.mp4").write_bytes(b"partial")
    (tmp_path / f".mine.tmp-{os.getpid()}-12345678").write_bytes(b"being written")  # a live writer's: kept
    (tmp_path / ".hidden").write_text("not ours")
    removed = clean_temporaries(tmp_path)
    assert (tmp_path / "step-0000002" / "a").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".hidden", f".mine.tmp-{os.getpid()}-12345678", "step-0000002", "step-0000004"]
    assert len(removed) == 4


def test_a_run_cleans_what_a_killed_run_left_and_resumes_a_set_aside_checkpoint(tmp_path, one_thread,
                                                                              straight_run):
    """The states a SIGKILL leaves, made by hand: the next run puts the checkpoint back and resumes exactly."""
    out = tmp_path / "run"
    in_process(out, stop_at=4)
    gone = dead_pid()
    ckpts = out / "checkpoints"
    os.replace(ckpts / "step-0000004", ckpts / ".step-0000004.old-0badc0de")  # killed mid-swap
    (ckpts / f".step-0000006.tmp-{gone}-00000001").mkdir()
    (ckpts / f".step-0000006.tmp-{gone}-00000001" / "optim.pt").write_bytes(b"half")
    (out / f".final.tmp-{gone}-00000002").mkdir()
    (out / "previews").mkdir()
    (out / "previews" / f".step-0000002.gif.tmp-{gone}-00000003.gif").write_bytes(b"GIF8")
    in_process(out, resume="latest")
    assert leftovers(out) == []
    assert_identical(trained_state(out, 6), straight_run)


def test_token_cache_build_removes_half_written_chunks_and_redoes_unreadable_ones(tmp_path):
    from phenaki.data.shapes import ShapesDataset
    from phenaki.models.cvivit import CViViT
    from phenaki.training.token_cache import TokenDataset, tokenize_dataset

    torch.manual_seed(0)
    tokenizer = CViViT(TokenizerConfig(**FSQ))
    dataset = ShapesDataset(num_samples=6, num_frames=5, context_frames=3, seed=1)
    reference = TokenDataset(tokenize_dataset(tokenizer, dataset, tmp_path / "ref", chunk_size=3))
    out = tokenize_dataset(tokenizer, dataset, tmp_path / "t", chunk_size=3)
    gone = dead_pid()
    (out / "manifest.json").unlink()
    (out / "chunk-00001.safetensors").write_bytes(b"damaged")
    (out / f".chunk-00002.safetensors.tmp-{gone}-abcdef01").write_bytes(b"partial")
    cache = TokenDataset(tokenize_dataset(tokenizer, dataset, out, chunk_size=3))
    assert leftovers(out) == []
    assert [cache[i]["caption"] for i in range(6)] == [reference[i]["caption"] for i in range(6)]
    assert all(torch.equal(cache[i]["ids"], reference[i]["ids"]) for i in range(6))


# ------------------------------------------------------------------- SIGKILL (subprocesses)


def test_kill_during_a_checkpoint_write_resumes_exactly(tmp_path, reference):
    """The representative case: SIGKILL while step-4 is half written, then `--resume latest`."""
    config = write_config(tmp_path / "config.yaml", tokenizer_config(tmp_path / "run", steps=6))
    out = tmp_path / "run"
    train(TRAIN_TOKENIZER, config, kill="save:4:optim.pt")
    assert [p.name for p in checkpoint_dirs(out)] == ["step-0000002"]
    assert len(leftovers(out)) == 1 and ".step-0000004.tmp-" in leftovers(out)[0]
    resumed = train(TRAIN_TOKENIZER, config)
    assert "resumed from" in resumed.stderr and "step-0000002" in resumed.stderr
    assert leftovers(out) == []
    assert_identical(trained_state(out, 6), reference)


@pytest.mark.slow
def test_killed_again_and_again_at_every_kind_of_point_resumes_exactly(tmp_path, reference):
    """Nine kills in a row, each run resuming the last: in a step before any checkpoint, while a
    checkpoint is written (files half there; complete but not renamed), in a step, while pruning,
    while exporting, between the renames that replace a checkpoint and the final model."""
    config = write_config(tmp_path / "config.yaml", tokenizer_config(tmp_path / "run", steps=6))
    out = tmp_path / "run"
    schedule = [
        "step:1",                    # no checkpoint yet: the next run starts fresh
        "save:2:ema.safetensors",    # step-2 half written
        "step:3",                    # step-2 saved this time; killed in step 3
        "save:4:checksums.json",     # step-4 complete in its temporary folder, not renamed
        "prune:2",                   # step-4 saved, step-2 half deleted
        "export",                    # step-6 saved, final half written
        "swap:step-0000006",         # resumed at 6, step-6 written again: killed with it set aside
        "swap:final",                # final exists (rewritten after the step-6 swap): killed replacing it
    ]
    seen = []
    for kill in schedule:
        if kill == "swap:final":
            train(TRAIN_TOKENIZER, config)  # a clean finish first, so that there is a final to replace
        result = train(TRAIN_TOKENIZER, config, kill=kill)
        seen.append(result.stderr.split("FAULT_RUN killed: ")[1].strip())
        if kill.startswith("swap:"):
            name = kill.split(":")[1]
            parent = out if name == "final" else out / "checkpoints"
            assert not (parent / name).exists() and list(parent.glob(f".{name}.old-*"))
    result = train(TRAIN_TOKENIZER, config)
    assert "restoring" in result.stderr  # final was put back, then replaced
    assert leftovers(out) == [], leftovers(out)
    assert_identical(trained_state(out, 6), reference)
    for ckpt in checkpoint_dirs(out):
        verify_folder(ckpt)
    assert len(seen) == len(schedule)


def kill_at_random_moments(config: Path, out: Path, seed: int, kills: int = 6, attempts: int = 16) -> list:
    """Start the run again and again, SIGKILLing it from outside at a seeded random moment of one
    of three kinds: 0.3-2.5 s after the start (imports, clean-up, resuming), 0-80 ms after the
    k-th new metrics line (steps, saving, pruning), or 0-20 ms after a checkpoint's temporary
    folder appears (writing it, renaming it, pruning). Returns [(attempt, kind, delay)] of the
    kills that landed before the run ended by itself."""
    rng = random.Random(seed)
    metrics = out / "metrics.jsonl"
    args = [sys.executable, str(FAULT_RUN), str(TRAIN_TOKENIZER), "--config", str(config), "--no-progress",
            "--resume", "latest"]
    landed = []
    for attempt in range(attempts):
        lines = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        kind = ("time", "metrics", "checkpoint")[attempt % 3]
        delay = {"time": rng.uniform(0.3, 2.5), "metrics": rng.uniform(0.0, 0.08),
                 "checkpoint": rng.uniform(0.0, 0.02)}[kind]
        wanted = lines + rng.randint(1, 3)
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.monotonic()
        while proc.poll() is None:
            if kind == "time":
                fire = time.monotonic() - started >= delay
            elif kind == "metrics":
                fire = metrics.exists() and len(metrics.read_text().splitlines()) >= wanted
            else:
                fire = (out / "checkpoints").is_dir() and any(".tmp-" in p.name
                                                              for p in (out / "checkpoints").iterdir())
            if fire:
                if kind != "time":
                    time.sleep(delay)
                break
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed.append((attempt, kind, round(delay, 3)))
        proc.wait()
        if len(landed) >= kills:
            break
    return landed


@pytest.mark.slow
def test_killed_at_random_moments_resumes_exactly(tmp_path, reference):
    config = write_config(tmp_path / "config.yaml", tokenizer_config(tmp_path / "run", steps=6))
    out = tmp_path / "run"
    landed = kill_at_random_moments(config, out, seed=2026)
    assert len(landed) >= 4, landed
    train(TRAIN_TOKENIZER, config)
    assert leftovers(out) == [], (leftovers(out), landed)
    assert_identical(trained_state(out, 6), reference)




@pytest.mark.slow
def test_maskgit_killed_while_building_its_token_cache_and_training_resumes_exactly(tmp_path, tokenizer_dir):
    """The MaskGIT run builds its token cache first: killed mid-encode, then with the chunk written
    but not renamed, then in a step and in a checkpoint write; the final state equals a straight run's."""
    straight = write_config(tmp_path / "straight.yaml", maskgit_config(tmp_path / "straight"))
    train(TRAIN_MASKGIT, straight, "--tokenizer", tokenizer_dir)
    config = write_config(tmp_path / "config.yaml", maskgit_config(tmp_path / "run"))
    out = tmp_path / "run"
    for kill in ("encode:2", "cache:0", "step:3", "save:4:maskgit.safetensors", "export"):
        train(TRAIN_MASKGIT, config, "--tokenizer", tokenizer_dir, kill=kill)
        if kill == "cache:0":
            assert [p.name for p in (out / "tokens").iterdir() if ".tmp-" in p.name]
    train(TRAIN_MASKGIT, config, "--tokenizer", tokenizer_dir)
    assert leftovers(out) == [], leftovers(out)
    assert_identical(trained_state(out, 6), trained_state(tmp_path / "straight", 6))


@pytest.mark.slow
def test_shard_tokenising_killed_again_and_again_finishes_the_same_cache(tmp_path, tokenizer_dir):
    """`phenaki-data tokenize` killed mid-shard and between a chunk's write and its rename, three
    times, then run to the end: the same ids and captions as one uninterrupted run, nothing left over."""
    from phenaki.data.export import export_shapes
    from phenaki.data.shards import write_shards
    from phenaki.training.token_cache import TokenDataset

    folder = export_shapes(tmp_path / "data", 9, num_frames=5, seed=3, straddle_prob=0.0)
    write_shards(folder, tmp_path / "shards", samples_per_shard=3)
    command = ["phenaki-data", "tokenize", "--tokenizer", tokenizer_dir, "--in", tmp_path / "shards",
               "--batch-size", "2", "--device", "cpu"]
    run(*command, "--out", tmp_path / "reference", expect_kill=False)
    out = tmp_path / "tokens"
    for kill in ("encode:2", "cache:1", "encode:2", "cache:2"):
        run(*command, "--out", out, kill=kill)
    run(*command, "--out", out, expect_kill=False)
    assert leftovers(out) == []
    made, expected = TokenDataset(out), TokenDataset(tmp_path / "reference")
    assert len(made) == len(expected) == 9
    assert made.captions == expected.captions
    assert all(torch.equal(made[i]["ids"], expected[i]["ids"]) for i in range(9))


# ---------------------------------------------------------------------------------- full disk


def test_full_disk_during_a_checkpoint_write_is_one_error_naming_it(tmp_path, one_thread):
    """Files may not grow past 500 kB: the weights (380 kB) fit, optim.pt (790 kB) does not."""
    config = write_config(tmp_path / "config.yaml", tokenizer_config(tmp_path / "run", steps=6))
    out = tmp_path / "run"
    in_process(out, stop_at=2)
    before = {p.name: p.read_bytes() for p in (out / "checkpoints" / "step-0000002").iterdir()}
    result = train(TRAIN_TOKENIZER, config, fsize=500_000)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "Error: cannot write checkpoint" in result.stderr  # the command's own one-line error
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert f"cannot write checkpoint {out / 'checkpoints' / 'step-0000004'} (optim.pt): [Errno 27] File too large" \
        in errors[0]
    assert "the newest checkpoint is still step-0000002" in errors[0]
    assert [p.name for p in checkpoint_dirs(out)] == ["step-0000002"]
    assert {p.name: p.read_bytes() for p in (out / "checkpoints" / "step-0000002").iterdir()} == before
    verify_folder(out / "checkpoints" / "step-0000002")
    assert leftovers(out) == []


@pytest.mark.slow
def test_after_a_full_disk_the_run_resumes_exactly(tmp_path, reference):
    config = write_config(tmp_path / "config.yaml", tokenizer_config(tmp_path / "run", steps=6))
    out = tmp_path / "run"
    train(TRAIN_TOKENIZER, config, "--stop-at", "2")
    for _ in range(2):  # twice in a row
        assert train(TRAIN_TOKENIZER, config, fsize=500_000).returncode == 1
    train(TRAIN_TOKENIZER, config)
    assert leftovers(out) == []
    assert_identical(trained_state(out, 6), reference)


def test_a_final_export_that_cannot_be_written_names_it_and_keeps_the_checkpoint(tmp_path, one_thread,
                                                                                  monkeypatch):
    import errno

    from phenaki.training.base import CheckpointWriteError
    from phenaki.training.tokenizer_trainer import TokenizerTrainer

    def full(self, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(TokenizerTrainer, "export", full)
    out = tmp_path / "run"
    with pytest.raises(CheckpointWriteError, match=r"cannot export the final model to .*final: \[Errno 28\] No space "
                                                   r"left on device; the checkpoint .*step-0000002 holds"):
        in_process(out, steps=2)
    monkeypatch.undo()
    verify_folder(out / "checkpoints" / "step-0000002")
    assert (in_process(out, steps=2, resume="latest") / "model.safetensors").is_file()


VIDEO_WRITER = """
import json, sys, torch
from pathlib import Path
from phenaki.video import Video, VideoError
out = Path(sys.argv[1])
frames = torch.randint(0, 256, (12, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
results = {}
for name in sys.argv[2:]:
    try:
        Video(frames=frames, fps=8).save(out / name)
        results[name] = None
    except VideoError as exc:
        results[name] = [str(exc), isinstance(exc, OSError), getattr(exc, "errno", None)]
print(json.dumps(results))
"""


def test_full_disk_during_a_video_write_keeps_the_previous_file(tmp_path):
    """Video.save (mp4, gif, a PNG folder) with files limited to 10 kB: one-line VideoError naming the
    output, the previous video and sidecar untouched, no temporary file."""
    from phenaki.video import Video

    names = ["a.mp4", "b.gif", "frames"]
    small = torch.zeros(2, 64, 64, 3, dtype=torch.uint8)
    for name in names:
        Video(frames=small, fps=8, metadata={"previous": True}).save(tmp_path / name)
    before = {p.name: (p.read_bytes() if p.is_file() else sorted(q.read_bytes() for q in p.iterdir()))
              for p in tmp_path.iterdir()}
    result = subprocess.run([sys.executable, "-c", VIDEO_WRITER, str(tmp_path), *names], capture_output=True,
                            check=False, text=True, timeout=120, preexec_fn=limit_file_size(10_000))
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    for name in names:
        message, is_os_error, errno = results[name]
        assert message == f"cannot write {tmp_path / name}: [Errno 27] File too large (nothing was changed)"
        assert is_os_error and errno == 27
    after = {p.name: (p.read_bytes() if p.is_file() else sorted(q.read_bytes() for q in p.iterdir()))
             for p in tmp_path.iterdir()}
    assert after == before


@pytest.mark.parametrize("suffix", [".mp4", pytest.param(".gif", marks=pytest.mark.slow)])
def test_full_disk_in_phenaki_sample_is_one_line_and_exit_1(tmp_path, tiny_pipeline_dir, suffix):
    from phenaki.video import Video

    target = tmp_path / f"story{suffix}"
    Video(frames=torch.zeros(2, 64, 64, 3, dtype=torch.uint8), fps=8).save(target)
    before = (target.read_bytes(), target.with_suffix(".json").read_bytes())
    result = run("phenaki-sample", "--checkpoint", tiny_pipeline_dir, "--prompt", "a red ball moves right",
                 "--out", target, "--device", "cpu", fsize=8192)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert lines == [f"Error: cannot write {target}: [Errno 27] File too large (nothing was changed)"]
    assert "Traceback" not in result.stderr
    assert (target.read_bytes(), target.with_suffix(".json").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, target.with_suffix(".json").name])

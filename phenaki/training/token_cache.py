"""Pre-tokenised training data: run the frozen tokenizer once, train MaskGIT on ids.

A MaskGIT step should cost one transformer pass, not a video decode plus a tokenizer
pass. `tokenize_dataset` encodes a dataset in chunks (each written atomically, so a
crashed run resumes without redoing finished chunks; what a killed run left half-written
is removed when the next one starts, and a chunk that cannot be read is encoded again)
and `TokenDataset` serves the ids
with their captions and the number of leading token-frames that are context from a
previous scene (clips that straddle a scene change).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from ..config import to_dict
from ..models.cvivit import CViViT
from ..utils.fileio import atomic_file, atomic_write_text, clean_temporaries
from ..video import frames_to_pixels

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def context_token_frames(context_frames: int, temporal_patch_size: int) -> int:
    """Token-frames covering the first `context_frames` frames (0 when there is no context).

    Context lengths of 1 + pt*j frames fill whole token-frames; other lengths are
    rounded down so the prime never includes frames of the new scene.
    """
    if context_frames <= 0:
        return 0
    return 1 + (context_frames - 1) // temporal_patch_size


def _chunk_name(index: int) -> str:
    return f"chunk-{index:05d}.safetensors"


@torch.no_grad()
def _encode_chunk(tokenizer: CViViT, items: Iterable[dict[str, Any]], *, batch_size: int, device: str | torch.device,
                  autocast: torch.dtype | None, progress: Callable[[int], object] | None) -> tuple[dict, list[str]]:
    """Encode items (clips and images) in batches; return the chunk's tensors and captions."""
    pt = tokenizer.config.temporal_patch_size
    device_type = torch.device(device).type
    captions: list[str] = []
    rows: list[tuple[int, int]] = []  # (token-frames, position in its group)
    groups: dict[int, list[torch.Tensor]] = {}
    contexts: list[int] = []

    def flush(batch: list[dict[str, Any]]) -> None:
        encoded: list[torch.Tensor] = [torch.empty(0)] * len(batch)
        by_length: dict[int, list[int]] = {}
        for k, item in enumerate(batch):  # images and clips are encoded apart, order kept
            by_length.setdefault(int(item["video"].shape[0]), []).append(k)
        for positions in by_length.values():
            pixels = frames_to_pixels(torch.stack([batch[k]["video"] for k in positions])).to(device)
            with torch.autocast(device_type, dtype=autocast or torch.float32, enabled=autocast is not None):
                ids = tokenizer.encode(pixels).to(torch.int32).cpu()
            for k, row in zip(positions, ids):
                encoded[k] = row
        for item, row in zip(batch, encoded):
            bucket = groups.setdefault(row.shape[0], [])
            rows.append((row.shape[0], len(bucket)))
            bucket.append(row)
            captions.append(item["caption"])
            contexts.append(context_token_frames(int(item.get("context_frames", 0)), pt))
        if progress is not None:
            progress(len(batch))

    batch: list[dict[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    tensors: dict[str, torch.Tensor] = {f"ids_t{frames}": torch.stack(bucket) for frames, bucket in groups.items()}
    tensors["row_frames"] = torch.tensor([r[0] for r in rows], dtype=torch.int32)
    tensors["row_index"] = torch.tensor([r[1] for r in rows], dtype=torch.int32)
    tensors["context_token_frames"] = torch.tensor(contexts, dtype=torch.int32)
    return tensors, captions


def _chunk_items(path: Path) -> int:
    """Items in a written chunk (its captions, read from the header only)."""
    with safe_open(str(path), "pt") as fh:
        return len(json.loads(fh.metadata()["captions"]))


def _finished_items(path: Path) -> int | None:
    """Items of a chunk a previous run finished, or None when there is none to reuse: the file is
    missing, or it cannot be read (damaged after it was written; it is then encoded again)."""
    if not path.exists():
        return None
    try:
        return _chunk_items(path)
    except Exception as exc:  # noqa: BLE001 - safetensors and JSON errors of a damaged file
        log.warning("%s cannot be read (%s): encoding it again", path, " ".join(str(exc).split())[:200])
        return None


def _write_chunk(path: Path, tensors: dict[str, torch.Tensor], captions: list[str]) -> None:
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"captions": json.dumps(captions)})


def _write_manifest(out: Path, tokenizer: CViViT, chunks: list[str], items: int, **extra: Any) -> None:
    manifest = {
        "chunks": chunks,
        "items": items,
        "codebook_size": tokenizer.codebook_size,
        "token_grid": list(tokenizer.token_grid),
        "tokenizer": to_dict(tokenizer.config),
        **extra,
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def tokenize_dataset(
    tokenizer: CViViT,
    dataset: Dataset,
    out_dir: str | Path,
    *,
    num_items: int | None = None,
    chunk_size: int = 1024,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    autocast: torch.dtype | None = None,
    progress: Callable[[int], object] | None = None,
) -> Path:
    """Encode `num_items` items of `dataset` into `out_dir`; finished chunks are kept on restart.

    A chunk is kept only when it holds exactly its items, so a cache made with fewer
    items grows: its short last chunk is encoded again, full chunks are reused.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean_temporaries(out)  # half-written chunks of a killed run
    total = min(num_items or len(dataset), len(dataset))  # type: ignore[arg-type]
    tokenizer = tokenizer.to(device).eval()
    chunks = []
    for index, start in enumerate(range(0, total, chunk_size)):
        name = _chunk_name(index)
        chunks.append(name)
        stop = min(start + chunk_size, total)
        if _finished_items(out / name) == stop - start:
            log.info("%s exists: skipping items %d-%d", name, start, stop - 1)
            if progress is not None:
                progress(stop - start)
            continue
        items = (dataset[i] for i in range(start, stop))
        tensors, captions = _encode_chunk(tokenizer, items, batch_size=batch_size, device=device,
                                          autocast=autocast, progress=progress)
        _write_chunk(out / name, tensors, captions)
    _write_manifest(out, tokenizer, chunks, total)
    return out


def tokenize_shards(
    tokenizer: CViViT,
    shards: str | list[str],
    out_dir: str | Path,
    *,
    num_frames: int,
    fps: float,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    autocast: torch.dtype | None = None,
    progress: Callable[[int], object] | None = None,
) -> Path:
    """Encode every sample of every tar shard once: one token chunk per input shard.

    A chunk is written atomically when its shard is done, so a crashed run resumes
    without redoing finished shards; the manifest comes last and makes the folder a
    token cache that `TokenDataset` (and so the MaskGIT trainer) reads directly.
    """
    from ..data.shards import ShardDataset, expand_urls

    urls = expand_urls(shards)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean_temporaries(out)  # half-written chunks of a killed run
    tokenizer = tokenizer.to(device).eval()
    size = tuple(tokenizer.config.image_size)
    chunks, items, skipped = [], 0, 0
    for index, url in enumerate(urls):
        name = _chunk_name(index)
        chunks.append(name)
        done = _finished_items(out / name)
        if done is not None:
            log.info("%s exists: skipping shard %s", name, url)
            items += done
            continue
        stream = ShardDataset([url], num_frames=num_frames, fps=fps, size=size, crop="center", shuffle_buffer=0,
                              epochs=1)
        tensors, captions = _encode_chunk(tokenizer, iter(stream), batch_size=batch_size, device=device,
                                          autocast=autocast, progress=progress)
        skipped += stream.skipped
        if not captions:
            log.warning("shard %s gave no readable samples", url)
        _write_chunk(out / name, tensors, captions)
        items += len(captions)
    _write_manifest(out, tokenizer, chunks, items, sources=urls)
    if skipped:
        log.warning("%d corrupt sample(s) skipped", skipped)
    return out


class TokenDataset(Dataset):
    """Items `{"ids": long [T', H', W'], "caption": str, "prime_frames": int}` from a token cache."""

    def __init__(self, path: str | Path, *, codebook_size: int | None = None) -> None:
        self.path = Path(path)
        manifest_file = self.path / MANIFEST
        if not manifest_file.is_file():
            raise FileNotFoundError(f"{self.path} is not a finished token cache (no {MANIFEST}); run tokenize first")
        self.manifest = json.loads(manifest_file.read_text())
        if codebook_size is not None and self.manifest["codebook_size"] != codebook_size:
            raise ValueError(
                f"token cache {self.path} was made with a codebook of {self.manifest['codebook_size']}, "
                f"the model expects {codebook_size}"
            )
        parts: dict[int, list[torch.Tensor]] = {}
        counts: dict[int, int] = {}
        self.rows: list[tuple[int, int]] = []
        self.captions: list[str] = []
        contexts = []
        for name in self.manifest["chunks"]:
            with safe_open(str(self.path / name), "pt") as fh:
                captions = json.loads(fh.metadata()["captions"])
            tensors = load_file(str(self.path / name))
            offsets = dict(counts)
            for key, ids in tensors.items():
                if key.startswith("ids_t"):
                    frames = int(key[5:])
                    parts.setdefault(frames, []).append(ids)
                    counts[frames] = counts.get(frames, 0) + len(ids)
            for frames, index in zip(tensors["row_frames"].tolist(), tensors["row_index"].tolist()):
                self.rows.append((frames, offsets.get(frames, 0) + index))
            self.captions.extend(captions)
            contexts.append(tensors["context_token_frames"])
        self.groups = {frames: torch.cat(chunks) for frames, chunks in parts.items()}
        self.contexts = torch.cat(contexts) if contexts else torch.zeros(0, dtype=torch.int32)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        frames, row = self.rows[index]
        return {
            "ids": self.groups[frames][row].long(),
            "caption": self.captions[index],
            "prime_frames": int(self.contexts[index]),
        }

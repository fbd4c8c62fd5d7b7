"""WebVid-style tar shards: write them from a folder dataset, stream them into training.

Layout (what the webdataset tools write): `shard-000000.tar`, `shard-000001.tar`, ...
each holding samples as `NNNNNN.mp4` (or .webm/.mkv/.gif/.jpg/.png) + `NNNNNN.txt`
(the caption) + `NNNNNN.json` (caption and source path).

The tar plumbing is the `webdataset` library: maintained, the field's standard for
exactly this layout, and it already streams tars without unpacking, shuffles shards
deterministically per epoch, splits shards across processes and DataLoader workers
(so no sample is read twice in an epoch) and keeps going past broken tar members.
This module adds what is ours: decoding a sample into a clip of the configured
frames, fps and size (the same rules as the folder dataset), a count of the samples
skipped as corrupt, and the shard writer.

Shards may live anywhere webdataset reads: local paths, `http://` and `https://` URLs
(fetched with `curl`, which webdataset runs), `pipe:COMMAND` (a command writing the tar
to stdout, e.g. `pipe:aws s3 cp s3://bucket/shard-000000.tar -`), and the other schemes of
webdataset's `gopen` (`gs:`, `hf:`, `ais:`, `sftp:`, ...). Any other scheme (`s3://`,
`gcs://`, `az://`, ...) is opened through fsspec when fsspec and that scheme's library
(s3fs, gcsfs, adlfs) are installed. A shard that cannot be opened or breaks off mid-download
is skipped with a warning and counted (`ShardDataset.failed_shards`); the run goes on.

Streaming has no random access, so a resumed run continues with a fresh shuffle of
the shards rather than replaying the exact sample order (map-style datasets resume
exactly).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..utils.fileio import atomic_file
from ..video import VideoError, probe_video, read_video, resize_and_crop
from .video_text import DatasetError, read_captions

log = logging.getLogger(__name__)

VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov", "gif")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")
SHARD_NAME = "shard-{:06d}.tar"
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+):")  # two letters at least: `C:\\` is a drive


def url_scheme(part: str) -> str | None:
    """The scheme of a shard URL (`http`, `pipe`, `s3`, ...), None for a local path."""
    match = _SCHEME.match(part)
    return match.group(1).lower() if match else None


def check_scheme(url: str) -> None:
    """Make sure a shard URL can be opened: webdataset's own schemes, else fsspec's (registered
    with webdataset here). Anything else is a `DatasetError` naming the scheme and what to install."""
    from webdataset.gopen import gopen_schemes

    scheme = url_scheme(url)
    if scheme in ("http", "https", "sftp", "ftps", "scp") and shutil.which("curl") is None:
        raise DatasetError(f"cannot read shards from {url!r}: webdataset fetches {scheme} URLs with curl, "
                           "which is not installed (e.g. apt-get install curl)")
    if scheme is None or scheme == "file" or scheme in gopen_schemes:
        return
    try:
        import fsspec
    except ImportError:
        raise DatasetError(f"cannot read shards from {url!r}: the scheme {scheme!r} needs fsspec "
                           f"(pip install fsspec and its {scheme} library, e.g. s3fs for s3://)") from None
    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as exc:
        raise DatasetError(f"cannot read shards from {url!r}: fsspec cannot open {scheme!r} here "
                           f"({' '.join(str(exc).split())[:200]})") from None
    gopen_schemes[scheme] = _gopen_fsspec


def _gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> Any:
    """webdataset's opener for schemes it leaves to fsspec (s3://, gcs://, az://, ...)."""
    import fsspec

    return fsspec.open(url, mode).open()


def expand_urls(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Shard paths from globs, `{000000..000009}` ranges, comma-separated lists or a list.

    URLs (`https://host/shard-{000000..000099}.tar`, `pipe:...`, `s3://...`) are expanded
    by their ranges only: nothing is listed or checked on the server before it is read, but
    a scheme nothing here can read is an error now rather than at the first step."""
    items = [spec] if isinstance(spec, str) else list(spec)
    parts = [p.strip() for item in items for p in str(item).split(",") if p.strip()]
    out: list[str] = []
    for part in parts:
        match = _BRACES.search(part)
        if match:
            lo, hi = match.group(1), match.group(2)
            width = len(lo)
            for n in range(int(lo), int(hi) + 1):
                out.extend(expand_urls(part[: match.start()] + str(n).zfill(width) + part[match.end():]))
            continue
        if url_scheme(part) not in (None, "file"):
            check_scheme(part)
            out.append(part)
        elif any(c in part for c in "*?["):
            found = sorted(glob.glob(os.path.expanduser(part)))
            if not found:
                raise DatasetError(f"no shards match {part!r}")
            out.extend(found)
        elif Path(part).is_dir():
            found = sorted(str(p) for p in Path(part).glob("*.tar"))
            if not found:
                raise DatasetError(f"no .tar shards in the folder {part}")
            out.extend(found)
        else:
            if not Path(part).is_file():
                raise DatasetError(f"shard not found: {part}")
            out.append(part)
    if not out:
        raise DatasetError(f"no shards given ({spec!r})")
    return out


def write_shards(root: str | Path, out_dir: str | Path, *, samples_per_shard: int = 1000,
                 captions: str | None = None) -> list[Path]:
    """Pack a folder dataset (captions.jsonl/csv + files) into tar shards, files byte for byte.

    Each shard is written to a temporary name and renamed when complete, so an
    interrupted run never leaves a truncated shard under a final name. Missing files
    are skipped with a warning and counted in the log.
    """
    import webdataset as wds

    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    root, out = Path(root), Path(out_dir)
    pairs = read_captions(root, captions)
    if out.is_dir() and any(out.glob("shard-*.tar")):
        raise DatasetError(f"{out} already holds shards: write into an empty folder (old shards would mix in)")
    out.mkdir(parents=True, exist_ok=True)
    entries = []  # (key index, path, suffix, caption, relative path) of the files that can be packed
    for index, (rel, caption) in enumerate(pairs):
        path = root / rel
        ext = path.suffix.lower().lstrip(".")
        if not path.is_file() or ext not in VIDEO_EXTS + IMAGE_EXTS:
            log.warning("skipping %s: %s", path, "not a video or image suffix" if path.is_file() else "file not found")
            continue
        entries.append((index, path, ext, caption, rel))
    missing = len(pairs) - len(entries)
    written: list[Path] = []
    for first in range(0, len(entries), samples_per_shard):
        target = out / SHARD_NAME.format(len(written))
        # renamed into place only when complete; samples are streamed in one file at a time
        with atomic_file(target) as tmp, open(tmp, "wb") as fh, wds.TarWriter(fh) as sink:
            for index, path, ext, caption, rel in entries[first:first + samples_per_shard]:
                sink.write({
                    "__key__": f"{index:06d}",
                    ext: path.read_bytes(),
                    "txt": caption,
                    "json": json.dumps({"caption": caption, "source": rel}),
                })
        written.append(target)
    if missing:
        log.warning("%d of %d entries were skipped", missing, len(pairs))
    if not written:
        raise DatasetError(f"{root}: nothing to write (every entry was skipped)")
    return written


def _media(sample: dict[str, Any]) -> tuple[str, bytes]:
    for ext in VIDEO_EXTS + IMAGE_EXTS:
        if ext in sample:
            return ext, sample[ext]
    raise VideoError(f"sample {sample.get('__key__')} has no video or image member")


def _caption(sample: dict[str, Any]) -> str:
    if "txt" in sample:
        return bytes(sample["txt"]).decode("utf-8").strip()
    if "json" in sample:
        return str(json.loads(bytes(sample["json"]).decode("utf-8"))["caption"]).strip()
    raise VideoError(f"sample {sample.get('__key__')} has no caption (.txt or .json)")


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardDataset(IterableDataset):
    """Clips streamed from tar shards, endlessly (epoch after epoch), for the trainers.

    Shards are shuffled per epoch (the same order on every process), then split across
    processes and DataLoader workers; samples are shuffled within a buffer. Items are
    the folder dataset's dicts: `video` uint8 [T, H, W, 3] (T = 1 for images),
    `caption`, `path` (shard/key), `context_frames` 0, `prev_caption` "".
    """

    def __init__(self, urls: str | list[str], *, num_frames: int = 11, fps: float = 8.0,
                 size: int | tuple[int, int] = 64, crop: Literal["center", "random"] = "center",
                 shuffle_buffer: int = 1000, seed: int = 0, images: bool = True, epochs: int | None = None) -> None:
        self.urls = expand_urls(urls)
        self.num_frames = num_frames
        self.fps = float(fps)
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.crop = crop
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.images = images
        self.epochs = epochs
        self.start_epoch = 0
        self.skipped = 0  # corrupt samples skipped by this process (per worker copy)
        self.failed_shards = 0  # shards that could not be opened or broke off while read
        # read in the main process: DataLoader workers (spawned ones too) inherit these
        self.rank, self.world = _rank_world()

    def set_epoch(self, epoch: int) -> None:
        """Start from this epoch (a resumed run continues with a new shard order)."""
        self.start_epoch = epoch
        self.rank, self.world = _rank_world()

    def _pipeline(self, epoch: int):
        import webdataset as wds

        rank, world = self.rank, self.world
        if len(self.urls) < world:
            raise DatasetError(f"{len(self.urls)} shard(s) cannot feed {world} processes: write more shards")
        urls = list(self.urls)
        random.Random(self.seed * 1_000_003 + epoch).shuffle(urls)  # identical on every process
        urls = urls[rank::world]
        worker = get_worker_info()
        if worker is not None:
            if len(urls) < worker.num_workers:
                log.warning("process %d has %d shard(s) for %d workers: some workers stay idle", rank, len(urls),
                            worker.num_workers)
            urls = urls[worker.id::worker.num_workers]
        if not urls:
            return []
        stream = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=None,
                                handler=self._tar_error, empty_check=False)
        if self.shuffle_buffer > 1:
            stream = stream.shuffle(self.shuffle_buffer, rng=random.Random(
                (self.seed * 1_000_003 + epoch) * 1009 + rank * 101 + (worker.id if worker else 0)))
        return stream

    def _tar_error(self, exc: Exception) -> bool:
        self.skipped += 1
        if isinstance(exc, (OSError, tarfile.TarError, EOFError)):  # the shard itself: unreachable, cut off
            self.failed_shards += 1
            log.warning("skipping the rest of a shard that could not be read (%d so far): %s", self.failed_shards,
                        " ".join(str(exc).split())[:300])
        else:
            log.warning("skipping a broken shard member: %s", exc)
        return True  # keep going

    def decode(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """A shard sample -> a clip (or a 1-frame image) at the configured fps and size."""
        ext, data = _media(sample)
        caption = _caption(sample)
        is_image = ext in IMAGE_EXTS
        with tempfile.NamedTemporaryFile(suffix=f".{ext}", dir=_scratch_dir()) as tmp:
            tmp.write(data)
            tmp.flush()
            info = None if is_image else probe_video(tmp.name)
            if info is None or info.num_frames <= 1:
                frames, _ = read_video(tmp.name, num_frames=1)
            else:  # pick the window first: only it is decoded
                available = max(1, int(info.duration * self.fps + 1e-6)) if info.duration else self.num_frames
                start = rng.randrange(available - self.num_frames + 1) if available > self.num_frames else 0
                frames, _ = read_video(tmp.name, start=start, num_frames=self.num_frames, fps=self.fps)
                if frames.shape[0] < self.num_frames:
                    pad = frames[-1:].expand(self.num_frames - frames.shape[0], -1, -1, -1)
                    frames = torch.cat([frames, pad])
        generator = torch.Generator().manual_seed(rng.randrange(2**31))
        frames = resize_and_crop(frames, self.size, mode=self.crop, generator=generator)
        return {"video": frames, "caption": caption, "path": f"{sample.get('__url__', '')}/{sample['__key__']}",
                "context_frames": 0, "prev_caption": ""}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank = self.rank
        worker = get_worker_info()
        epoch = self.start_epoch
        while self.epochs is None or epoch < self.start_epoch + self.epochs:
            rng = random.Random((self.seed + epoch) * 7919 + rank * 31 + (worker.id if worker else 0))
            produced = 0
            urls_here = False
            for sample in self._pipeline(epoch):
                urls_here = True
                try:
                    item = self.decode(sample, rng)
                except (VideoError, OSError, RuntimeError, ValueError, KeyError, UnicodeDecodeError) as exc:
                    self.skipped += 1
                    log.warning("skipping corrupt sample %s/%s (%d skipped so far): %s", sample.get("__url__"),
                                sample.get("__key__"), self.skipped, exc)
                    continue
                if item["video"].shape[0] == 1 and not self.images:
                    continue
                produced += 1
                yield item
            if urls_here and produced == 0 and self.epochs is None:
                raise DatasetError(f"process {rank}: a whole pass over its shards gave no usable sample "
                                   f"({self.skipped} skipped as corrupt)")
            if not urls_here and self.epochs is None:
                return  # this worker has no shards: the others feed the loader
            epoch += 1


def _scratch_dir() -> str | None:
    """Decode through RAM when the system has a RAM disk."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


__all__ = ["ShardDataset", "check_scheme", "expand_urls", "url_scheme", "write_shards"]

"""Real video-text datasets: a folder of videos and/or images with captions.

Layout (as WebVid-style sets are commonly unpacked):

    root/
      captions.jsonl      {"path": "clips/0001.mp4", "caption": "a dog runs"} per line
      (or captions.csv    with a header row containing `path` and `caption`)
      clips/0001.mp4 ...  any format `phenaki.video.read_video` reads, or images

Clips are sampled at a target fps, frame count and size; images load as 1-frame
videos (joint image/video training). A file that cannot be read is skipped with
one warning and counted, so a corrupt file never ends an epoch.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from ..video import IMAGE_SUFFIXES, VideoError, probe_video, read_video, resize_and_crop

log = logging.getLogger(__name__)

CAPTION_FILES = ("captions.jsonl", "captions.csv")


class DatasetError(ValueError):
    """The dataset folder or its caption file is unusable; the message says why."""


@dataclass
class Entry:
    """One captioned file, with the frame count known after probing (None = unprobed)."""

    path: Path
    caption: str
    is_image: bool
    frames_at_fps: int | None = None


def read_captions(root: Path, captions: str | None = None) -> list[tuple[str, str]]:
    """(relative path, caption) pairs from captions.jsonl or captions.csv."""
    if captions is not None:
        candidates = [root / captions]
    else:
        candidates = [root / name for name in CAPTION_FILES]
    file = next((c for c in candidates if c.is_file()), None)
    if file is None:
        names = " or ".join(str(c) for c in candidates)
        raise DatasetError(f"no caption file in {root}: expected {names}")
    pairs: list[tuple[str, str]] = []
    if file.suffix == ".jsonl":
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                pairs.append((str(record["path"]), str(record["caption"])))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(
                    f"{file}:{number}: each line must be a JSON object with 'path' and "
                    f"'caption' ({exc})"
                ) from None
    else:
        with file.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"path", "caption"} <= set(reader.fieldnames):
                raise DatasetError(f"{file}: the header must name 'path' and 'caption' columns")
            for row in reader:
                pairs.append((row["path"], row["caption"]))
    if not pairs:
        raise DatasetError(f"{file}: no entries")
    return pairs


class VideoTextDataset(Dataset):
    """Captioned clips from a folder, resized and cropped to one size.

    Items are dicts: `video` uint8 [T, H, W, 3] (T = 1 for images), `caption`,
    `path`, and `context_frames`/`prev_caption` (0 and "" here; the Shapes dataset
    fills them for clips that straddle a scene change).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        num_frames: int = 11,
        fps: float = 8.0,
        size: int | tuple[int, int] = 64,
        crop: Literal["center", "random"] = "center",
        captions: str | None = None,
        images: bool = True,
        verify: bool = True,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder not found: {self.root}")
        if num_frames < 1:
            raise DatasetError(f"num_frames must be >= 1, got {num_frames}")
        self.num_frames = num_frames
        self.fps = float(fps)
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.crop = crop
        self.seed = seed
        self.skipped: list[tuple[str, str]] = []
        self._warned: set[str] = set()
        self.entries: list[Entry] = []
        for rel, caption in read_captions(self.root, captions):
            path = self.root / rel
            is_image = path.suffix.lower() in IMAGE_SUFFIXES
            if is_image and not images:
                continue
            self.entries.append(Entry(path, caption, is_image))
        if verify:
            self.entries = [e for e in self.entries if self._probe(e)]
        if self.skipped:
            log.warning("%s: skipped %d unreadable file(s)", self.root, len(self.skipped))
        if not self.entries:
            raise DatasetError(f"{self.root}: no readable clips")

    def _skip(self, path: Path, reason: str) -> None:
        """Record a bad file and warn once for it."""
        key = str(path)
        if key in self._warned:
            return
        self._warned.add(key)
        self.skipped.append((key, reason))
        log.warning("skipping unreadable file %s: %s", path, reason)

    def _probe(self, entry: Entry) -> bool:
        """Open the file's header; a file that cannot even be probed is skipped."""
        if not entry.path.exists():
            self._skip(entry.path, "file not found")
            return False
        try:
            info = probe_video(entry.path)
        except (VideoError, OSError) as exc:
            self._skip(entry.path, str(exc))
            return False
        if info.num_frames <= 1:
            entry.is_image = True
        entry.frames_at_fps = max(1, int(info.duration * self.fps + 1e-6)) if info.duration else None
        return True

    def __len__(self) -> int:
        return len(self.entries)

    def _rng(self, index: int) -> random.Random:
        return random.Random(self.seed * 1_000_003 + index)

    def _load(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        rng = self._rng(index)
        if entry.is_image:
            frames, _ = read_video(entry.path, num_frames=1)
        else:
            start = 0
            if entry.frames_at_fps is not None and entry.frames_at_fps > self.num_frames:
                start = rng.randrange(entry.frames_at_fps - self.num_frames + 1)
            frames, _ = read_video(entry.path, start=start, num_frames=self.num_frames, fps=self.fps)
            if 0 < frames.shape[0] < self.num_frames:
                # A clip shorter than asked for holds its last frame rather than being lost.
                pad = frames[-1:].expand(self.num_frames - frames.shape[0], -1, -1, -1)
                frames = torch.cat([frames, pad])
        generator = torch.Generator().manual_seed(rng.randrange(2**31))
        frames = resize_and_crop(frames, self.size, mode=self.crop, generator=generator)
        return {
            "video": frames,
            "caption": entry.caption,
            "path": str(entry.path),
            "context_frames": 0,
            "prev_caption": "",
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Load item `index`; a file failing at decode time is replaced by the next good one."""
        for offset in range(len(self.entries)):
            i = (index + offset) % len(self.entries)
            try:
                return self._load(i)
            except (VideoError, OSError, RuntimeError, ValueError) as exc:
                self._skip(self.entries[i].path, str(exc))
        raise DatasetError(f"{self.root}: every file failed to load")

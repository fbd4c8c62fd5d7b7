"""Write generated datasets to disk in the folder layout `VideoTextDataset` reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..utils.fileio import atomic_write_dir
from ..video import write_video
from .shapes import FPS, HoldOut, ShapesDataset


def export_shapes(
    out: str | Path,
    num: int,
    *,
    num_frames: int = 11,
    seed: int = 0,
    fmt: str = "mp4",
    split: str = "all",
    straddle_prob: float = 0.5,
    holdout: HoldOut | None = None,
    progress: Callable[[int], object] | None = None,
) -> Path:
    """Render `num` Shapes clips to `out/clips/` plus `out/captions.jsonl`.

    The whole folder is written under a temporary name and renamed at the end, so an
    interrupted export never leaves a half-written dataset behind.
    """
    dataset = ShapesDataset(
        num_samples=num, num_frames=num_frames, seed=seed, holdout=holdout, split=split,
        straddle_prob=straddle_prob,
    )

    def write(tmp: Path) -> None:
        (tmp / "clips").mkdir()
        lines = []
        for index in range(num):
            item = dataset[index]
            name = f"clips/{index:06d}" + ("" if fmt == "png" else f".{fmt}")
            write_video(tmp / name, item["video"], FPS)
            record = {
                "path": name,
                "caption": item["caption"],
                "context_frames": item["context_frames"],
                "prev_caption": item["prev_caption"],
            }
            lines.append(json.dumps(record))
            if progress is not None:
                progress(1)
        (tmp / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    return atomic_write_dir(out, write)

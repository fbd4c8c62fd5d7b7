"""Datasets: the Shapes story domain, real video-text folders and tar shards.

`build_dataset(data_config, split)` is the one entry the trainers use, so a config's
`data.kind` decides where clips come from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from torch.utils.data import Dataset

    from ..config import DataConfig


def build_dataset(data: "DataConfig", split: str = "train", *, num_samples: int | None = None,
                  seed_offset: int = 0) -> "Dataset":
    """The dataset a config describes; `split` is train / heldout / all (Shapes only)."""
    if data.kind == "shapes" and data.shapes_version == 2:
        from . import shapes2

        holdout2 = shapes2.holdout_from_config(data)
        if split == "heldout" and holdout2 is None:
            split = "all"
        return shapes2.ShapesDataset(
            num_samples=num_samples or data.num_samples, num_frames=data.num_frames, seed=data.seed + seed_offset,
            holdout=holdout2, split=split, straddle_prob=data.straddle_prob, context_frames=data.context_frames,
            image_prob=data.image_prob if split == "train" else 0.0, max_scenes=data.max_scenes,
            one_object_prob=data.one_object_prob, two_clause_prob=data.two_clause_prob,
        )
    if data.kind == "shapes":
        from .shapes import ShapesDataset, holdout_from_config

        holdout = holdout_from_config(data)
        if split == "heldout" and holdout is None:
            split = "all"  # nothing is held out: evaluate on fresh samples instead
        return ShapesDataset(
            num_samples=num_samples or data.num_samples,
            num_frames=data.num_frames,
            seed=data.seed + seed_offset,
            holdout=holdout,
            split=split,
            straddle_prob=data.straddle_prob,
            context_frames=data.context_frames,
            image_prob=data.image_prob if split == "train" else 0.0,
        )
    if data.kind == "folder":
        from .video_text import VideoTextDataset

        if not data.path:
            raise ValueError("data.path must name the dataset folder when data.kind is 'folder'")
        return VideoTextDataset(
            data.path,
            num_frames=data.num_frames,
            fps=data.fps,
            size=data.image_size,
            crop=data.crop if split == "train" else "center",
            seed=data.seed + seed_offset,
        )
    if data.kind == "shards":
        from .shards import ShardDataset

        if not data.path:
            raise ValueError("data.path must name the shards (a folder, glob or {000000..000099} pattern) "
                             "when data.kind is 'shards'")
        return ShardDataset(
            data.path,
            num_frames=data.num_frames,
            fps=data.fps,
            size=data.image_size,
            crop=data.crop if split == "train" else "center",
            shuffle_buffer=data.shuffle_buffer if split == "train" else 0,
            seed=data.seed + seed_offset,
        )
    raise ValueError(f"data.kind {data.kind!r} is not known (use 'shapes', 'folder' or 'shards')")

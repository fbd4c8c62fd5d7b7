import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from phenaki.data.video_text import DatasetError, VideoTextDataset
from phenaki.training.base import collate_clips
from phenaki.video import write_video

DATA = Path(__file__).parent / "data"


def _clip(t: int, h: int, w: int, seed: int) -> torch.Tensor:
    """A smooth moving gradient, so codecs keep it close."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, generator=g) * 200
    y = torch.linspace(0, 1, h)[:, None]
    x = torch.linspace(0, 1, w)[None, :]
    frames = [
        torch.stack([(base[c] + 50 * torch.sin(6 * x + 4 * y + 0.3 * i + c)).expand(h, w) for c in range(3)], -1)
        for i in range(t)
    ]
    return torch.stack(frames).clamp(0, 255).to(torch.uint8)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "videos"
    (root / "clips").mkdir(parents=True)
    write_video(root / "clips" / "a.mp4", _clip(30, 72, 96, 0), 24)
    write_video(root / "clips" / "b.webm", _clip(20, 60, 60, 1), 16)
    write_video(root / "clips" / "c.gif", _clip(12, 50, 70, 2), 8)
    Image.fromarray(_clip(1, 80, 64, 3)[0].numpy()).save(root / "clips" / "photo.png")
    (root / "clips" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    records = [
        {"path": "clips/a.mp4", "caption": "waves"},
        {"path": "clips/b.webm", "caption": "ripples"},
        {"path": "clips/broken.mp4", "caption": "never loads"},
        {"path": "clips/c.gif", "caption": "a gif"},
        {"path": "clips/photo.png", "caption": "a photo"},
    ]
    (root / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return root


def test_corrupt_file_is_skipped_with_one_warning(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="phenaki.data.video_text"):
        dataset = VideoTextDataset(folder, num_frames=11, fps=8, size=64)
    per_file = [r for r in caplog.records if "broken.mp4" in r.getMessage()]
    assert len(per_file) == 1
    assert [Path(p).name for p, _ in dataset.skipped] == ["broken.mp4"]
    captions = sorted(dataset[i]["caption"] for i in range(len(dataset)))
    assert captions == ["a gif", "a photo", "ripples", "waves"]


def test_clips_have_the_target_shape_and_images_are_one_frame(folder):
    dataset = VideoTextDataset(folder, num_frames=5, fps=8, size=(48, 64))
    by_caption = {dataset[i]["caption"]: dataset[i]["video"] for i in range(len(dataset))}
    assert tuple(by_caption["waves"].shape) == (5, 48, 64, 3)
    assert tuple(by_caption["a photo"].shape) == (1, 48, 64, 3)
    assert all(v.dtype == torch.uint8 for v in by_caption.values())


def test_same_index_same_clip(folder):
    a = VideoTextDataset(folder, num_frames=5, fps=8, size=32, crop="random", seed=3)
    b = VideoTextDataset(folder, num_frames=5, fps=8, size=32, crop="random", seed=3)
    for i in range(len(a)):
        assert torch.equal(a[i]["video"], b[i]["video"])


def test_decode_failure_at_load_time_is_replaced_not_raised(folder, caplog, monkeypatch):
    dataset = VideoTextDataset(folder, num_frames=5, fps=8, size=32)
    # the file passes probing but breaks afterwards (e.g. truncated on a network disk)
    target = next(i for i, e in enumerate(dataset.entries) if e.path.name == "a.mp4")
    dataset.entries[target].path.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="phenaki.data.video_text"):
        item = dataset[target]
        dataset[target]
    assert item["caption"] != "waves"
    assert sum("a.mp4" in r.getMessage() for r in caplog.records) == 1


def test_works_with_dataloader_workers(folder):
    dataset = VideoTextDataset(folder, num_frames=5, fps=8, size=32)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_clips)
    seen = 0
    for groups in loader:
        for group in groups:
            assert group["video"].shape[1:] in [(5, 32, 32, 3), (1, 32, 32, 3)]
            seen += group["video"].shape[0]
    assert seen == len(dataset)


def test_csv_captions(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    write_video(root / "x.mp4", _clip(16, 40, 40, 4), 8)
    (root / "captions.csv").write_text('path,caption\nx.mp4,"a clip, with a comma"\n')
    dataset = VideoTextDataset(root, num_frames=9, fps=8, size=32)
    assert dataset[0]["caption"] == "a clip, with a comma"


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        VideoTextDataset(tmp_path / "missing")
    with pytest.raises(DatasetError, match="captions.jsonl or .*captions.csv"):
        VideoTextDataset(tmp_path)
    (tmp_path / "captions.jsonl").write_text('{"file": "x.mp4"}\n')
    with pytest.raises(DatasetError, match=r"captions.jsonl:1"):
        VideoTextDataset(tmp_path)


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("name", ["carphone_30f.mp4", "bikes_25f_320x136.mp4"])
def test_real_clips_at_8_fps(tmp_path, name, size):
    root = tmp_path / "real"
    root.mkdir()
    (root / name).write_bytes((DATA / name).read_bytes())
    (root / "captions.jsonl").write_text(json.dumps({"path": name, "caption": "real footage"}) + "\n")
    dataset = VideoTextDataset(root, num_frames=5, fps=8, size=size)
    video = dataset[0]["video"]
    assert tuple(video.shape) == (5, size, size, 3)
    assert video.float().std() > 20  # natural texture, not a blank frame
    assert (video[1:].float() - video[:-1].float()).abs().mean() > 1  # frames differ: real motion

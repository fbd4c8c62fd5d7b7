"""Tar shards: writing, streaming (split without duplicates, corrupt samples skipped),
pre-tokenising (resumable), and the round trip folder -> shards -> tokens -> MaskGIT steps."""

import json
import tarfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader

from phenaki.cli import data_main
from phenaki.config import Config, TokenizerConfig, from_dict
from phenaki.data import build_dataset
from phenaki.data import shards as shards_module
from phenaki.data.export import export_shapes
from phenaki.data.shards import ShardDataset, expand_urls, write_shards
from phenaki.data.video_text import DatasetError
from phenaki.models.cvivit import CViViT
from phenaki.training.base import collate_clips
from phenaki.training.maskgit_trainer import train_maskgit
from phenaki.training.token_cache import MANIFEST, TokenDataset

TOKENIZER = {"dim": 32, "spatial_depth": 1, "temporal_depth": 1, "heads": 2, "dim_head": 16,
             "quantizer": "fsq", "fsq_levels": [5, 5, 5], "num_frames": 5}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """12 Shapes clips (5 frames) + one PNG image + one missing file, as a folder dataset."""
    root = export_shapes(tmp_path_factory.mktemp("folder") / "data", 12, num_frames=5, seed=3, straddle_prob=0.0)
    from PIL import Image

    from phenaki.video import read_video

    frames, _ = read_video(root / "clips" / sorted(p.name for p in (root / "clips").iterdir())[0])
    Image.fromarray(frames[0].numpy()).save(root / "still.png")
    with (root / "captions.jsonl").open("a") as fh:
        fh.write(json.dumps({"path": "still.png", "caption": "a red ball"}) + "\n")
        fh.write(json.dumps({"path": "gone.mp4", "caption": "never written"}) + "\n")
    return root


@pytest.fixture(scope="module")
def shard_dir(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_shards(folder, out, samples_per_shard=4)
    return out


def captions_of(folder: Path) -> list[str]:
    return [json.loads(l)["caption"] for l in (folder / "captions.jsonl").read_text().splitlines()]


def test_shards_hold_files_byte_for_byte_in_the_webdataset_layout(folder, shard_dir):
    tars = sorted(shard_dir.glob("*.tar"))
    assert [t.name for t in tars] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar",
                                      "shard-000003.tar"]  # 13 readable samples, 4 per shard
    with tarfile.open(tars[0]) as tf:
        names = tf.getnames()
        assert sorted(names[:3]) == ["000000.json", "000000.mp4", "000000.txt"]
        first = json.loads(tf.extractfile("000000.json").read())
        assert tf.extractfile("000000.mp4").read() == (folder / first["source"]).read_bytes()
        assert tf.extractfile("000000.txt").read().decode() == first["caption"]
    with tarfile.open(tars[-1]) as tf:
        assert any(n.endswith(".png") for n in tf.getnames())
    assert not list(shard_dir.glob("*.tmp*"))


def test_url_specs(shard_dir):
    all_tars = [str(p) for p in sorted(shard_dir.glob("*.tar"))]
    assert expand_urls(str(shard_dir)) == all_tars
    assert expand_urls(str(shard_dir / "shard-*.tar")) == all_tars
    assert expand_urls(str(shard_dir / "shard-{000001..000002}.tar")) == all_tars[1:3]
    assert expand_urls(",".join(all_tars[:2])) == all_tars[:2]
    with pytest.raises(DatasetError, match="no shards match"):
        expand_urls(str(shard_dir / "nothing-*.tar"))
    with pytest.raises(DatasetError, match="shard not found"):
        expand_urls(str(shard_dir / "shard-999999.tar"))


def test_stream_reads_every_sample_once_per_epoch(folder, shard_dir):
    stream = ShardDataset(str(shard_dir), num_frames=5, fps=8, size=64, shuffle_buffer=5, epochs=1, seed=1)
    items = list(stream)
    readable = [c for c in captions_of(folder) if c != "never written"]
    assert sorted(i["caption"] for i in items) == sorted(readable)
    shapes = sorted({tuple(i["video"].shape) for i in items})
    assert shapes == [(1, 64, 64, 3), (5, 64, 64, 3)] and all(i["video"].dtype == torch.uint8 for i in items)
    order_a = [i["path"] for i in items]
    order_b = [i["path"] for i in ShardDataset(str(shard_dir), num_frames=5, fps=8, size=64, shuffle_buffer=5,
                                               epochs=1, seed=2)]
    assert sorted(order_a) == sorted(order_b) and order_a != order_b  # shuffled by seed


def test_processes_and_workers_split_without_duplicates(shard_dir, monkeypatch):
    seen = []
    for rank in range(2):
        monkeypatch.setattr(shards_module, "_rank_world", lambda r=rank: (r, 2))
        stream = ShardDataset(str(shard_dir), num_frames=5, fps=8, size=64, shuffle_buffer=3, epochs=1, seed=4)
        loader = DataLoader(stream, batch_size=2, num_workers=2, collate_fn=collate_clips)
        paths = [p for batch in loader for group in batch for p in group["path"]]
        seen.append(paths)
    assert not set(seen[0]) & set(seen[1])
    everything = seen[0] + seen[1]
    assert len(everything) == len(set(everything)) == 13


def test_corrupt_samples_are_skipped_and_counted(shard_dir, tmp_path):
    import webdataset as wds

    bad = tmp_path / "bad.tar"
    with wds.TarWriter(str(bad)) as sink:
        sink.write({"__key__": "000000", "mp4": b"not a video at all", "txt": "a broken clip"})
        sink.write({"__key__": "000001", "txt": "no media"})
    stream = ShardDataset([str(shard_dir / "shard-000000.tar"), str(bad)], num_frames=5, fps=8, size=64,
                          shuffle_buffer=0, epochs=1)
    items = list(stream)
    assert len(items) == 4 and stream.skipped == 2


def test_round_trip_folder_shards_tokens_training(folder, tmp_path, caplog):
    runner = CliRunner()
    result = runner.invoke(data_main, ["shard", "--in", str(folder), "--out", str(tmp_path / "shards"),
                                       "--per-shard", "5"])
    assert result.exit_code == 0, result.output
    torch.manual_seed(0)
    tok_dir = tmp_path / "tok"
    CViViT(TokenizerConfig(**TOKENIZER)).save_pretrained(tok_dir)
    args = ["tokenize", "--tokenizer", str(tok_dir), "--in", str(tmp_path / "shards"), "--out",
            str(tmp_path / "tokens"), "--batch-size", "4", "--device", "cpu"]
    result = runner.invoke(data_main, args)
    assert result.exit_code == 0, result.output
    cache = TokenDataset(tmp_path / "tokens")
    assert len(cache) == 13 and sorted(cache.captions) == sorted(c for c in captions_of(folder) if c != "never written")
    # the ids are the tokenizer's: re-encode one clip of the stream and compare
    tokenizer = CViViT.from_pretrained(tok_dir)
    first = next(iter(ShardDataset(str(tmp_path / "shards" / "shard-000000.tar"), num_frames=5, fps=8, size=64,
                                   shuffle_buffer=0, epochs=1)))
    from phenaki.video import frames_to_pixels

    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = tokenizer.encode(frames_to_pixels(first["video"][None]))[0]
    assert torch.equal(cache[0]["ids"], expected) and cache[0]["caption"] == first["caption"]

    # resumable: after a crash that lost one chunk and the manifest, only that shard is redone
    (tmp_path / "tokens" / MANIFEST).unlink()
    (tmp_path / "tokens" / "chunk-00001.safetensors").unlink()
    kept = (tmp_path / "tokens" / "chunk-00000.safetensors").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        result = runner.invoke(data_main, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tokens" / "chunk-00000.safetensors").stat().st_mtime_ns == kept
    assert (tmp_path / "tokens" / "chunk-00001.safetensors").is_file()
    assert len(TokenDataset(tmp_path / "tokens")) == 13

    # the MaskGIT trainer reads the pre-tokenised shards directly (no video decoding)
    config = from_dict(Config, {
        "tokenizer": TOKENIZER,
        "transformer": {"dim": 32, "depth": 1, "heads": 2, "dim_head": 16, "max_token_frames": 3},
        "text": {"kind": "scratch", "dim": 16, "depth": 1, "heads": 2, "ff_dim": 32, "max_length": 12},
        "data": {"kind": "shards", "path": str(tmp_path / "does-not-exist"), "num_frames": 5},
        "train_maskgit": {"output_dir": str(tmp_path / "run"), "steps": 2, "batch_size": 4, "warmup_steps": 1,
                          "save_every": 0, "preview_every": 0, "log_every": 1,
                          "tokens_cache": str(tmp_path / "tokens")},
        "sampling": {"first_frames": 5, "scene_frames": 2, "context_frames": 3, "steps": 2},
    })
    final = train_maskgit(config, tok_dir, progress=False)
    assert (final / "pipeline.json").is_file()
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]


def test_tokenizer_trainer_streams_shards(shard_dir, tmp_path):
    from phenaki.training.tokenizer_trainer import train_tokenizer

    config = from_dict(Config, {
        "tokenizer": TOKENIZER,
        "data": {"kind": "shards", "path": str(shard_dir), "num_frames": 5, "shuffle_buffer": 4},
        "train_tokenizer": {"output_dir": str(tmp_path / "tok"), "steps": 3, "batch_size": 2, "warmup_steps": 1,
                            "save_every": 0, "preview_every": 0, "log_every": 1},
    })
    assert isinstance(build_dataset(config.data), ShardDataset)
    final = train_tokenizer(config, progress=False)
    assert (final / "model.safetensors").is_file()

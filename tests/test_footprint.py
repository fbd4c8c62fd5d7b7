"""--dry-run estimates: counts from the meta device match the real models; nothing is allocated."""

import subprocess
import sys
from pathlib import Path

from phenaki.config import load_config
from phenaki.models.cvivit import CViViT
from phenaki.models.maskgit import MaskGit
from phenaki.training.footprint import GIB, footprint

ROOT = Path(__file__).resolve().parents[1]


def test_counts_match_the_real_models():
    config = load_config(ROOT / "configs" / "shapes_demo.yaml")
    tok = footprint(config, "tokenizer")
    assert tok.params == sum(p.numel() for p in CViViT(config.tokenizer).parameters())
    assert tok.tokens_per_sample == 6 * 8 * 8
    gen = footprint(config, "maskgit", world_size=4)
    maskgit = sum(p.numel() for p in MaskGit(config.transformer).parameters())
    assert maskgit < gen.params < maskgit + 2_000_000  # + the scratch text encoder
    assert gen.per_device("fsdp") < gen.per_device("ddp")
    from phenaki.models.matcher import TextVideoMatcher

    matcher = footprint(config, "matcher")
    assert matcher.params == sum(p.numel() for p in TextVideoMatcher(config.matcher).parameters())
    assert matcher.tokens_per_sample == config.data.num_frames and matcher.activation_bytes > 0


def test_paper_scale_is_estimated_without_allocating():
    config = load_config(ROOT / "configs" / "phenaki_paper.yaml")
    report = footprint(config, "maskgit", world_size=64)
    assert 1.5e9 < report.params < 1.8e9  # 24 x 2048 blocks with cross-attention
    assert report.frozen_params > 4e9  # T5-XXL encoder, from its known architecture
    assert report.per_device("fsdp") < report.per_device("ddp")
    assert report.state_bytes / GIB > 25


def test_dry_run_prints_and_trains_nothing(tmp_path):
    out = subprocess.run(
        [sys.executable, "train/train_maskgit.py", "--config", "configs/phenaki_paper.yaml", "--dry-run",
         "--world-size", "64", "--output-dir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "trainable parameters" in out.stdout and "FSDP full shard over 64" in out.stdout
    assert not (tmp_path / "run").exists()

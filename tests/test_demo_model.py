"""The shipped demo model, used exactly as the README's quick start does."""

import json
from pathlib import Path

from click.testing import CliRunner

from phenaki.checkpoint import demo_checkpoint
from phenaki.cli import sample_main
from phenaki.pipeline import Phenaki
from phenaki.video import read_video

ROOT = Path(__file__).resolve().parents[1]


def test_demo_model_is_shipped_small_and_documented():
    root = demo_checkpoint()
    assert root == ROOT / "phenaki" / "pretrained" / "phenaki-shapes"
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert size <= 40 * 10**6
    card = (root / "README.md").read_text()
    assert "train/train_maskgit.py --config configs/shapes_demo.yaml" in card


def test_quick_start_story_runs_offline(tmp_path, one_thread):
    out = tmp_path / "story.mp4"
    result = CliRunner().invoke(sample_main, ["--prompts", str(ROOT / "assets" / "story.txt"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    frames, fps = read_video(out)
    assert frames.shape == (11 + 6 + 6, 64, 64, 3) and fps == 8.0
    sidecar = json.loads((tmp_path / "story.json").read_text())
    prompts = [line for line in (ROOT / "assets" / "story.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert [(s["prompt"], s["start"], s["end"]) for s in sidecar["scenes"]] == [
        (prompts[0], 0, 11), (prompts[1], 11, 17), (prompts[2], 17, 23)]
    assert sidecar["metadata"]["checkpoint"] == str(demo_checkpoint())
    # the shipped matcher joined the choice among candidates (a model without one records 0)
    assert sidecar["metadata"]["settings"]["match_weight"] > 0
    # the same call from Python, same seed: the same frames
    video = Phenaki.from_pretrained().generate(prompts, seed=0, progress=False)
    assert (video.frames.float() - frames.float()).abs().mean() < 2.0  # only the MP4 codec between them

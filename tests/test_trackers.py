"""Training runs report to experiment trackers through accelerate: TensorBoard, read back from its files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from phenaki.config import ConfigError, TrainConfig

REPO = Path(__file__).resolve().parents[1]


def test_log_with_names_known_trackers():
    assert TrainConfig(log_with="tensorboard, mlflow").log_with == ["tensorboard", "mlflow"]
    assert TrainConfig(log_with=["all"]).log_with == ["tensorboard", "wandb", "mlflow"]
    with pytest.raises(ConfigError, match="unknown tracker.*comet"):
        TrainConfig(log_with=["comet"])


def test_tensorboard_gets_the_metrics_and_the_previews(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    config = {
        "tokenizer": {"dim": 32, "spatial_depth": 1, "temporal_depth": 1, "heads": 2, "dim_head": 16,
                      "quantizer": "fsq", "fsq_levels": [5, 5, 5], "num_frames": 5},
        "data": {"kind": "shapes", "num_frames": 5, "num_samples": 24, "context_frames": 3},
        "train_tokenizer": {"output_dir": str(out), "steps": 4, "batch_size": 2, "warmup_steps": 1, "save_every": 0,
                            "preview_every": 2, "log_every": 1, "mixed_precision": "no"},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, str(REPO / "train" / "train_tokenizer.py"), "--config",
                          str(tmp_path / "config.yaml"), "--log-with", "tensorboard", "--no-progress"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    events = sorted(out.rglob("events.out.tfevents.*"))
    assert events, sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    scalars, images = {}, []
    for event_file in events:
        acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
        images += [e.step for tag in acc.Tags()["images"] for e in acc.Images(tag)]
    assert [step for step, _ in scalars["loss"]] == [1, 2, 3, 4]
    assert {"psnr", "lr"} <= set(scalars)
    assert images == [2, 4]  # a preview frame at every preview step
    # the same numbers as the run's own metrics.jsonl
    first = yaml.safe_load((out / "metrics.jsonl").read_text().splitlines()[0])
    assert scalars["loss"][0][1] == pytest.approx(first["loss"], rel=1e-5)

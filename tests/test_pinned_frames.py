"""The demo model draws the same frames from the same seed as when these hashes were recorded.

The hashes pin the whole generation path (text encoding, the MaskGIT decode loop, the search
among candidates with polish, relevance floor and matcher, the story loop, decoding), so any
refactor that changes a single pixel fails here. They run in a fresh process in float32 with
MKL, oneDNN and ATen held to AVX2 kernels (MKL's conditional numerical reproducibility), which
every x86-64 CPU this project runs on has, so the bits do not depend on the CPU's newer units;
the attention kernel is the built-in one (`PHENAKI_KERNELS=default`), not the one measured fastest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PINNED = json.loads((HERE / "data" / "pinned_frames.json").read_text())
REPRODUCIBLE = {"MKL_CBWR": "AVX2,STRICT", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                "PHENAKI_KERNELS": "default"}


def drawn(which: str) -> dict[str, object]:
    env = {**os.environ, **REPRODUCIBLE}
    run = subprocess.run([sys.executable, str(HERE / "pinned_frames.py"), which], env=env, cwd=HERE.parent,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_demo_story_and_evaluation_stories_keep_their_frames():
    got = drawn("default")
    assert got["demo_story_12_steps"] == PINNED["demo_story_12_steps"]
    changed = [i for i, (a, b) in enumerate(zip(got["evaluation_stories"], PINNED["evaluation_stories"])) if a != b]
    assert not changed, f"evaluation stories {changed} drew other frames"


@pytest.mark.slow
def test_demo_story_with_the_shipped_settings_keeps_its_frames():
    assert drawn("shipped")["demo_story_shipped"] == PINNED["demo_story_shipped"]

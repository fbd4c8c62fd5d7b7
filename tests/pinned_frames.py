"""Hash the frames the demo model draws for fixed stories and seeds (run by test_pinned_frames.py).

Run in a fresh process whose CPU kernels are pinned to one instruction set (see the test), so
the same code gives the same bits on every x86-64 CPU with AVX2. Prints one JSON object.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys

import torch

from phenaki import Phenaki
from phenaki.data.shapes import sample_story

# per-scene settings written into some story lines, so the bracket path is pinned too
BRACKETS = {3: " [steps=4 guidance=2]", 6: " [temperature=0.6]"}


def frames_hash(video) -> str:
    return hashlib.sha256(video.frames.contiguous().numpy().tobytes()).hexdigest()


def main(which: str) -> dict[str, object]:
    torch.set_num_threads(2)
    pipe = Phenaki.from_pretrained(dtype="float32")
    story = ["a red ball moves right", "the blue ball rises", "the green ball moves left"]
    result: dict[str, object] = {}
    if which in ("demo", "default", "all"):
        # the shipped search (4 candidates, polish twice, matcher) at 12 steps a window
        result["demo_story_12_steps"] = frames_hash(pipe.generate(story, seed=0, steps=12))
    if which in ("stories", "default", "all"):
        rng = random.Random(0)
        hashes = []
        for i in range(10):
            prompts = sample_story(rng, 2)
            prompts[1] += BRACKETS.get(i, "")
            video = pipe.generate(prompts, seed=i, steps=6, candidates=2, relevance_floor=0.5,
                                  temporal_bias=[0.0, 2.0][i % 2])
            hashes.append(frames_hash(video))
        result["evaluation_stories"] = hashes
    if which in ("shipped", "all"):
        result["demo_story_shipped"] = frames_hash(pipe.generate(story, seed=0))
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else "default")))

"""Paired comparison of two Shapes evaluations (`phenaki-eval compare`)."""

import json
import random

import pytest
import torch
from click.testing import CliRunner

from phenaki.cli import eval_main
from phenaki.data.shapes import render_story
from phenaki.evaluation.comparison import (
    ComparisonError,
    compare_results,
    format_comparison,
    paired_difference,
)
from phenaki.evaluation.judge import bootstrap_interval, evaluate_shapes
from phenaki.video import Video


class SpoilingPipe:
    """Ground-truth renders, except that stories whose seed is in `spoil` come out as noise."""

    def __init__(self, spoil=()):
        self.spoil = set(spoil)

    def generate(self, prompts, *, seed=0, progress=False, **kwargs):
        video = render_story(prompts, seed=seed)
        frames = video.frames
        if seed in self.spoil:
            g = torch.Generator().manual_seed(seed)
            frames = torch.randint(0, 256, frames.shape, dtype=torch.uint8, generator=g)
        return Video(frames, 8.0, video.scenes, {})


def test_paired_interval_sees_a_gain_that_single_run_intervals_cannot():
    """Stories differ a lot in difficulty; B fixes one scene in a quarter of them. Each run's
    own interval swallows the gain, the paired one does not."""
    rng = random.Random(0)
    a, b = [], []
    for _ in range(200):
        right = rng.choice([0, 0, 1, 2, 3, 3])  # hard and easy stories
        story = [i < right for i in range(3)]
        a.append(story)
        better = list(story)
        if right < 3 and rng.random() < 0.25:
            better[right] = True
        b.append(better)
    diff, lo, hi = paired_difference(a, b)
    assert diff == pytest.approx((sum(map(sum, b)) - sum(map(sum, a))) / 600)
    assert 0 < lo < diff < hi
    a_lo, a_hi = bootstrap_interval(a)
    b_lo, b_hi = bootstrap_interval(b)
    assert b_lo < a_hi  # the single-run intervals overlap
    assert paired_difference(a, b) == (diff, lo, hi)  # seeded
    back = paired_difference(b, a)
    assert back[0] == pytest.approx(-diff) and back[2] < 0


def test_identical_runs_differ_by_exactly_nothing_and_none_scenes_do_not_count():
    stories = [[None, True, False], [None, False, False], [None, True, True]]
    assert paired_difference(stories, stories) == (0.0, 0.0, 0.0)
    other = [[None, True, True], [None, False, False], [None, True, True]]
    diff, lo, hi = paired_difference(stories, other)
    assert diff == pytest.approx(1 / 6)  # 6 scenes count, not 9
    assert paired_difference([[None]], [[None]]) is None
    with pytest.raises(ValueError, match="paired stories"):
        paired_difference(stories, stories[:2])
    with pytest.raises(ValueError, match="story 1"):
        paired_difference(stories, [stories[0], [True], stories[2]])


@pytest.fixture(scope="module")
def two_runs():
    """A spoils four of eight stories, B none: same prompts and seeds."""
    a = evaluate_shapes(SpoilingPipe(spoil={5, 7, 9, 11}), 8, seed=5)
    b = evaluate_shapes(SpoilingPipe(), 8, seed=5)
    return a, b


def test_compare_counts_scenes_gained_and_lost(two_runs):
    a, b = two_runs
    result = compare_results(a, b, rounds=500)
    correct = result["groups"]["all"]["criteria"]["correct"]
    assert correct["a"] == pytest.approx(a["summary"]["all"]["correct"])
    assert correct["b"] == 1.0
    assert correct["gained"] == 12 and correct["lost"] == 0  # four spoiled stories of 3 scenes
    assert correct["difference"] == pytest.approx(12 / 24) and correct["ci95"][0] > 0
    continuity = result["groups"]["all"]["criteria"]["continuity"]
    assert continuity["scenes"] == 16  # the first scene of each story has no continuity verdict
    assert result["groups"]["heldout"]["stories"] == 0 and result["groups"]["heldout"]["criteria"]["correct"] is None
    swapped = compare_results(b, a, rounds=500)["groups"]["all"]["criteria"]["correct"]
    assert swapped["lost"] == 12 and swapped["gained"] == 0 and swapped["ci95"][1] < 0
    table = format_comparison(result)
    assert "+50.0 *" in table and "gained" in table
    json.dumps(result)


def test_compare_refuses_different_stories(two_runs):
    a, _ = two_runs
    other = evaluate_shapes(SpoilingPipe(), 8, seed=6)
    with pytest.raises(ComparisonError, match="story 0 differs"):
        compare_results(a, other)
    with pytest.raises(ComparisonError, match="8 stories and B 3"):
        compare_results(a, evaluate_shapes(SpoilingPipe(), 3, seed=5))
    with pytest.raises(ComparisonError, match="stories_detail"):
        compare_results(a, {"summary": {}})


def test_cli_compares_two_result_files(two_runs, tmp_path):
    a, b = two_runs
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = tmp_path / "cmp.json"
    result = CliRunner().invoke(eval_main, ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                            "--rounds", "300", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "all: 8 stories" in result.output and "correct" in result.output and "+50.0 *" in result.output
    assert "heldout:" not in result.output  # no held-out stories in these runs
    saved = json.loads(out.read_text())
    assert saved["groups"]["all"]["criteria"]["correct"]["gained"] == 12
    assert saved["a"]["file"].endswith("a.json")


def test_cli_bad_inputs_are_clear_errors(two_runs, tmp_path):
    a, _ = two_runs
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "short.json").write_text(json.dumps(evaluate_shapes(SpoilingPipe(), 2, seed=5)))
    (tmp_path / "broken.json").write_text("{not json")
    runner = CliRunner()
    result = runner.invoke(eval_main, ["compare", str(tmp_path / "a.json"), str(tmp_path / "short.json")])
    assert result.exit_code != 0 and "same --stories" in result.output
    result = runner.invoke(eval_main, ["compare", str(tmp_path / "a.json"), str(tmp_path / "broken.json")])
    assert result.exit_code != 0 and "is not JSON" in result.output
    result = runner.invoke(eval_main, ["compare", str(tmp_path / "a.json"), str(tmp_path / "missing.json")])
    assert result.exit_code != 0 and "does not exist" in result.output
    assert not (tmp_path / "cmp.json").exists()

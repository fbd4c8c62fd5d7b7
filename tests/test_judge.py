"""The pixel judge of Shapes videos: exact on ground truth, strict on wrong videos, robust to mild noise."""

import itertools
import json
import random

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from phenaki.cli import eval_main
from phenaki.config import load_config
from phenaki.data.shapes import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    HoldOut,
    holdout_from_config,
    parse_prompt,
    render_story,
    sample_story,
)
from phenaki.evaluation.judge import (
    CRITERIA,
    bootstrap_interval,
    colour_distances,
    evaluate_shapes,
    format_shapes_table,
    judge_scene,
    judge_story,
    measure_frames,
    summarise,
)
from phenaki.video import Video

SCENE_CRITERIA = ("present", "colour", "shape", "direction", "smooth", "correct")
COMBOS = list(itertools.product(COLOURS, SHAPES, DIRECTIONS))


def degrade(frames: torch.Tensor, seed: int = 0, std: float = 6.0) -> torch.Tensor:
    """A 1-px blur (3 x 3 binomial kernel) plus gaussian noise of `std` levels."""
    g = torch.Generator().manual_seed(seed)
    t, h, w, _ = frames.shape
    x = frames.permute(0, 3, 1, 2).reshape(-1, 1, h, w).float()
    k = torch.tensor([1.0, 2.0, 1.0])
    kernel = (k[:, None] * k[None, :] / 16).view(1, 1, 3, 3)
    x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel)
    x = x + torch.randn(x.shape, generator=g) * std
    return x.round().clamp(0, 255).to(torch.uint8).view(t, 3, h, w).permute(0, 2, 3, 1).contiguous()


def assert_all_true(verdicts, continuity=True):
    for v in verdicts:
        for name in SCENE_CRITERIA:
            assert getattr(v, name) is True, (name, v.prompt, v.reasons)
        if continuity and v.continuity is not None:
            assert v.continuity is True, (v.prompt, v.reasons)


def random_stories(count, seed, num_scenes=3):
    rng = random.Random(seed)
    return [(sample_story(rng, num_scenes), seed * 1000 + i) for i in range(count)]


# --------------------------------------------------------------------------- ground truth


def test_every_colour_shape_direction_is_judged_correct():
    verdicts = []
    for i, (colour, shape, direction) in enumerate(COMBOS):
        prompt = f"a {colour} {shape} moves {direction}"
        verdicts.append(judge_scene(render_story(prompt, seed=i).frames, prompt))
    assert_all_true(verdicts)
    assert all(v.continuity is None for v in verdicts)
    assert {v.measured_shape for v in verdicts} == set(SHAPES)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_size_is_judged_correct(shape):
    for size in range(12, 17):
        prompt = f"the white {shape} sinks."
        video = render_story(prompt, size=size, start=(20, 10))
        assert_all_true([judge_scene(video.frames, prompt)])


def test_stories_with_colour_and_direction_changes_and_walls():
    verdicts = []
    for prompts, seed in random_stories(40, seed=1):
        video = render_story(prompts, seed=seed)
        story = judge_story(video.frames, video.scenes)
        assert story[0].continuity is None and all(v.continuity is not None for v in story[1:])
        verdicts += story
    assert_all_true(verdicts)
    assert sum(v.at_wall for v in verdicts) >= 10  # the seeds do hit walls


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_object_pressed_against_the_prompted_wall_counts_as_moving(direction):
    size = 14
    far = 64 - size
    start = {"left": (0, 20), "right": (far, 20), "up": (20, 0), "down": (20, far)}[direction]
    prompts = [f"a red circle moves {direction}", f"a blue circle moves {direction}"]
    video = render_story(prompts, size=size, start=start)
    assert torch.equal(video.frames[0].bool(), video.frames[-1].bool())  # it never moves
    verdicts = judge_story(video.frames, video.scenes)
    assert_all_true(verdicts)
    assert all(v.at_wall and v.displacement == (0.0, 0.0) for v in verdicts)


def test_object_that_reaches_the_wall_mid_scene():
    video = render_story("a green square moves left", size=12, start=(6, 30))  # 3 steps, then clamped
    assert_all_true([judge_scene(video.frames, "a green square moves left")])


# --------------------------------------------------------------------------- no object


def test_noise_and_blank_videos_are_never_correct():
    g = torch.Generator().manual_seed(0)
    for i, (colour, shape, direction) in enumerate(COMBOS[::5]):
        prompt = f"a {colour} {shape} moves {direction}"
        noise = torch.randint(0, 256, (11, 64, 64, 3), dtype=torch.uint8, generator=g)
        blank = torch.zeros(11, 64, 64, 3, dtype=torch.uint8)
        for frames in (noise, blank):
            v = judge_scene(frames, prompt, prev_frames=frames[:4])
            assert not v.correct and not v.present and v.continuity is False, v
        assert judge_scene(blank, prompt).found_frames == 0


def test_specks_are_ignored_but_a_second_object_is_not():
    prompt = "a red ball moves right"
    frames = render_story(prompt, size=14, start=(4, 4)).frames.clone()
    specks = frames.clone()
    specks[:, 60:62, 60:62] = 200  # 4-px speck in every frame
    specks[:, 50, 5] = 255
    assert_all_true([judge_scene(specks, prompt)])
    second = frames.clone()
    second[:, 40:52, 40:52] = torch.tensor(COLOURS["red"], dtype=torch.uint8)
    v = judge_scene(second, prompt)
    assert not v.present and not v.correct


def test_object_missing_in_one_frame_of_eleven_is_still_present_but_not_in_two():
    prompt = "the cyan box goes up"
    frames = render_story(prompt, size=13, start=(25, 40)).frames.clone()
    frames[5] = 0
    assert judge_scene(frames, prompt).present
    frames[8] = 0
    v = judge_scene(frames, prompt)
    assert not v.present and not v.correct
    assert not judge_scene(frames[:6], prompt).present  # a 6-frame scene allows no miss


# --------------------------------------------------------------------------- wrong attributes


RED_RIGHT = render_story("a red ball moves right", size=14, start=(10, 20)).frames


def test_wrong_colour():
    v = judge_scene(RED_RIGHT, "a blue ball moves right")
    assert not v.colour and not v.correct and v.nearest_colour == "red"
    assert v.present and v.shape and v.direction and v.smooth
    for colour in COLOURS:
        if colour != "red":
            assert not judge_scene(RED_RIGHT, f"a {colour} ball moves right").colour


def test_wrong_shape():
    v = judge_scene(RED_RIGHT, "a red square moves right")
    assert not v.shape and not v.correct and v.measured_shape == "circle"
    assert not judge_scene(RED_RIGHT, "a red triangle moves right").shape
    square = render_story("a red square moves right", size=14, start=(10, 20)).frames
    triangle = render_story("a red triangle moves right", size=14, start=(10, 20)).frames
    assert not judge_scene(square, "a red ball moves right").shape
    assert not judge_scene(triangle, "a red box moves right").shape
    upside_down = triangle.flip(1)  # widens upward: no domain shape
    assert not judge_scene(upside_down, "a red triangle moves right").shape


def test_wrong_direction():
    for direction in ("left", "up", "down"):
        v = judge_scene(RED_RIGHT, f"a red ball moves {direction}")
        assert not v.direction and not v.correct, direction
    assert v.present and v.colour and v.shape and v.smooth


def test_static_object_away_from_the_wall_is_wrong():
    still = RED_RIGHT[:1].repeat(11, 1, 1, 1)
    for direction in DIRECTIONS:
        v = judge_scene(still, f"a red ball moves {direction}")
        assert not v.direction and not v.at_wall and v.smooth, direction


def test_moving_along_the_wall_is_not_being_held_by_it():
    video = render_story("a red ball moves down", size=14, start=(50, 10))  # at the right wall, moving down
    assert not judge_scene(video.frames, "a red ball moves right").direction


def test_teleport_is_not_smooth():
    frames = RED_RIGHT.clone()
    frames[6:] = frames[6:].roll(20, dims=1)  # jumps 20 px down mid-scene
    v = judge_scene(frames, "a red ball moves right")
    assert not v.smooth and not v.correct and v.max_step > 15


def test_size_and_colour_flicker_are_not_smooth():
    big = render_story("a red ball moves right", size=16, start=(10, 20)).frames
    small = render_story("a red ball moves right", size=12, start=(12, 22)).frames
    sizes = big.clone()
    sizes[1::2] = small[1::2]
    colours = RED_RIGHT.clone()
    magenta = torch.tensor(COLOURS["magenta"], dtype=torch.uint8)
    colours[4][colours[4].max(dim=-1).values > 0] = magenta
    for frames in (sizes, colours):
        v = judge_scene(frames, "a red ball moves right")
        assert not v.smooth and not v.correct, v.reasons


def test_cut_far_from_the_previous_scene_breaks_continuity():
    first = render_story("a red ball moves right", size=14, start=(5, 5)).frames
    second = render_story("a blue ball moves down", size=14, start=(40, 30), first_frames=6).frames
    v = judge_scene(second, "a blue ball moves down", prev_frames=first)
    assert v.continuity is False and v.continuity_gap > 20
    assert v.correct  # continuity is reported apart from `correct`
    story = render_story(["a red ball moves right", "a blue ball moves down"], size=14, start=(5, 5))
    good = judge_scene(story.frames[11:], "a blue ball moves down", prev_frames=story.frames[:11])
    assert good.continuity is True and good.continuity_gap <= 2.0
    other_shape = render_story("a blue box moves down", size=14, start=(25, 7), first_frames=6).frames
    assert judge_scene(other_shape, "a blue box moves down", prev_frames=first).continuity is False


# --------------------------------------------------------------------------- robustness


def test_mild_noise_and_blur_keep_every_render_correct():
    verdicts = []
    for i, (colour, shape, direction) in enumerate(COMBOS):
        prompt = f"a {colour} {shape} moves {direction}"
        verdicts.append(judge_scene(degrade(render_story(prompt, seed=i).frames, seed=i), prompt))
    for prompts, seed in random_stories(15, seed=2):
        video = render_story(prompts, seed=seed)
        verdicts += judge_story(degrade(video.frames, seed=seed), video.scenes)
    assert_all_true(verdicts)


def test_dimmed_colours_are_still_named_right():
    for colour in COLOURS:
        rgb = torch.tensor(COLOURS[colour], dtype=torch.float32) * 0.8
        distances = colour_distances(rgb)
        assert int(distances.argmin()) == list(COLOURS).index(colour)


def test_measure_frames_accepts_numpy_and_reports_geometry():
    frames = render_story("a yellow square moves left", size=12, start=(30, 20)).frames
    objects = measure_frames(frames.numpy())
    assert objects[0].area == 144 and (objects[0].x0, objects[0].y0) == (30, 20)
    assert objects[0].cx == pytest.approx(36.0) and objects[1].cx == pytest.approx(34.0)
    with pytest.raises(ValueError):
        measure_frames(frames[..., :2])


# --------------------------------------------------------------------------- aggregates


def test_summarise_rates_overall_and_per_group():
    prompt = "a red ball moves right"
    good = judge_scene(RED_RIGHT, prompt, prev_frames=RED_RIGHT[-1:])  # continuity False (20 px)
    bad = judge_scene(RED_RIGHT, "a blue ball moves right")
    first = judge_scene(RED_RIGHT, prompt)
    summary = summarise([good, bad, first], {"a": [0, 1], "b": [2], "empty": []})
    assert summary["all"]["scenes"] == 3 and summary["all"]["correct"] == pytest.approx(2 / 3)
    assert summary["all"]["colour"] == pytest.approx(2 / 3) and summary["all"]["present"] == 1.0
    assert summary["all"]["continuity"] == 0.0 and summary["all"]["continuity_scenes"] == 1
    assert summary["a"]["correct"] == 0.5 and summary["b"]["correct"] == 1.0
    assert summary["b"]["continuity"] is None
    assert summary["empty"]["scenes"] == 0 and all(summary["empty"][c] is None for c in CRITERIA)
    with pytest.raises(IndexError):
        summarise([good], {"a": [3]})
    with pytest.raises(ValueError):
        summarise([good], {"all": [0]})
    json.dumps(good.to_dict())


class FakePipe:
    """Stands in for Phenaki: returns the ground-truth render (or noise) of a story."""

    def __init__(self, noise: bool = False):
        self.noise = noise
        self.calls = []

    def generate(self, prompts, *, seed=0, progress=True, **kwargs):
        self.calls.append((list(prompts), seed, progress, kwargs))
        video = render_story(prompts, seed=seed)
        frames = video.frames
        if self.noise:
            g = torch.Generator().manual_seed(seed)
            frames = torch.randint(0, 256, frames.shape, dtype=torch.uint8, generator=g)
        return Video(frames, 8.0, video.scenes, {})


@pytest.fixture(scope="module")
def demo_holdout():
    return holdout_from_config(load_config("configs/shapes_demo.yaml").data)


def test_evaluate_shapes_scores_ground_truth_perfectly(demo_holdout):
    pipe = FakePipe()
    result = evaluate_shapes(pipe, 8, seed=3, holdout=demo_holdout, heldout_fraction=0.5,
                             generate_kwargs={"steps": 4, "guidance": None})
    summary = result["summary"]
    assert summary["all"]["stories"] == 8 and summary["all"]["scenes"] == 24
    assert summary["heldout"]["stories"] == 4 and summary["seen"]["stories"] == 4
    for group in ("all", "seen", "heldout"):
        assert all(summary[group][c] == 1.0 for c in CRITERIA), (group, summary[group])
        assert summary[group]["story_correct"] == 1.0
    assert [seed for _, seed, _, _ in pipe.calls] == list(range(3, 11))
    assert all(progress is False and kwargs == {"steps": 4} for _, _, progress, kwargs in pipe.calls)
    for story in result["stories_detail"]:
        held = [demo_holdout.covers(p) for p in story["prompts"]]
        assert all(held) if story["split"] == "heldout" else not any(held)
        parsed = [parse_prompt(p) for p in story["prompts"]]
        assert all((a.colour, a.direction) != (b.colour, b.direction) for a, b in zip(parsed, parsed[1:]))
    again = evaluate_shapes(FakePipe(), 8, seed=3, holdout=demo_holdout, generate_kwargs={"steps": 4})
    assert again == result  # deterministic given the seed
    json.dumps(result)
    table = format_shapes_table(result)
    assert "held-out" in table and "story correct" in table and "100.0%" in table
    assert summary["all"]["correct_ci95"] == [1.0, 1.0]  # every resample is all correct
    assert "correct, 95% CI" in table and "100-100%" in table


def test_bootstrap_interval_resamples_whole_stories():
    """The interval holds the observed rate, narrows with more stories, and treats a story's
    scenes as one unit (all-or-nothing stories spread wider than independent scenes)."""
    import random

    rng = random.Random(1)
    scenes = [[rng.random() < 0.6 for _ in range(3)] for _ in range(100)]
    observed = sum(map(sum, scenes)) / 300
    lo, hi = bootstrap_interval(scenes)
    assert lo < observed < hi and 0.05 < hi - lo < 0.2
    lo4, hi4 = bootstrap_interval(scenes * 4)
    assert hi4 - lo4 < (hi - lo) * 0.7  # four times the stories: about half the width
    assert bootstrap_interval(scenes) == (lo, hi)  # seeded
    whole = [[ok] * 3 for ok in (rng.random() < 0.6 for _ in range(100))]  # stories all right or all wrong
    loose = [[rng.random() < 0.6] for _ in range(300)]  # 300 independent one-scene stories
    wl, wh = bootstrap_interval(whole)
    ll, lh = bootstrap_interval(loose)
    assert wh - wl > 1.3 * (lh - ll)
    assert bootstrap_interval([]) is None


def test_evaluate_shapes_scores_noise_at_zero():
    ticks = []
    result = evaluate_shapes(FakePipe(noise=True), 3, seed=0, progress=ticks.append)
    assert ticks == [1, 1, 1]
    summary = result["summary"]
    assert summary["all"]["correct"] == 0.0 and summary["all"]["story_correct"] == 0.0
    assert summary["heldout"]["stories"] == 0 and summary["heldout"]["correct"] is None  # no hold-out given
    assert "-" in format_shapes_table(result)


# --------------------------------------------------------------------------- CLI


def test_cli_missing_checkpoint_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(eval_main, ["shapes", "--checkpoint", str(tmp_path / "nope"), "--stories", "2"])
    assert result.exit_code != 0
    assert "model folder not found" in result.output


def test_cli_runs_the_evaluation_and_writes_json(tmp_path, monkeypatch):
    from phenaki.pipeline import Phenaki

    seen = {}

    def fake_from_pretrained(path, device="auto", dtype="auto"):
        seen["args"] = (str(path), device)
        seen["pipe"] = FakePipe()
        return seen["pipe"]

    monkeypatch.setattr(Phenaki, "from_pretrained", staticmethod(fake_from_pretrained))
    (tmp_path / "ckpt").mkdir()
    out = tmp_path / "shapes.json"
    args = ["shapes", "--checkpoint", str(tmp_path / "ckpt"), "--stories", "4", "--seed", "7",
            "--config", "configs/shapes_demo.yaml", "--heldout-fraction", "0.25", "--json", str(out),
            "--device", "cpu", "--steps", "3", "--temperature", "0.25", "--temporal-bias", "1.5",
            "--candidates", "2", "--polish", "0.05", "--polish-passes", "2", "--relevance-floor", "0.5"]
    result = CliRunner().invoke(eval_main, args)
    assert result.exit_code == 0, result.output
    assert seen["args"] == (str(tmp_path / "ckpt"), "cpu")
    assert "story correct" in result.output
    data = json.loads(out.read_text())
    assert data["summary"]["heldout"]["stories"] == 1 and data["summary"]["all"]["correct"] == 1.0
    asked = {"steps": 3, "temperature": 0.25, "temporal_bias": 1.5, "candidates": 2, "polish": 0.05,
             "polish_passes": 2, "relevance_floor": 0.5}
    assert data["generate"] == asked and data["seed"] == 7
    assert all(kwargs == asked for _, _, _, kwargs in seen["pipe"].calls)


def test_holdout_split_helper_is_exact():
    holdout = HoldOut(phrasings=["disc"])
    result = evaluate_shapes(FakePipe(), 5, seed=1, num_scenes=1, holdout=holdout, heldout_fraction=0.4)
    splits = [s["split"] for s in result["stories_detail"]]
    assert splits.count("heldout") == 2 and result["heldout_stories"] == 2
    assert all("disc" in s["prompts"][0] for s in result["stories_detail"] if s["split"] == "heldout")


def test_cli_with_a_real_tiny_pipeline(tmp_path):
    """End to end through Phenaki.generate (untrained, so only the plumbing is checked)."""
    from phenaki.config import (
        SamplingSettings,
        TextConfig,
        TokenizerConfig,
        TransformerConfig,
    )
    from phenaki.data.shapes import all_phrasings
    from phenaki.models.cvivit import CViViT
    from phenaki.models.maskgit import MaskGit
    from phenaki.models.text import TextEncoder
    from phenaki.pipeline import Phenaki

    torch.manual_seed(0)
    tokenizer = CViViT(TokenizerConfig(dim=32, spatial_depth=1, temporal_depth=1, heads=2, dim_head=16,
                                       quantizer="fsq", fsq_levels=[5, 5, 5]))
    vocabulary = [" ".join(["a", "the", *COLOURS, *all_phrasings()])]
    text = TextEncoder.scratch(vocabulary, TextConfig(kind="scratch", dim=16, depth=1, heads=2, ff_dim=32,
                                                      max_length=12))
    transformer = MaskGit(TransformerConfig(dim=32, depth=1, heads=2, dim_head=16, max_token_frames=6,
                                            codebook_size=125, token_grid=(8, 8), text_dim=16))
    Phenaki(tokenizer, transformer, text, SamplingSettings(steps=2), device="cpu",
            dtype="float32").save_pretrained(tmp_path / "model")
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(eval_main, ["shapes", "--checkpoint", str(tmp_path / "model"), "--stories", "2",
                                            "--config", "configs/shapes_demo.yaml", "--steps", "1",
                                            "--device", "cpu", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["summary"]["all"]["scenes"] == 6 and data["summary"]["heldout"]["stories"] == 1
    assert [len(s["scenes"]) for s in data["stories_detail"]] == [3, 3]

    # the same stories, judged on the tokenizer's reconstructions of their true renders
    ceiling_out = tmp_path / "ceiling.json"
    result = CliRunner().invoke(eval_main, ["shapes", "--checkpoint", str(tmp_path / "model"), "--stories", "2",
                                            "--config", "configs/shapes_demo.yaml", "--tokenizer-ceiling",
                                            "--device", "cpu", "--json", str(ceiling_out)])
    assert result.exit_code == 0, result.output
    ceiling = json.loads(ceiling_out.read_text())
    assert ceiling["tokenizer_ceiling"] is True and not data["tokenizer_ceiling"]
    assert [s["prompts"] for s in ceiling["stories_detail"]] == [s["prompts"] for s in data["stories_detail"]]


def test_tokenizer_ceiling_judges_reconstructions_of_the_true_render():
    from phenaki.config import TokenizerConfig
    from phenaki.data.shapes import render_story
    from phenaki.evaluation.ceiling import TokenizerCeiling
    from phenaki.models.cvivit import CViViT
    from phenaki.video import frames_to_pixels, pixels_to_frames

    torch.manual_seed(0)
    tokenizer = CViViT(TokenizerConfig(dim=32, spatial_depth=1, temporal_depth=1, heads=2, dim_head=16,
                                       quantizer="fsq", fsq_levels=[5, 5, 5]))
    prompts = ["a red ball moves right", "the blue ball rises"]
    story = TokenizerCeiling(tokenizer, context_frames=5).generate(prompts, seed=4)
    truth = render_story(tuple(prompts), seed=4)
    assert [(s.prompt, s.start, s.end) for s in story.scenes] == [(s.prompt, s.start, s.end) for s in truth.scenes]

    def round_trip(pixels):
        return tokenizer.decode(tokenizer.encode(pixels))

    # the pipeline's windows: scene 1 as one clip, then 5 drawn context frames + 6 true new ones
    truth_px = frames_to_pixels(truth.frames[None])
    first = round_trip(truth_px[:, :, :11])
    second = round_trip(torch.cat([first[:, :, -5:], truth_px[:, :, 11:]], dim=2))[:, :, -6:]
    expected = pixels_to_frames(torch.cat([first, second], dim=2))[0]
    assert story.frames.shape == (17, 64, 64, 3) and torch.equal(story.frames, expected)
    assert not torch.equal(story.frames, truth.frames)  # an untrained tokenizer really is in the way
    whole = pixels_to_frames(round_trip(truth_px))[0]
    assert not torch.equal(story.frames[11:], whole[11:])  # not one 17-frame clip

"""Tests for the Shapes story domain: the renderer must match the domain (docs/shapes.md) to the pixel."""

from __future__ import annotations

import itertools
import logging
import math
import pickle
import random

import pytest
import torch
from torch.utils.data import DataLoader

from phenaki.data import shapes
from phenaki.data.shapes import (
    COLOURS,
    DETERMINERS,
    DIRECTIONS,
    MOTION_PHRASES,
    SHAPE_WORDS,
    SHAPES,
    HoldOut,
    ParsedPrompt,
    PromptError,
    ShapesDataset,
    all_phrasings,
    make_prompt,
    parse_prompt,
    prompt_phrasings,
    render_story,
    sample_story,
)

STEP = {"left": (-2, 0), "right": (2, 0), "up": (0, -2), "down": (0, 2)}


def prompt(colour: str, shape: str, direction: str) -> str:
    """Canonical prompt for attributes."""
    return f"a {colour} {SHAPE_WORDS[shape][0]} {MOTION_PHRASES[direction][0]}"


def object_pixels(frame: torch.Tensor) -> torch.Tensor:
    """Boolean [64, 64] map of non-background pixels."""
    return frame.ne(0).any(dim=-1)


def bbox(frame: torch.Tensor) -> tuple[int, int, int, int]:
    """(x0, y0, width, height) of the non-black pixels of a frame."""
    ys, xs = object_pixels(frame).nonzero(as_tuple=True)
    assert ys.numel() > 0, "frame is empty"
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def frame_colours(frame: torch.Tensor) -> set[tuple[int, int, int]]:
    """Distinct RGB triples in a frame."""
    packed = frame.reshape(-1, 3).long() @ torch.tensor([1 << 16, 1 << 8, 1])
    return {(v >> 16, (v >> 8) & 255, v & 255) for v in packed.unique().tolist()}


# --------------------------------------------------------------------------- constants


def test_constants_match_spec():
    assert COLOURS == {
        "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 240),
        "yellow": (235, 215, 40), "magenta": (210, 50, 210), "cyan": (40, 200, 210),
        "white": (230, 230, 230),
    }
    assert shapes.CANVAS == 64 and shapes.SPEED == 2 and shapes.FPS == 8
    assert shapes.SIZE_RANGE == (12, 16)
    assert shapes.FIRST_FRAMES == 11 and shapes.SCENE_FRAMES == 6
    assert DETERMINERS == ("a", "the")
    assert len(all_phrasings()) == 7 + 20 and len(set(all_phrasings())) == 27


# --------------------------------------------------------------------------- parsing


def test_every_phrasing_parses_to_its_attributes():
    for colour, shape, direction in itertools.product(COLOURS, SHAPES, DIRECTIONS):
        for det, word, phrase, stop in itertools.product(
            DETERMINERS, SHAPE_WORDS[shape], MOTION_PHRASES[direction], ("", ".")
        ):
            text = f"{det} {colour} {word} {phrase}{stop}"
            assert parse_prompt(text) == ParsedPrompt(colour, shape, direction), text
            assert prompt_phrasings(text) == (word, phrase)


def test_parse_is_case_and_whitespace_tolerant():
    assert parse_prompt("  The   CYAN Block\tSinks. ") == ("cyan", "square", "down")
    assert parse_prompt("a Red ball moves  To the LEFT .") == ("red", "circle", "left")


@pytest.mark.parametrize(
    "text, bad, expected",
    [
        ("a purple ball rises", "purple", "colour"),
        ("a red hexagon rises", "hexagon", "shape"),
        ("a red ball moves sideways", "sideways", "motion"),
        ("a red ball jumps", "jumps", "motion"),
        ("one red ball rises", "one", "determiner"),
        ("a red ball rises quickly", "quickly", "end of prompt"),
    ],
)
def test_parse_error_names_the_bad_word(text, bad, expected):
    with pytest.raises(PromptError) as err:
        parse_prompt(text)
    message = str(err.value)
    assert f"could not place '{bad}'" in message and text in message and expected in message
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    "text, missing",
    [("a red ball", "motion phrase"), ("a red", "shape"), ("the", "colour"),
     ("a red ball moves to the", "moves to the left"), ("", "empty")],
)
def test_parse_error_says_what_is_missing(text, missing):
    with pytest.raises(PromptError, match=missing):
        parse_prompt(text)


def test_make_prompt_paraphrases_and_respects_allowed_phrasings():
    rng = random.Random(0)
    seen = {make_prompt("red", "circle", "up", rng) for _ in range(300)}
    assert {parse_prompt(p) for p in seen} == {("red", "circle", "up")}
    assert {prompt_phrasings(p)[0] for p in seen} == set(SHAPE_WORDS["circle"])
    assert {prompt_phrasings(p)[1] for p in seen} == set(MOTION_PHRASES["up"])
    assert any(p.endswith(".") for p in seen) and any(not p.endswith(".") for p in seen)
    assert {p.split()[0] for p in seen} == {"a", "the"}
    only = {make_prompt("red", "circle", "up", rng, phrasings=["disc", "rises"]) for _ in range(20)}
    assert {prompt_phrasings(p) for p in only} == {("disc", "rises")}
    with pytest.raises(ValueError, match="shape word"):
        make_prompt("red", "square", "up", rng, phrasings=["disc", "rises"])


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("size", [12, 13, 16])
def test_every_combination_renders_exact_colour_and_area(size):
    start = (24, 24)
    for colour, shape, direction in itertools.product(COLOURS, SHAPES, DIRECTIONS):
        frames, scenes = render_story([prompt(colour, shape, direction)], size=size, start=start, first_frames=4)
        assert frames.dtype == torch.uint8 and frames.shape == (4, 64, 64, 3)
        assert frame_colours(frames[0]) == {(0, 0, 0), COLOURS[colour]}
        area = int(object_pixels(frames[0]).sum())
        expected = {"square": size * size, "circle": math.pi * size**2 / 4, "triangle": size**2 / 2}[shape]
        tolerance = 0 if shape == "square" else 0.06 * expected
        assert abs(area - expected) <= tolerance, (shape, size, area)
        assert bbox(frames[0]) == (24, 24, size, size)
        # same object every frame: motion never changes the area
        assert all(int(object_pixels(f).sum()) == area for f in frames)


def test_triangle_geometry():
    for size in range(12, 17):
        frames, _ = render_story(["a white triangle rises"], size=size, start=(10, 20), first_frames=1)
        mask = object_pixels(frames[0])[20 : 20 + size, 10 : 10 + size]
        widths = mask.sum(dim=1).tolist()
        assert widths[-1] == size  # base d on the bottom row
        assert widths[0] == (1 if size % 2 else 2)  # apex at top centre
        assert widths == sorted(widths)  # widens downwards
        assert torch.equal(mask, mask.flip(1))  # isosceles: mirror symmetric
        assert mask[0, (size - 1) // 2] and mask[0, size // 2]


def test_circle_is_symmetric_disc():
    for size in range(12, 17):
        mask = shapes.shape_mask("circle", size)
        assert torch.equal(mask, mask.flip(0)) and torch.equal(mask, mask.flip(1))
        assert torch.equal(mask, mask.T)
        assert not mask[0, 0] and mask[size // 2, size // 2]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_moves_exactly_two_pixels_per_frame(direction):
    frames, _ = render_story([prompt("green", "square", direction)], size=14, start=(25, 25))
    dx, dy = STEP[direction]
    for t in range(len(frames)):
        assert bbox(frames[t]) == (25 + t * dx, 25 + t * dy, 14, 14)


@pytest.mark.parametrize(
    "direction, start, stop",
    [("left", (3, 30), (0, 30)), ("right", (47, 30), (52, 30)),
     ("up", (30, 5), (30, 0)), ("down", (30, 49), (30, 52))],
)
def test_stops_at_wall_without_bounce(direction, start, stop):
    frames, _ = render_story([prompt("yellow", "square", direction)], size=12, start=start)
    xs = [bbox(f)[0] for f in frames]
    ys = [bbox(f)[1] for f in frames]
    assert (xs[-1], ys[-1]) == stop
    assert (xs[1], ys[1]) == (start[0] + STEP[direction][0], start[1] + STEP[direction][1])
    for t in range(1, len(frames)):  # monotone towards the wall, never back
        assert (xs[t] - xs[t - 1]) * STEP[direction][0] >= 0 and (ys[t] - ys[t - 1]) * STEP[direction][1] >= 0
        assert bbox(frames[t])[2:] == (12, 12)  # whole object stays visible


def test_clamp_from_one_pixel_away_moves_one_pixel():
    frames, _ = render_story(["a red box moves left"], size=12, start=(1, 10), first_frames=3)
    assert [bbox(f)[0] for f in frames] == [1, 0, 0]


def test_colour_switches_on_first_new_frame_while_position_continues():
    story = ["a red ball moves right", "the blue ball falls.", "a green disc goes left"]
    frames, scenes = render_story(story, size=12, start=(10, 10))
    assert [(s.prompt, s.start, s.end) for s in scenes] == [(story[0], 0, 11), (story[1], 11, 17), (story[2], 17, 23)]
    assert frames.shape[0] == 23
    assert frame_colours(frames[10]) == {(0, 0, 0), COLOURS["red"]}
    assert frame_colours(frames[11]) == {(0, 0, 0), COLOURS["blue"]}
    assert frame_colours(frames[16]) == {(0, 0, 0), COLOURS["blue"]}
    assert frame_colours(frames[17]) == {(0, 0, 0), COLOURS["green"]}
    assert bbox(frames[10])[:2] == (30, 10)
    assert bbox(frames[11])[:2] == (30, 12)  # first new frame already moved down
    assert bbox(frames[16])[:2] == (30, 22)
    assert bbox(frames[17])[:2] == (28, 22)
    assert bbox(frames[22])[:2] == (18, 22)


def test_scene_ranges_follow_frame_budget():
    from phenaki.video import Scene

    frames, scenes = render_story(["a red box rises"] * 4, first_frames=5, scene_frames=4)
    assert all(isinstance(s, Scene) for s in scenes)
    assert [(s.start, s.end) for s in scenes] == [(0, 5), (5, 9), (9, 13), (13, 17)]
    assert frames.shape == (17, 64, 64, 3)
    _, one = render_story("a red box rises")
    assert [(s.start, s.end) for s in one] == [(0, 11)]


def test_seed_reproducible_and_independent_of_global_rng():
    story = ["a magenta triangle goes up", "the cyan triangle sinks"]
    torch.manual_seed(1)
    random.seed(1)
    a = render_story(story, seed=7).frames
    torch.manual_seed(2)
    random.seed(2)
    assert torch.equal(a, render_story(story, seed=7).frames)
    assert any(not torch.equal(a, render_story(story, seed=s).frames) for s in range(8, 12))


def test_size_and_start_are_drawn_over_the_full_range():
    sizes, corners = set(), set()
    for seed in range(300):
        frames, _ = render_story(["a white box moves up"], seed=seed, first_frames=1)
        x, y, w, h = bbox(frames[0])
        assert w == h and 12 <= w <= 16 and 0 <= x <= 64 - w and 0 <= y <= 64 - w
        sizes.add(w)
        corners.add((x < 16, y < 16, x > 32, y > 32))
    assert sizes == {12, 13, 14, 15, 16}
    assert len(corners) >= 8


def test_later_shape_is_ignored_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="phenaki.data.shapes"):
        frames, _ = render_story(["a red box moves right", "a blue ball moves right"], size=12, start=(0, 0))
    assert "keeping the square" in caplog.text
    assert int(object_pixels(frames[-1]).sum()) == 144


def test_bad_overrides_raise():
    with pytest.raises(ValueError, match="outside the canvas"):
        render_story(["a red box rises"], size=16, start=(50, 0))
    with pytest.raises(ValueError, match="at least one prompt"):
        render_story([])
    with pytest.raises(PromptError, match="purple"):
        render_story(["a red box rises", "a purple box rises"])


# --------------------------------------------------------------------------- hold-outs

HOLDOUT = HoldOut(combinations=[("red", "circle", "left"), ("blue", "square", "up")], phrasings=["disc", "drifts left"])


def scene_is_held_out(text: str) -> bool:
    """Independent reimplementation of the hold-out rule for checking."""
    colour, shape, direction = parse_prompt(text)
    word, phrase = prompt_phrasings(text)
    return (colour, shape, direction) in {("red", "circle", "left"), ("blue", "square", "up")} or bool(
        {word, phrase} & {"disc", "drifts left"}
    )


def test_holdout_validates_vocabulary():
    with pytest.raises(ValueError, match="purple"):
        HoldOut(combinations=[("purple", "circle", "left")])
    with pytest.raises(ValueError, match="hexagon"):
        HoldOut(combinations=[("red", "hexagon", "left")])
    with pytest.raises(ValueError, match="sideways"):
        HoldOut(combinations=[("red", "circle", "sideways")])
    with pytest.raises(ValueError, match="zooms left"):
        HoldOut(phrasings=["zooms left"])
    assert HoldOut(combinations=[["Red", "circle", "LEFT"]], phrasings=["Drifts  Left"]) == HoldOut(
        [("red", "circle", "left")], ["drifts left"]
    )


def test_sample_story_respects_splits():
    rng = random.Random(0)
    seen_train, seen_heldout = set(), set()
    for _ in range(400):
        train = sample_story(rng, 3, HOLDOUT, "train")
        held = sample_story(rng, 3, HOLDOUT, "heldout")
        for story in (train, held):
            assert len({parse_prompt(p).shape for p in story}) == 1
            for a, b in zip(story, story[1:]):  # something changes between scenes
                assert parse_prompt(a)[::2] != parse_prompt(b)[::2]
        assert not any(scene_is_held_out(p) for p in train)
        assert all(scene_is_held_out(p) and HOLDOUT.covers(p) for p in held)
        seen_train.update(parse_prompt(p) for p in train)
        seen_heldout.update(parse_prompt(p) for p in held)
    assert ("red", "circle", "left") in seen_heldout and ("blue", "square", "up") in seen_heldout
    assert ("red", "circle", "right") in seen_train  # combos are only held out in the listed direction
    assert len(seen_train) >= 80


def test_heldout_split_needs_a_holdout():
    with pytest.raises(ValueError, match="no scene"):
        sample_story(random.Random(0), 1, None, "heldout")
    with pytest.raises(ValueError, match="split"):
        sample_story(random.Random(0), 1, HOLDOUT, "test")


# --------------------------------------------------------------------------- dataset


def test_dataset_items_are_deterministic_and_well_formed():
    ds = ShapesDataset(50, seed=3)
    assert len(ds) == 50
    for i in (0, 7, 49):
        a, b = ds[i], ShapesDataset(50, seed=3)[i]
        assert torch.equal(a["video"], b["video"]) and a["caption"] == b["caption"]
        assert a["video"].dtype == torch.uint8 and a["video"].shape == (11, 64, 64, 3)
    assert any(not torch.equal(ds[i]["video"], ShapesDataset(50, seed=4)[i]["video"]) for i in range(5))
    with pytest.raises(IndexError):
        ds[50]


def test_dataset_train_and_heldout_splits():
    train = ShapesDataset(150, holdout=HOLDOUT, split="train", seed=1)
    held = ShapesDataset(60, holdout=HOLDOUT, split="heldout", seed=1)
    for i in range(len(train)):
        item = train[i]
        assert not scene_is_held_out(item["caption"])
        assert item["prev_caption"] == "" or not scene_is_held_out(item["prev_caption"])
    for i in range(len(held)):
        item = held[i]
        assert scene_is_held_out(item["caption"])
        assert item["prev_caption"] == "" or scene_is_held_out(item["prev_caption"])


def test_straddling_clips_change_exactly_at_context_frames():
    ds = ShapesDataset(25, num_frames=11, context_frames=5, straddle_prob=1.0, seed=5)
    for i in range(len(ds)):
        item = ds[i]
        video, ctx = item["video"], item["context_frames"]
        assert ctx == 5 and video.shape[0] == 11 and item["prev_caption"]
        prev, new = parse_prompt(item["prev_caption"]), parse_prompt(item["caption"])
        assert prev.shape == new.shape
        for t in range(11):
            want = COLOURS[prev.colour if t < ctx else new.colour]
            assert frame_colours(video[t]) == {(0, 0, 0), want}
        # the first new frame moves in the new direction (or stays clamped at a wall)
        (x0, y0, w, _), (x1, y1, _, _) = bbox(video[ctx - 1]), bbox(video[ctx])
        dx, dy = STEP[new.direction]
        assert (x1, y1) == (min(max(x0 + dx, 0), 64 - w), min(max(y0 + dy, 0), 64 - w))


def test_single_scene_and_image_clips():
    single = ShapesDataset(20, num_frames=7, straddle_prob=0.0, seed=2)
    for i in range(len(single)):
        item = single[i]
        assert item["context_frames"] == 0 and item["prev_caption"] == ""
        assert item["video"].shape == (7, 64, 64, 3)
        assert frame_colours(item["video"][-1]) == {(0, 0, 0), COLOURS[parse_prompt(item["caption"]).colour]}
    images = ShapesDataset(10, image_prob=1.0)
    assert all(images[i]["video"].shape == (1, 64, 64, 3) for i in range(10))
    mixed = ShapesDataset(40, seed=0)
    assert {mixed[i]["context_frames"] for i in range(40)} == {0, 5}


def test_dataset_rejects_bad_arguments():
    with pytest.raises(ValueError, match="context_frames"):
        ShapesDataset(10, num_frames=5, context_frames=5)
    with pytest.raises(ValueError, match="split"):
        ShapesDataset(10, split="valid")
    with pytest.raises(ValueError, match="no scene"):
        ShapesDataset(10, split="heldout")


def test_dataset_pickles_and_works_with_dataloader_workers():
    ds = ShapesDataset(8, holdout=HOLDOUT, seed=9)
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[3]["video"], ds[3]["video"])
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2
    assert batches[0]["video"].shape == (4, 11, 64, 64, 3)
    assert torch.equal(batches[1]["video"][2], ds[6]["video"])
    assert batches[0]["caption"][1] == ds[1]["caption"]


def test_dataloader_with_spawned_workers():
    ds = ShapesDataset(4, seed=11, holdout=HOLDOUT)
    loader = DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="spawn")
    videos = torch.cat([b["video"] for b in loader])
    assert torch.equal(videos, torch.stack([ds[i]["video"] for i in range(4)]))


def test_holdout_from_config():
    from phenaki.config import ConfigError, DataConfig

    assert shapes.holdout_from_config(DataConfig()) is None
    holdout = shapes.holdout_from_config(
        DataConfig(holdout_combinations=[["red", "circle", "left"]], holdout_phrasings=["disc"])
    )
    assert holdout == HoldOut([("red", "circle", "left")], ["disc"])
    with pytest.raises(ConfigError, match="purple"):
        shapes.holdout_from_config(DataConfig(holdout_combinations=[["purple", "circle", "left"]]))

"""The Shapes v2 domain: parsing, interpretation, rendering, random stories and the dataset."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from phenaki.data import shapes, shapes2
from phenaki.data.shapes import COLOURS, PromptError
from phenaki.data.shapes2 import (
    Action,
    HoldOut,
    StoryError,
    interpret,
    parse_scene,
    render_story,
)


def _centre(box: tuple[int, int, int]) -> tuple[float, float]:
    x, y, d = box
    return x + d / 2, y + d / 2


# --------------------------------------------------------------------------- v1 is a subset


def test_v1_stories_render_exactly_as_v1() -> None:
    rng = random.Random(3)
    for i in range(120):
        story = shapes.sample_story(rng, rng.randint(1, 4))
        assert torch.equal(shapes.render_story(story, seed=i).frames, render_story(story, seed=i).frames), story


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a red ball moves right and a blue square rises",
         [("red", "circle", Action("move", "right", 2)), ("blue", "square", Action("move", "up", 2))]),
        ("a green triangle enters from the left", [("green", "triangle", Action("enter", "left", 4))]),
        ("the red ball leaves to the top while the green triangle stays still",
         [("red", "circle", Action("leave", "top", 4)), ("green", "triangle", Action("still"))]),
        ("a yellow box appears above the green triangle",
         [("yellow", "square", Action("beside", "above", anchor=("green", "triangle")))]),
        ("the yellow box grows", [("yellow", "square", Action("grow"))]),
        ("the green triangle turns cyan", [("green", "triangle", Action("turn", colour="cyan"))]),
        ("the cyan triangle falls quickly.", [("cyan", "triangle", Action("move", "down", 4))]),
        ("The white disc  drifts left slowly", [("white", "circle", Action("move", "left", 1))]),
        ("a magenta block exits to the bottom", [("magenta", "square", Action("leave", "bottom", 4))]),
        ("a red ball vanishes and the blue box waits", [("red", "circle", Action("vanish")),
                                                        ("blue", "square", Action("still"))]),
    ],
)
def test_parse_scene(prompt: str, expected: list) -> None:
    assert [(c.colour, c.shape, c.action) for c in parse_scene(prompt)] == expected


@pytest.mark.parametrize(
    "prompt, word",
    [
        ("a red ball enters from the side", "'side'"),
        ("a red ball appears left the blue box", "'the'"),
        ("a red ball moves right and a blue box grows and a cyan disc waits", "'and'"),
        ("a red ball moves right and", "missing a clause"),
        ("the red ball turns", "missing the rest of 'turns'"),
        ("a purple ball moves right", "'purple'"),
        ("a red ball moves right quickly slowly", "'slowly'"),
        ("a red ball jumps", "'jumps'"),
    ],
)
def test_parse_errors_name_the_word(prompt: str, word: str) -> None:
    with pytest.raises(PromptError, match=word):
        parse_scene(prompt)


# --------------------------------------------------------------------------- interpretation


@pytest.mark.parametrize(
    "story, why",
    [
        (["a red ball moves right", "a red box appears"], "never share a colour"),
        (["a red ball waits", "a blue box appears left of the green ball"], "no green circle is on screen"),
        (["a red ball moves right and the red ball grows"], "both clauses name"),
        (["a red ball waits and a blue box waits", "a green triangle appears"], "third object"),
        (["a red ball waits and a blue box waits", "the blue box turns red"], "never share a colour"),
        (["a red ball waits", "the red ball leaves to the left", "the red ball moves up"], "leaving"),
        (["a red ball waits and a blue box waits", "the red ball vanishes and a green disc appears",
          "the green disc vanishes and a cyan disc appears"], "at most 3"),
        (["a red ball waits", "the red ball enters from the left"], "already on screen"),
        (["a red ball turns blue"], "to turn blue"),
        (["a red ball waits", "a blue ball moves up and a red ball vanishes"], "to vanish"),
    ],
)
def test_impossible_stories_say_why(story: list[str], why: str) -> None:
    with pytest.raises(StoryError, match=why):
        interpret(story)


def test_plan_follows_objects_through_a_story() -> None:
    plans = interpret(["a red ball moves right and a blue square rises", "the blue square leaves to the top",
                       "a green triangle enters from the left", "the red ball disappears", "the green triangle turns cyan",
                       "the cyan triangle falls"])
    summary = [[(o.index, o.colour, o.action.verb, o.status, o.created, o.named) for o in p.objects] for p in plans]
    assert summary[1] == [(0, "red", "still", "on", False, False), (1, "blue", "leave", "leaving", False, True)]
    assert summary[2][1] == (1, "blue", "leave", "leaving", False, False)  # unnamed, it keeps leaving
    assert summary[2][2] == (2, "green", "enter", "on", True, True)
    assert summary[3][0] == (0, "red", "vanish", "vanished", False, True)
    assert summary[4] == [(2, "cyan", "turn", "on", False, True)]  # the blue square is surely gone by now
    assert plans[4].objects[0].previous_colour == "green"
    assert plans[5].targets == [2]
    # v1's rule: the one object, named by its shape and another colour, is recoloured, not a second object
    plans = interpret(["a red ball waits", "a blue ball moves up", "a green box appears"])
    assert [(o.index, o.colour, o.previous_colour) for o in plans[1].objects] == [(0, "blue", "red")]
    assert [o.index for o in plans[2].objects] == [0, 1]


# --------------------------------------------------------------------------- rendering


def test_enter_leave_and_unnamed_objects() -> None:
    story = ["a red ball waits and a blue box waits", "the blue box leaves to the left",
             "a green triangle enters from the top"]
    r = render_story(story, seed=4, scene_frames=8)  # 16 frames of leaving: surely gone
    assert not r.overlap
    first, second, third = r.scenes
    red = r.boxes[0][0]
    assert all(b[0] == red for b in r.boxes)  # never named after scene 1: it stays still throughout
    blue = [b.get(1) for b in r.boxes]
    for t in range(second.start, len(r.boxes)):
        if blue[t] is not None:
            assert blue[t][0] == blue[t - 1][0] - 4  # 4 px/frame, also in the scene that does not name it
    gone = [t for t in range(second.start, len(r.boxes)) if blue[t] is None]
    assert gone and gone == list(range(gone[0], len(r.boxes)))  # gone for good
    x, y, d = r.boxes[gone[0] - 1][1]
    assert x + d > 0 and x + d - 4 <= 0  # removed on the frame it is wholly outside
    green = [b.get(2) for b in r.boxes[third.start:]]
    assert green[0][1] == -green[0][2]  # created wholly outside, touching the top edge
    assert [g[1] - green[0][1] for g in green] == [4 * i for i in range(len(green))]
    assert (r.frames[third.start] == torch.tensor(COLOURS["green"], dtype=torch.uint8)).all(-1).sum() == 0


def test_grow_shrink_keep_the_centre_within_limits() -> None:
    story = ["a red ball waits", "the red ball grows", "the red ball grows", "the red ball shrinks"]
    central = [s for s in range(50) if all(12 <= c <= 52 for c in _centre(render_story(story[:1], seed=s).boxes[0][0]))]
    r = render_story(story, seed=central[0], scene_frames=8)
    sizes = [b[0][2] for b in r.boxes]
    d0 = sizes[0]
    assert sizes[11:19] == [min(d0 + i, 24) for i in range(1, 9)]
    assert max(sizes) == 24 and sizes[-1] == 16
    near_wall = render_story(story, seed=next(s for s in range(50) if s not in central), scene_frames=8)
    assert all(0 <= x and x + d <= 64 and 0 <= y and y + d <= 64 for b in near_wall.boxes for x, y, d in b.values())
    xs, ys = zip(*{_centre(b[0]) for b in r.boxes})
    assert max(xs) - min(xs) <= 0.5 and max(ys) - min(ys) <= 0.5


def test_speeds_turn_and_vanish() -> None:
    r = render_story(["a red ball moves right slowly", "the red ball moves left quickly", "the red ball turns blue",
                      "the blue ball vanishes"], seed=2)
    xs = [b[0][0] for b in r.boxes[:11]]
    assert {b - a for a, b in zip(xs, xs[1:])} <= {1, 0}
    xs = [b[0][0] for b in r.boxes[10:17]]
    assert all(a - b in (4, a) or b == 0 for a, b in zip(xs, xs[1:]))
    turn = r.scenes[2]
    blue = torch.tensor(COLOURS["blue"], dtype=torch.uint8)
    assert (r.frames[turn.start] == blue).all(-1).any() and not (r.frames[turn.start - 1] == blue).all(-1).any()
    assert r.frames[r.scenes[3].start:].max() == 0  # vanished from the scene's first new frame


@pytest.mark.parametrize("relation", shapes2.RELATIONS)
def test_beside_places_next_to_the_named_object(relation: str) -> None:
    for seed in range(20):
        r = render_story(["a red ball waits", f"a blue box appears {relation} the red ball"], seed=seed)
        (ax, ay, ad), (bx, by, bd) = r.boxes[-1][0], r.boxes[-1][1]
        if r.skipped_relations:
            continue
        (acx, acy), (bcx, bcy) = _centre((ax, ay, ad)), _centre((bx, by, bd))
        gap = {"left of": ax - (bx + bd), "right of": bx - (ax + ad), "above": ay - (by + bd),
               "below": by - (ay + ad)}[relation]
        offset = abs(bcy - acy) if relation in ("left of", "right of") else abs(bcx - acx)
        assert 4 <= gap <= 12 and offset <= 4.5, (seed, r.boxes[-1])
        assert 0 <= bx <= 64 - bd and 0 <= by <= 64 - bd


def test_appear_keeps_its_distance_and_later_objects_draw_on_top() -> None:
    for seed in range(30):
        r = render_story(["a red box waits", "a blue ball appears"], seed=seed)
        assert shapes2._gap(r.boxes[-1][0], r.boxes[-1][1]) >= 4
    r = render_story(["a red box waits", "a blue box appears left of the red box"], seed=0)
    r2 = render_story(["a red box waits and a blue box waits"], seed=0)
    assert not r.overlap
    # a user's story may overlap: the later object wins the shared pixels
    clash = [render_story(["a red box moves right quickly and a blue box moves left quickly"], seed=s)
             for s in range(40)]
    over = [c for c in clash if c.overlap]
    assert over
    c = over[0]
    t = next(i for i in range(len(c.boxes)) if shapes2._gap(c.boxes[i][0], c.boxes[i][1]) < 0)
    assert (c.frames[t] == torch.tensor(COLOURS["blue"], dtype=torch.uint8)).all(-1).sum() == c.boxes[t][1][2] ** 2
    assert r2.frames.shape == (11, 64, 64, 3)


# --------------------------------------------------------------------------- random stories


HOLDOUT = HoldOut([("red", "triangle", "up"), ("blue", "circle", "enter"), ("green", "square", "grow")],
                  [("enter", "leave")], ["drifts left", "exits to the"])


def test_random_stories_respect_the_split_and_cover_every_verb() -> None:
    rng = random.Random(0)
    verbs, clauses, pairings = Counter(), Counter(), Counter()
    for _ in range(150):
        story = shapes2.sample_story(rng, 4, HOLDOUT, "train")
        for prompt in story:
            assert not HOLDOUT.covers(prompt), prompt
            parsed = parse_scene(prompt)
            clauses[len(parsed)] += 1
            verbs.update(c.action.verb for c in parsed)
            if len(parsed) == 2:
                pairings[tuple(sorted(c.action.verb for c in parsed))] += 1
        interpret(story)  # every drawn story can exist
    assert set(verbs) == set(shapes2.VERBS)
    assert clauses[1] > 100 and clauses[2] > 100
    assert ("enter", "leave") not in pairings
    for _ in range(30):
        assert all(HOLDOUT.covers(p) for p in shapes2.sample_story(rng, 4, HOLDOUT, "heldout"))


def test_random_stories_are_reproducible_and_never_overlap() -> None:
    a = [shapes2.sample_story(random.Random(5), 3) for _ in range(2)]
    assert a[0] == a[1]
    rng = random.Random(1)
    for _ in range(40):
        r = shapes2.sample_render(rng, 4)
        assert not r.overlap and not r.crowded


def test_holdout_validates_its_entries() -> None:
    with pytest.raises(ValueError, match="verb"):
        HoldOut([("red", "ball", "up")])
    with pytest.raises(ValueError, match="two verbs"):
        HoldOut(pairings=[("enter", "jump")])
    with pytest.raises(ValueError, match="hold-out phrasing"):
        HoldOut(phrasings=["hops"])
    assert HoldOut(pairings=[("leave", "enter")]).covers("a red ball enters from the left and a blue box exits to the top")


# --------------------------------------------------------------------------- dataset


def test_dataset_items_are_deterministic_story_clips() -> None:
    ds = shapes2.ShapesDataset(40, seed=3, holdout=HOLDOUT, image_prob=0.1)
    again = shapes2.ShapesDataset(40, seed=3, holdout=HOLDOUT, image_prob=0.1)
    kinds = Counter()
    for i in range(40):
        item = ds[i]
        assert torch.equal(item["video"], again[i]["video"]) and item["caption"] == again[i]["caption"]
        assert not HOLDOUT.covers(item["caption"])
        t = item["video"].shape[0]
        kinds[(t, item["context_frames"])] += 1
        if item["context_frames"]:
            assert t == 11 and item["prev_caption"]
    assert set(kinds) <= {(1, 0), (11, 0), (11, 5)} and kinds[(11, 5)] and kinds[(11, 0)]


def test_config_builds_the_v2_dataset() -> None:
    from phenaki.config import ConfigError, DataConfig
    from phenaki.data import build_dataset

    data = DataConfig(shapes_version=2, holdout_combinations=[["blue", "circle", "enter"]],
                      holdout_pairings=[["enter", "leave"]], num_samples=5, straddle_prob=0.0)
    ds = build_dataset(data, "heldout")
    assert isinstance(ds, shapes2.ShapesDataset)
    assert all(HOLDOUT.covers(ds[i]["caption"]) or "blue" in ds[i]["caption"] for i in range(5))
    with pytest.raises(ConfigError, match="shapes_version"):
        DataConfig(shapes_version=3)
    with pytest.raises(ConfigError, match="holdout_pairings"):
        DataConfig(holdout_pairings=[["enter", "leave"]])

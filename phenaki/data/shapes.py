"""The Shapes story domain (described in docs/shapes.md): prompts, renderer, dataset.

A tiny, fully specified text-to-video domain: one flat-coloured object (circle,
square or triangle) moves on a black 64 x 64 canvas.  Every attribute of a prompt
is visible in plain pixel statistics, so the project can train and measure text
faithfulness without any pretrained model.  Everything here is deterministic given
a seed; nothing reads or disturbs the global RNGs.

Exact rendering semantics (pinned down where the domain description is silent)
-----------------------------------------------------------------
* Coordinates: ``x`` is the column (grows to the right), ``y`` the row (grows
  downward).  The object lives in a ``d x d`` box whose top-left pixel is ``(x, y)``;
  ``0 <= x, y <= 64 - d``.
* Size and start: ``random.Random(seed)`` draws, in this order, ``d`` uniform over
  ``12..16`` (skipped when ``size`` is given), then ``x`` and then ``y``, each uniform
  over ``0..64-d`` (skipped when ``start`` is given).  Same seed -> same story.
* Frame budget: scene 0 covers frames ``[0, first_frames)``; scene ``k > 0`` covers
  ``[first_frames + (k-1)*scene_frames, first_frames + k*scene_frames)``.
* Motion: frame 0 shows the object at the start position.  Every later frame ``t``
  moves the box 2 px from frame ``t-1`` in the direction of the scene that frame ``t``
  belongs to, then clamps ``x`` and ``y`` to ``0..64-d`` (it stops at a wall, no
  bounce; a move into a wall from 1 px away moves 1 px).  So the first new frame of
  scene ``k`` already shows scene ``k``'s colour *and* has moved 2 px in scene ``k``'s
  direction from the last frame of scene ``k-1``.
* Shape and size are fixed by the first prompt for the whole story.  A later prompt
  naming another shape keeps the story's shape and logs a warning (the domain says the
  object keeps its shape; a sampler may still emit such prompts).
* Masks (box coordinates; pixel ``(i, j)`` = row ``i``, column ``j``; its centre is
  ``(j + 0.5, i + 0.5)``), computed exactly in integers:

  - circle: pixel centre within distance ``d/2`` of the box centre ``(d/2, d/2)``
    (boundary included).
  - square: the whole ``d x d`` box.
  - triangle: pixel centre inside the ideal isosceles triangle with apex
    ``(d/2, 0)`` and base from ``(0, d)`` to ``(d, d)``; additionally the apex row
    ``i = 0`` always holds its 1 (odd ``d``) or 2 (even ``d``) centre pixels, so the
    drawn height is exactly ``d``.  The bottom row is the full base of ``d`` pixels;
    the area is within 3 % of ``d^2 / 2``.

  Flat fill with the exact RGB of the colour, hard edges, black background.

Prompt language: ``{det} {colour} {shape word} {motion phrase}`` with an optional
final full stop; parsing is case-insensitive and whitespace-tolerant.

Hold-outs and splits (see :class:`HoldOut`)
-------------------------------------------
A *scene prompt is held out* when its (colour, shape, direction) is one of
``HoldOut.combinations`` **or** its shape word or motion phrase is one of
``HoldOut.phrasings``.

* ``split="train"``: no scene prompt of a story is held out.
* ``split="heldout"``: **every** scene prompt of a story is held out (a held-out
  combination in any phrasing, or any combination in a phrasing that uses at least
  one held-out phrasing).
* ``split="all"``: anything.

Sampling a story: the shape is drawn uniformly among shapes that have at least one
allowed scene; each scene then draws (colour, direction) uniformly among the allowed
pairs for that shape, excluding the previous scene's pair when another one is
allowed (so colour and/or direction change between scenes whenever possible), then
an allowed (shape word, motion phrase) pair uniformly, then determiner and full
stop uniformly.
"""

from __future__ import annotations

import functools
import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple, Sequence

import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:  # pragma: no cover - typing only; imported lazily at runtime
    from phenaki.config import DataConfig
    from phenaki.video import Scene

logger = logging.getLogger(__name__)

__all__ = [
    "CANVAS", "FPS", "SPEED", "MIN_SIZE", "MAX_SIZE", "SIZE_RANGE", "FIRST_FRAMES", "SCENE_FRAMES",
    "COLOURS", "SHAPES", "SHAPE_WORDS", "DIRECTIONS", "DIRECTION_VECTORS", "MOTION_PHRASES",
    "DETERMINERS", "PromptError", "holdout_from_config", "ParsedPrompt", "parse_prompt", "prompt_phrasings",
    "all_phrasings", "make_prompt", "HoldOut", "sample_story", "StoryRender", "shape_mask",
    "scene_ranges", "object_positions", "render_story", "ShapesDataset",
]

# --------------------------------------------------------------------------- constants

CANVAS = 64
"""Width and height of every frame in pixels."""
FPS = 8
SPEED = 2
"""Pixels the object moves per frame."""
MIN_SIZE, MAX_SIZE = 12, 16
SIZE_RANGE = (MIN_SIZE, MAX_SIZE)
FIRST_FRAMES = 11
"""Default frame count of a story's first scene (1 + 5 pairs for the tokenizer)."""
SCENE_FRAMES = 6
"""Default number of new frames every later scene adds."""
BACKGROUND = (0, 0, 0)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 240),
    "yellow": (235, 215, 40),
    "magenta": (210, 50, 210),
    "cyan": (40, 200, 210),
    "white": (230, 230, 230),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
}
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
DIRECTION_VECTORS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}
"""Unit (dx, dy) per direction in image coordinates (x right, y down)."""
MOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("moves left", "moves to the left", "slides left", "goes left", "drifts left"),
    "right": ("moves right", "moves to the right", "slides right", "goes right", "drifts right"),
    "up": ("moves up", "moves upward", "goes up", "rises", "floats up"),
    "down": ("moves down", "moves downward", "goes down", "falls", "sinks"),
}
DETERMINERS: tuple[str, ...] = ("a", "the")

WORD_TO_SHAPE: dict[str, str] = {w: s for s, ws in SHAPE_WORDS.items() for w in ws}
PHRASE_TO_DIRECTION: dict[str, str] = {p: d for d, ps in MOTION_PHRASES.items() for p in ps}

SPLITS = ("train", "heldout", "all")

# --------------------------------------------------------------------------- parsing


class PromptError(ValueError):
    """A prompt outside the Shapes prompt language (message names the culprit)."""


class ParsedPrompt(NamedTuple):
    """The attributes a Shapes prompt names."""

    colour: str
    shape: str
    direction: str


def _normalise(text: str) -> str:
    """Lower-case and collapse whitespace so phrasing comparisons are exact."""
    return " ".join(text.lower().split())


def _options(names: Iterable[str]) -> str:
    """Comma-separated choices for error messages."""
    return ", ".join(names)


def _parse(prompt: str) -> tuple[ParsedPrompt, str, str]:
    """Parse a prompt; also return the shape word and motion phrase it used."""
    if not isinstance(prompt, str):
        raise PromptError(f"prompt must be a str, got {type(prompt).__name__}")
    shown = prompt.strip()
    text = _normalise(prompt)
    if text.endswith("."):
        text = text[:-1].rstrip()
    tokens = text.split()
    grammar = "'{det} {colour} {shape} {motion}', e.g. 'a red ball moves right'"
    misplaced, missing = prompt_errors(shown, grammar)
    if not tokens:
        raise PromptError(f"empty prompt; expected {grammar}")
    check_subject(tokens, misplaced, missing)
    motion = tokens[3:]
    if not motion:
        raise missing(f"a motion phrase ({_options(PHRASE_TO_DIRECTION)})")
    phrase = _match_motion(motion, misplaced, missing)
    parsed = ParsedPrompt(tokens[1], WORD_TO_SHAPE[tokens[2]], PHRASE_TO_DIRECTION[phrase])
    return parsed, tokens[2], phrase


def prompt_errors(shown: str, grammar: str) -> tuple[Callable[[str, str], PromptError], Callable[[str], PromptError]]:
    """The two errors a parser raises, both quoting the prompt: a word out of place, a part missing."""

    def misplaced(word: str, expected: str) -> PromptError:
        return PromptError(f"could not place {word!r} in {shown!r}: expected {expected}")

    def missing(what: str) -> PromptError:
        return PromptError(f"prompt {shown!r} is missing {what}; expected {grammar}")

    return misplaced, missing


def check_subject(tokens: list[str], misplaced: Callable[[str, str], PromptError],
                  missing: Callable[[str], PromptError]) -> None:
    """A clause opens with ``{det} {colour} {shape word}``: name the first word that does not fit."""
    if tokens[0] not in DETERMINERS:
        raise misplaced(tokens[0], f"a determiner ({_options(DETERMINERS)})")
    if len(tokens) < 2:
        raise missing(f"a colour ({_options(COLOURS)})")
    if tokens[1] not in COLOURS:
        raise misplaced(tokens[1], f"a colour ({_options(COLOURS)})")
    if len(tokens) < 3:
        raise missing(f"a shape word ({_options(WORD_TO_SHAPE)})")
    if tokens[2] not in WORD_TO_SHAPE:
        raise misplaced(tokens[2], f"a shape word ({_options(WORD_TO_SHAPE)})")


def _match_motion(
    motion: list[str],
    misplaced: Callable[[str, str], PromptError],
    missing: Callable[[str], PromptError],
) -> str:
    """Match the motion tokens word by word so an error names the first bad word."""
    candidates = [p.split() for p in PHRASE_TO_DIRECTION]
    for k, word in enumerate(motion):
        done = [c for c in candidates if len(c) == k]
        candidates = [c for c in candidates if len(c) > k and c[k] == word]
        if not candidates:
            if done:
                raise misplaced(word, f"end of prompt after the motion phrase {' '.join(done[0])!r}")
            if k == 0:
                raise misplaced(word, f"a motion phrase ({_options(PHRASE_TO_DIRECTION)})")
            options = sorted({" ".join(c) for c in [p.split() for p in PHRASE_TO_DIRECTION]
                              if c[:k] == motion[:k]})
            raise misplaced(word, f"a motion phrase ({_options(options)})")
    for c in candidates:
        if len(c) == len(motion):
            return " ".join(c)
    options = _options(" ".join(c) for c in candidates)
    raise missing(f"the end of the motion phrase {' '.join(motion)!r} ({options})")


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Return (colour, shape, direction) of a prompt; raise PromptError if invalid."""
    return _parse(prompt)[0]


def prompt_phrasings(prompt: str) -> tuple[str, str]:
    """Return the (shape word, motion phrase) a prompt uses, for hold-out checks."""
    _, word, phrase = _parse(prompt)
    return word, phrase


def all_phrasings() -> list[str]:
    """Every shape word and motion phrase: the vocabulary of ``HoldOut.phrasings``."""
    return list(WORD_TO_SHAPE) + list(PHRASE_TO_DIRECTION)


def make_prompt(
    colour: str,
    shape: str,
    direction: str,
    rng: random.Random,
    phrasings: Iterable[str] | None = None,
) -> str:
    """Write a random paraphrase of (colour, shape, direction).

    ``phrasings`` restricts the shape words / motion phrases that may be used (all
    when None); determiner and optional full stop are always drawn freely.
    """
    _check_attributes(colour, shape, direction)
    allowed = None if phrasings is None else {_normalise(p) for p in phrasings}
    words = [w for w in SHAPE_WORDS[shape] if allowed is None or w in allowed]
    phrases = [p for p in MOTION_PHRASES[direction] if allowed is None or p in allowed]
    if not words:
        raise ValueError(f"no allowed shape word for {shape!r} among {sorted(allowed or ())}")
    if not phrases:
        raise ValueError(f"no allowed motion phrase for {direction!r} among {sorted(allowed or ())}")
    det = rng.choice(DETERMINERS)
    word = rng.choice(words)
    phrase = rng.choice(phrases)
    stop = "." if rng.random() < 0.5 else ""
    return f"{det} {colour} {word} {phrase}{stop}"


def _check_attributes(colour: str, shape: str, direction: str) -> None:
    """Fail early with the unknown attribute's name rather than a KeyError later."""
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {_options(COLOURS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {_options(SHAPES)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {_options(DIRECTIONS)}")


# --------------------------------------------------------------------------- hold-outs


@dataclass
class HoldOut:
    """Combinations and phrasings that training must never see.

    ``combinations``: (colour, shape, direction) triples.  ``phrasings``: shape words
    or motion phrases (e.g. ``"disc"``, ``"drifts left"``).  Entries are validated and
    normalised (lower case, single spaces) on construction.
    """

    combinations: list[tuple[str, str, str]] = field(default_factory=list)
    phrasings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        combos = []
        for combo in self.combinations:
            if isinstance(combo, str) or len(combo) != 3:
                raise ValueError(f"hold-out combination {combo!r} must be (colour, shape, direction)")
            c, s, d = (_normalise(str(v)) for v in combo)
            _check_attributes(c, s, d)
            combos.append((c, s, d))
        phrasings = []
        vocabulary = set(all_phrasings())
        for phrase in self.phrasings:
            norm = _normalise(str(phrase))
            if norm not in vocabulary:
                raise ValueError(
                    f"unknown hold-out phrasing {phrase!r}; expected a shape word or motion "
                    f"phrase ({_options(all_phrasings())})"
                )
            phrasings.append(norm)
        self.combinations = combos
        self.phrasings = phrasings

    def scene_is_held_out(self, parsed: ParsedPrompt, word: str, phrase: str) -> bool:
        """Whether a scene with these attributes and phrasing is held out."""
        return tuple(parsed) in set(self.combinations) or word in self.phrasings or phrase in self.phrasings

    def covers(self, prompt: str) -> bool:
        """Whether a prompt is held out (held-out combination or phrasing)."""
        return self.scene_is_held_out(*_parse(prompt))


def holdout_from_config(data: DataConfig) -> HoldOut | None:
    """Build the HoldOut a config's data section names (None when it names none).

    Raises ``ConfigError`` naming the bad entry, so a CLI can point at the config.
    """
    from phenaki.config import ConfigError

    combinations = list(getattr(data, "holdout_combinations", None) or [])
    phrasings = list(getattr(data, "holdout_phrasings", None) or [])
    if not combinations and not phrasings:
        return None
    try:
        return HoldOut([tuple(c) for c in combinations], phrasings)
    except ValueError as exc:
        raise ConfigError(f"data.holdout_combinations / data.holdout_phrasings: {exc}") from None


def _allowed_scenes(
    shape: str, holdout: HoldOut | None, split: str
) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """Map (colour, direction) -> allowed (shape word, motion phrase) pairs for a split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {_options(SPLITS)}")
    holdout = holdout or HoldOut()
    combos = set(holdout.combinations)
    held_phrasings = set(holdout.phrasings)
    allowed: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for colour in COLOURS:
        for direction in DIRECTIONS:
            combo_held = (colour, shape, direction) in combos
            pairs = []
            for word in SHAPE_WORDS[shape]:
                for phrase in MOTION_PHRASES[direction]:
                    held = combo_held or word in held_phrasings or phrase in held_phrasings
                    if split == "all" or (split == "train") != held:
                        pairs.append((word, phrase))
            if pairs:
                allowed[(colour, direction)] = pairs
    return allowed


def sample_story(
    rng: random.Random,
    num_scenes: int,
    holdout: HoldOut | None = None,
    split: str = "all",
) -> list[str]:
    """Draw the prompts of a random story of ``num_scenes`` scenes for a split.

    The shape is constant within the story; consecutive scenes change colour and/or
    direction whenever the split allows another pair (see module docstring).
    """
    if num_scenes < 1:
        raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
    per_shape = {s: _allowed_scenes(s, holdout, split) for s in SHAPES}
    shapes = [s for s in SHAPES if per_shape[s]]
    if not shapes:
        raise ValueError(f"hold-out {holdout!r} leaves no scene for split {split!r}")
    shape = rng.choice(shapes)
    allowed = per_shape[shape]
    pairs = list(allowed)
    prompts: list[str] = []
    previous: tuple[str, str] | None = None
    for _ in range(num_scenes):
        choices = [p for p in pairs if p != previous] or pairs
        colour, direction = rng.choice(choices)
        word, phrase = rng.choice(allowed[(colour, direction)])
        prompts.append(make_prompt(colour, shape, direction, rng, phrasings=(word, phrase)))
        previous = (colour, direction)
    return prompts


# --------------------------------------------------------------------------- rendering


class StoryRender(NamedTuple):
    """A rendered story: uint8 frames ``[T, 64, 64, 3]`` and its scene frame ranges."""

    frames: torch.Tensor
    scenes: list[Scene]


@functools.lru_cache(maxsize=None)
def _mask(shape: str, size: int) -> torch.Tensor:
    """Boolean ``[size, size]`` mask of a shape (cached: rendering reuses it)."""
    i = torch.arange(size).view(-1, 1)  # row
    j = torch.arange(size).view(1, -1)  # column
    dx = 2 * j + 1 - size  # 2 * (pixel centre - box centre), exact integers
    dy = 2 * i + 1 - size
    if shape == "circle":
        mask = dx * dx + dy * dy <= size * size
    elif shape == "square":
        mask = torch.ones(size, size, dtype=torch.bool)
    elif shape == "triangle":
        # inside: |x - d/2| <= y/2 at the pixel centre  <=>  2|dx| <= 2i + 1
        mask = 2 * dx.abs() <= 2 * i + 1
        mask[0] = dx[0].abs() <= 1  # apex row keeps its centre pixel(s)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {_options(SHAPES)}")
    return mask


def shape_mask(shape: str, size: int) -> torch.Tensor:
    """Boolean ``[size, size]`` mask of the object (True = object pixel)."""
    if not 1 <= size <= CANVAS:
        raise ValueError(f"size must be in 1..{CANVAS}, got {size}")
    return _mask(shape, int(size)).clone()


def scene_ranges(
    prompts: Sequence[str], first_frames: int = FIRST_FRAMES, scene_frames: int = SCENE_FRAMES
) -> list[Scene]:
    """Frame ranges of a story's scenes (end exclusive) under the frame budget."""
    from phenaki.video import Scene

    if first_frames < 1 or scene_frames < 1:
        raise ValueError(f"first_frames and scene_frames must be >= 1, got {first_frames}, {scene_frames}")
    scenes = []
    for k, prompt in enumerate(prompts):
        start = 0 if k == 0 else first_frames + (k - 1) * scene_frames
        end = first_frames + k * scene_frames
        scenes.append(Scene(prompt, start, end))
    return scenes


def object_positions(
    directions: Sequence[str],
    size: int,
    start: tuple[int, int],
    first_frames: int = FIRST_FRAMES,
    scene_frames: int = SCENE_FRAMES,
) -> list[tuple[int, int]]:
    """Top-left (x, y) of the object's box in every frame (moves 2 px/frame, clamped)."""
    limit = CANVAS - size
    x, y = start
    positions = [(x, y)]
    for k, direction in enumerate(directions):
        dx, dy = DIRECTION_VECTORS[direction]
        for _ in range((first_frames - 1) if k == 0 else scene_frames):
            x = min(max(x + SPEED * dx, 0), limit)
            y = min(max(y + SPEED * dy, 0), limit)
            positions.append((x, y))
    return positions


def _story_geometry(
    seed: int, size: int | None, start: tuple[int, int] | None
) -> tuple[int, tuple[int, int]]:
    """Draw (or validate overrides of) the object's size and start position."""
    rng = random.Random(seed)
    d = rng.randint(MIN_SIZE, MAX_SIZE) if size is None else size
    if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= CANVAS:
        raise ValueError(f"size must be an int in 1..{CANVAS}, got {d!r}")
    limit = CANVAS - d
    if start is None:
        x = rng.randint(0, limit)
        y = rng.randint(0, limit)
    else:
        x, y = (int(v) for v in start)
        if not (0 <= x <= limit and 0 <= y <= limit):
            raise ValueError(f"start {start!r} puts a {d}px object outside the canvas (need 0..{limit})")
    return d, (x, y)


def render_story(
    prompts: Sequence[str] | str,
    seed: int = 0,
    first_frames: int = FIRST_FRAMES,
    scene_frames: int = SCENE_FRAMES,
    size: int | None = None,
    start: tuple[int, int] | None = None,
) -> StoryRender:
    """Render a story exactly as the domain (docs/shapes.md) says (see module docstring for the rules).

    ``start`` is the top-left (x, y) of the object's box on frame 0.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("a story needs at least one prompt")
    parsed = [parse_prompt(p) for p in prompts]
    shape = parsed[0].shape
    for k, p in enumerate(parsed[1:], start=1):
        if p.shape != shape:
            logger.warning(
                "scene %d names a %s but the story's object is a %s; keeping the %s",
                k, p.shape, shape, shape,
            )
    scenes = scene_ranges(prompts, first_frames, scene_frames)
    d, origin = _story_geometry(seed, size, start)
    positions = torch.tensor(
        object_positions([p.direction for p in parsed], d, origin, first_frames, scene_frames)
    )
    colours = torch.empty(scenes[-1].end, 3, dtype=torch.uint8)
    for scene, p in zip(scenes, parsed):
        colours[scene.start : scene.end] = torch.tensor(COLOURS[p.colour], dtype=torch.uint8)
    return StoryRender(_paint(_mask(shape, d), positions, colours), scenes)


def _paint(mask: torch.Tensor, positions: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """Paint the mask at each frame's (x, y) with that frame's colour, vectorised."""
    t = positions.shape[0]
    my, mx = mask.nonzero(as_tuple=True)
    frames = torch.zeros(t, CANVAS, CANVAS, 3, dtype=torch.uint8)
    ti = torch.arange(t).view(-1, 1).expand(t, my.numel())
    yi = positions[:, 1:2] + my.view(1, -1)
    xi = positions[:, 0:1] + mx.view(1, -1)
    frames[ti, yi, xi] = colours.view(t, 1, 3).expand(t, my.numel(), 3)
    return frames


# --------------------------------------------------------------------------- dataset


def check_clip_settings(num_samples: int, num_frames: int, split: str, context_frames: int,
                        **probabilities: float) -> None:
    """Validate a Shapes dataset's clip settings once, naming the bad one."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    for name, prob in probabilities.items():
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {prob}")
    if probabilities.get("straddle_prob", 0) > 0 and not 0 < context_frames < num_frames:
        raise ValueError(
            f"straddling clips need 0 < context_frames < num_frames, got "
            f"context_frames={context_frames}, num_frames={num_frames}"
        )
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {_options(SPLITS)}")


class ShapesDataset(Dataset):
    """Map-style dataset of Shapes clips; item ``i`` depends only on ``(seed, i)``.

    Each item: ``video`` uint8 ``[T, 64, 64, 3]``; ``caption``, the prompt of the scene
    the clip's new frames belong to; ``context_frames``, how many leading frames show
    the previous scene (0 when none); ``prev_caption``, that scene's prompt ("" when
    none).  Per item: with probability ``image_prob`` a 1-frame clip; else with
    probability ``straddle_prob`` a straddling clip (last ``context_frames`` frames of
    scene 1, then the first ``num_frames - context_frames`` of scene 2, scene 1 lasting
    a uniform ``context_frames..max(context_frames, num_frames)`` frames so the object
    has travelled); else a 1-scene story of ``num_frames`` frames.  Note that with
    ``image_prob > 0`` clip lengths differ, so batching needs a custom collate.
    """

    def __init__(
        self,
        num_samples: int,
        num_frames: int = FIRST_FRAMES,
        seed: int = 0,
        holdout: HoldOut | None = None,
        split: str = "train",
        straddle_prob: float = 0.5,
        context_frames: int = 5,
        image_prob: float = 0.0,
    ) -> None:
        check_clip_settings(num_samples, num_frames, split, context_frames, straddle_prob=straddle_prob,
                            image_prob=image_prob)
        if not any(_allowed_scenes(s, holdout, split) for s in SHAPES):
            raise ValueError(f"hold-out {holdout!r} leaves no scene for split {split!r}")
        self.num_samples = num_samples
        self.num_frames = num_frames
        self.seed = seed
        self.holdout = holdout
        self.split = split
        self.straddle_prob = straddle_prob
        self.context_frames = context_frames
        self.image_prob = image_prob

    rng_name = "shapes"
    """Names the domain in each item's RNG seed, so two domains' datasets draw different streams."""

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        # str seeds hash with sha512: stable across processes and PYTHONHASHSEED
        rng = random.Random(f"{self.rng_name}:{self.seed}:{index}")
        if rng.random() < self.image_prob:
            return self._single(rng, 1)
        if rng.random() < self.straddle_prob:
            return self._straddle(rng)
        return self._single(rng, self.num_frames)

    def _single(self, rng: random.Random, frames: int) -> dict:
        """A 1-scene clip: the story itself."""
        (prompt,) = sample_story(rng, 1, self.holdout, self.split)
        video = render_story([prompt], seed=rng.getrandbits(32), first_frames=frames).frames
        return {"video": video, "caption": prompt, "context_frames": 0, "prev_caption": ""}

    def _straddle(self, rng: random.Random) -> dict:
        """A clip whose first context_frames frames end scene 1 and the rest start scene 2."""
        ctx, n = self.context_frames, self.num_frames
        prev, prompt = sample_story(rng, 2, self.holdout, self.split)
        first = rng.randint(ctx, max(ctx, n))
        story = render_story([prev, prompt], seed=rng.getrandbits(32), first_frames=first,
                             scene_frames=n - ctx)
        video = story.frames[first - ctx : first - ctx + n].clone()
        return {"video": video, "caption": prompt, "context_frames": ctx, "prev_caption": prev}

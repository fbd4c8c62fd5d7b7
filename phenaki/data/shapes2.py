"""The Shapes story domain, v2 (described in docs/shapes2.md): two objects and events.

v2 is a superset of v1 (`phenaki.data.shapes`): a story with one object that uses only
v1 phrases renders frame for frame as v1 renders it, from the same seed.  v2 adds a
second (and over a story, a third) object, scenes of two clauses joined by ``and`` or
``while``, and the verbs still, enter, leave, appear, appear beside, vanish, grow,
shrink and turn, plus ``quickly`` / ``slowly`` on a move.

The domain is split in three layers, so that a judge can read a story without drawing it:

* `parse_scene` turns a prompt into its clauses (`Clause`: colour, shape, `Action`);
* `interpret` resolves a story's clauses to objects symbolically (`ScenePlan`: which
  object each clause names, what every object on screen does, what is created, recoloured
  or removed) and raises `StoryError` naming why a story cannot exist;
* `render_story` draws a plan from a seed.

Exact semantics, where the domain description leaves room
----------------------------------------------------------
* Geometry is v1's: an object is a ``d x d`` box whose top-left pixel is ``(x, y)``.
  Internally the box keeps its *doubled centre* ``(2x + d, 2y + d)``, so grow and shrink
  keep the centre fixed (the top-left is ``floor((c - d) / 2)``) without drifting.
* Frames: frame 0 shows scene 0's objects where they were created; every later frame
  first applies, on a scene's first new frame, that scene's changes (remove vanished
  objects, recolour, set each object's action, create new objects), then moves every
  object that was not created on that frame by one step of its action.  A created object
  is shown where it was placed on its first frame (for ``enters`` that is wholly outside,
  touching the edge: it shows from the next frame).
* A move adds its speed (2 px; 4 quickly; 1 slowly) along its direction and is clamped at
  the walls: it never ends further out than the canvas allows, nor further out than it
  started (an object partly outside is not pulled in).  ``enters`` is a 4 px/frame move
  inwards with the same clamp; ``leaves`` moves 4 px/frame outwards, unclamped, and the
  object is gone for good on the frame it is wholly outside.
* Grow / shrink change d by 1 px a frame within 8..24, centre fixed, then the box is
  clamped inside the canvas (when it was inside).
* Creation draws from ``random.Random(seed)``, in creation order: d uniform over 12..16,
  then the placement.  ``appears`` (and any verb but ``enters`` / ``appears beside``
  creating an object): with no other object on screen, x then y uniform over positions
  inside the canvas (v1's draws, so v1 stories keep their frames); otherwise uniform over
  positions whose box is at least 4 px (Chebyshev gap between boxes) from the other
  object's box.  ``enters from the left``: x = -d, y uniform inside (and likewise).
  ``appears left of X``: gap uniform over 4..12 among gaps that fit, then a centre offset
  uniform over -4..4 among offsets that keep the box inside; when no gap fits on that
  side, the side with the most room is used (with the largest gap up to 12 that fits, at
  least 0) and `Render.skipped_relations` records it.
* Subjects: a clause's subject names the object on screen with that colour and shape.
  Failing that, with exactly one object on screen (nothing leaving) and a move or still
  verb, a subject of that object's shape recolours it (v1's rule); otherwise the clause
  creates the object.  Clauses are resolved in order, so a second clause may name or
  place itself beside the object the first created.  Two clauses of one scene may not
  name the same object.
* Leaving objects: from a ``leaves`` on, an object keeps leaving until it is wholly
  outside, whatever later scenes say of other objects; it cannot be named again.  When
  it is gone depends on where it was, so the plan (which draws nothing) keeps it as
  *leaving* (its colour taken) for `LEAVE_FRAMES` frames (16: enough to cross the whole
  canvas at 4 px/frame), after which it is surely gone.  It no longer counts towards the
  two objects on screen, so a new one may enter while it finishes its exit: for those
  frames three objects may show (`Render.crowded`; random stories never do).
* Limits (errors naming why): at most 2 objects on screen, at most 3 created per story,
  two objects on screen never share a colour, ``turns`` to the other object's colour is
  refused, ``appears beside`` needs the named object on screen.
* Random stories (`sample_story`) are drawn again until no two objects overlap in any
  frame (`Render.overlap`); a user's story may overlap, the later object drawn on top.

Hold-outs (`HoldOut`) leave out (colour, shape, verb) combinations, where the verb of a
move is its direction (so v1 hold-outs keep their meaning) and every other verb is its
name (``still``, ``enter``, ``leave``, ``appear``, ``beside``, ``vanish``, ``grow``,
``shrink``, ``turn``); unordered pairings of verb classes (``move``, ``still``, ...) in
two-clause scenes; and phrasings (shape words, motion phrases, ``quickly``, ``slowly``,
verb phrases such as ``exits to the`` or ``waits``, relations such as ``above``, and the
joiners ``and`` / ``while``).  A scene is held out when any of its clauses is.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple, Sequence

import torch

from . import shapes
from .shapes import (
    CANVAS,
    COLOURS,
    DETERMINERS,
    DIRECTION_VECTORS,
    DIRECTIONS,
    FIRST_FRAMES,
    MAX_SIZE,
    MIN_SIZE,
    MOTION_PHRASES,
    SCENE_FRAMES,
    SHAPE_WORDS,
    SHAPES,
    SPLITS,
    WORD_TO_SHAPE,
    PromptError,
    _mask,
    _normalise,
    _options,
    scene_ranges,
)

if TYPE_CHECKING:  # pragma: no cover
    from phenaki.config import DataConfig
    from phenaki.video import Scene

__all__ = [
    "VERBS", "VERB_KEYS", "EDGES", "RELATIONS", "SPEEDS", "ENTER_SPEED", "LEAVE_SPEED", "GROW_RANGE",
    "APPEAR_GAP", "BESIDE_GAPS", "BESIDE_OFFSET", "MAX_ON_SCREEN", "MAX_CREATED", "LEAVE_FRAMES",
    "JOINERS", "StoryError", "Action", "Clause", "parse_scene", "verb_key", "all_phrasings", "HoldOut",
    "holdout_from_config", "SceneObject", "ScenePlan", "interpret", "Render", "render_story",
    "sample_story", "ShapesDataset",
]

# --------------------------------------------------------------------------- constants

VERBS = ("move", "still", "enter", "leave", "appear", "beside", "vanish", "grow", "shrink", "turn")
"""Verb classes (what hold-out pairings name)."""
VERB_KEYS = (*DIRECTIONS, *VERBS[1:])
"""What hold-out combinations name as the verb: a move's direction, else the verb class."""
EDGES = ("left", "right", "top", "bottom")
EDGE_VECTORS = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}
"""Unit vector from the canvas towards each edge."""
RELATIONS = ("left of", "right of", "above", "below")
RELATION_VECTORS = {"left of": (-1, 0), "right of": (1, 0), "above": (0, -1), "below": (0, 1)}
SPEEDS = {"": 2, "quickly": 4, "slowly": 1}
ENTER_SPEED = LEAVE_SPEED = 4
GROW_RANGE = (8, 24)
APPEAR_GAP = 4
BESIDE_GAPS = (4, 12)
BESIDE_OFFSET = 4
MAX_ON_SCREEN = 2
MAX_CREATED = 3
LEAVE_FRAMES = math.ceil(CANVAS / LEAVE_SPEED)
JOINERS = ("and", "while")
STILL_PHRASES = ("stays still", "stops", "waits")
VANISH_PHRASES = ("disappears", "vanishes")
LEAVE_PHRASES = ("leaves to the", "exits to the")


class StoryError(ValueError):
    """A story that cannot exist in the domain (a third object, a colour taken, ...)."""


class Action(NamedTuple):
    """What a clause makes its object do.

    ``way``: a move's direction, the edge of an enter or leave, the relation of a beside;
    ``speed``: px per frame (move, enter, leave); ``colour``: a turn's new colour;
    ``anchor``: (colour, shape) a beside names.
    """

    verb: str
    way: str = ""
    speed: int = 0
    colour: str = ""
    anchor: tuple[str, str] | None = None


STILL = Action("still")


class Clause(NamedTuple):
    """One clause of a scene prompt: its subject, its action, and the phrasings it used."""

    colour: str
    shape: str
    action: Action
    phrasings: tuple[str, ...]


def verb_key(action: Action) -> str:
    """The verb a hold-out combination names: a move's direction, else the verb class."""
    return action.way if action.verb == "move" else action.verb


# --------------------------------------------------------------------------- parsing


def _verb_phrases() -> dict[tuple[str, ...], tuple[Action, tuple[str, ...]]]:
    """Every complete verb phrase (as words) -> its Action and the hold-out phrasings it uses."""
    table: dict[tuple[str, ...], tuple[Action, tuple[str, ...]]] = {}
    for direction, phrases in MOTION_PHRASES.items():
        for phrase in phrases:
            for adverb, speed in SPEEDS.items():
                words = f"{phrase} {adverb}".split()
                table[tuple(words)] = (Action("move", direction, speed), (phrase, adverb) if adverb else (phrase,))
    for phrase in STILL_PHRASES:
        table[tuple(phrase.split())] = (STILL, (phrase,))
    for edge in EDGES:
        table[("enters", "from", "the", edge)] = (Action("enter", edge, ENTER_SPEED), ("enters from the",))
        for phrase in LEAVE_PHRASES:
            table[(*phrase.split(), edge)] = (Action("leave", edge, LEAVE_SPEED), (phrase,))
    table[("appears",)] = (Action("appear"), ("appears",))
    for relation in RELATIONS:
        for colour in COLOURS:
            for word, shape in WORD_TO_SHAPE.items():
                words = ("appears", *relation.split(), "the", colour, word)
                table[words] = (Action("beside", relation, anchor=(colour, shape)), ("appears", relation, word))
    for phrase in VANISH_PHRASES:
        table[(phrase,)] = (Action("vanish"), (phrase,))
    table[("grows",)] = (Action("grow"), ("grows",))
    table[("shrinks",)] = (Action("shrink"), ("shrinks",))
    for colour in COLOURS:
        table[("turns", colour)] = (Action("turn", colour=colour), ("turns",))
    return table


_PHRASES = _verb_phrases()


def all_phrasings() -> list[str]:
    """Every phrasing a hold-out may name: shape words, verb phrases, adverbs, relations, joiners."""
    seen = dict.fromkeys(WORD_TO_SHAPE)
    for _, labels in _PHRASES.values():
        seen.update(dict.fromkeys(labels))
    seen.update(dict.fromkeys(JOINERS))
    return list(seen)


def _match_verb(words: list[str], misplaced: Callable[[str, str], PromptError],
                missing: Callable[[str], PromptError]) -> tuple[Action, tuple[str, ...]]:
    """Match a clause's verb words phrase by phrase, so an error names the first bad word."""
    candidates = list(_PHRASES)
    for k, word in enumerate(words):
        done = [c for c in candidates if len(c) == k]
        nxt = [c for c in candidates if len(c) > k and c[k] == word]
        if not nxt:
            if done:
                raise misplaced(word, f"'and', 'while' or the end of the prompt after {' '.join(done[0])!r}")
            options = sorted({c[k] for c in candidates if len(c) > k})
            what = "a verb phrase" if k == 0 else f"a word to continue {' '.join(words[:k])!r}"
            raise misplaced(word, f"{what} ({_options(options)})")
        candidates = nxt
    for c in candidates:
        if len(c) == len(words):
            return _PHRASES[c]
    options = sorted({c[len(words)] for c in candidates})
    raise missing(f"the rest of {' '.join(words)!r} ({_options(options)})")


def _parse_clause(tokens: list[str], shown: str) -> Clause:
    """``{det} {colour} {shape word} {verb phrase}``: errors name the word and what was expected."""
    misplaced, missing = shapes.prompt_errors(shown, "'{det} {colour} {shape} {verb phrase}', e.g. 'a red ball "
                                                     "moves right'")
    if not tokens:
        raise missing("a clause")
    shapes.check_subject(tokens, misplaced, missing)
    if len(tokens) < 4:
        raise missing("a verb phrase (e.g. 'moves right', 'enters from the left', 'grows')")
    action, labels = _match_verb(tokens[3:], misplaced, missing)
    return Clause(tokens[1], WORD_TO_SHAPE[tokens[2]], action, (tokens[2], *labels))


def parse_scene(prompt: str) -> list[Clause]:
    """The clauses of a scene prompt (one, or two joined by 'and' / 'while'); PromptError if invalid."""
    if not isinstance(prompt, str):
        raise PromptError(f"prompt must be a str, got {type(prompt).__name__}")
    shown = prompt.strip()
    text = _normalise(prompt)
    if text.endswith("."):
        text = text[:-1].rstrip()
    tokens = text.split()
    if not tokens:
        raise PromptError("empty prompt; expected '{det} {colour} {shape} {verb phrase}', e.g. 'a red ball moves right'")
    joins = [i for i, t in enumerate(tokens) if t in JOINERS]
    if len(joins) > 1:
        raise PromptError(f"could not place {tokens[joins[1]]!r} in {shown!r}: a scene has at most two clauses")
    if not joins:
        return [_parse_clause(tokens, shown)]
    i = joins[0]
    first = _parse_clause(tokens[:i], shown)
    second = _parse_clause(tokens[i + 1:], shown)
    return [first, second._replace(phrasings=(*second.phrasings, tokens[i]))]


# --------------------------------------------------------------------------- hold-outs


@dataclass
class HoldOut:
    """Combinations, verb pairings and phrasings that training must never see (see module docstring)."""

    combinations: list[tuple[str, str, str]] = field(default_factory=list)
    pairings: list[tuple[str, str]] = field(default_factory=list)
    phrasings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        combos = []
        for combo in self.combinations:
            if isinstance(combo, str) or len(combo) != 3:
                raise ValueError(f"hold-out combination {combo!r} must be (colour, shape, verb)")
            c, s, v = (_normalise(str(x)) for x in combo)
            if c not in COLOURS or s not in SHAPES or v not in VERB_KEYS:
                raise ValueError(f"hold-out combination {combo!r}: expected a colour ({_options(COLOURS)}), a shape "
                                 f"({_options(SHAPES)}) and a verb ({_options(VERB_KEYS)})")
            combos.append((c, s, v))
        pairings = []
        for pair in self.pairings:
            if isinstance(pair, str) or len(pair) != 2 or any(_normalise(str(v)) not in VERBS for v in pair):
                raise ValueError(f"hold-out pairing {pair!r} must be two verbs of {_options(VERBS)}")
            a, b = sorted(_normalise(str(v)) for v in pair)
            pairings.append((a, b))
        vocabulary = set(all_phrasings())
        phrasings = []
        for phrase in self.phrasings:
            norm = _normalise(str(phrase))
            if norm not in vocabulary:
                raise ValueError(f"unknown hold-out phrasing {phrase!r}; expected one of {_options(all_phrasings())}")
            phrasings.append(norm)
        self.combinations, self.pairings, self.phrasings = combos, pairings, phrasings

    def clause_is_held_out(self, clause: Clause) -> bool:
        """Whether a clause uses a held-out (colour, shape, verb) or phrasing."""
        return ((clause.colour, clause.shape, verb_key(clause.action)) in self.combinations
                or any(p in self.phrasings for p in clause.phrasings))

    def scene_is_held_out(self, clauses: Sequence[Clause]) -> bool:
        """Whether a scene has a held-out clause or pairs two verbs held out together."""
        if any(self.clause_is_held_out(c) for c in clauses):
            return True
        if len(clauses) == 2:
            return tuple(sorted(c.action.verb for c in clauses)) in self.pairings
        return False

    def covers(self, prompt: str) -> bool:
        """Whether a scene prompt is held out."""
        return self.scene_is_held_out(parse_scene(prompt))


def holdout_from_config(data: DataConfig) -> HoldOut | None:
    """The v2 HoldOut a config's data section names (None when it names none); ConfigError on a bad entry."""
    from phenaki.config import ConfigError

    combos = list(getattr(data, "holdout_combinations", None) or [])
    pairings = list(getattr(data, "holdout_pairings", None) or [])
    phrasings = list(getattr(data, "holdout_phrasings", None) or [])
    if not (combos or pairings or phrasings):
        return None
    try:
        return HoldOut([tuple(c) for c in combos], [tuple(p) for p in pairings], phrasings)
    except ValueError as exc:
        raise ConfigError(f"data.holdout_*: {exc}") from None


# --------------------------------------------------------------------------- interpretation


class SceneObject(NamedTuple):
    """What a scene expects of one object that may be on screen during it.

    ``status``: ``on`` (on screen the whole scene, or from its creation), ``leaving`` (told
    to leave in this or an earlier scene: on screen until wholly outside), ``vanished``
    (removed on the scene's first new frame).  ``created``: the scene creates it (``action``
    says how: enter, beside, or any verb placed as appear places it).  ``named``: a clause
    of the scene names it.
    """

    index: int
    shape: str
    colour: str
    action: Action
    status: str
    created: bool = False
    named: bool = False
    previous_colour: str = ""
    anchor: int | None = None  # beside: the index of the object it is placed next to


class ScenePlan(NamedTuple):
    """A scene resolved to objects: its prompt, clauses, and every object it concerns, in creation order."""

    prompt: str
    clauses: list[Clause]
    objects: list[SceneObject]
    targets: list[int]  # the object index each clause names, clause by clause


@dataclass
class _Known:
    """The interpreter's symbolic record of one object."""

    index: int
    shape: str
    colour: str
    status: str = "on"  # on | leaving | gone
    leave: Action | None = None  # the leave it carries on with, once told to leave
    leave_frames: int = 0  # frames spent leaving so far


def _describe(obj: _Known | SceneObject) -> str:
    return f"the {obj.colour} {obj.shape}"


class _Interpreter:
    """Walks a story scene by scene keeping the symbolic state (no positions)."""

    def __init__(self) -> None:
        self.known: list[_Known] = []

    def visible(self) -> list[_Known]:
        return [o for o in self.known if o.status in ("on", "leaving")]

    def scene(self, prompt: str, frames: int, k: int) -> ScenePlan:
        """Resolve one scene and advance the state by its `frames` steps."""
        clauses = parse_scene(prompt)
        entries: dict[int, SceneObject] = {}
        for o in self.visible():
            action = o.leave if o.status == "leaving" and o.leave else STILL
            entries[o.index] = SceneObject(o.index, o.shape, o.colour, action, o.status)
        targets: list[int] = []
        where = f"scene {k + 1} ({prompt.strip()!r})"
        for clause in clauses:
            index = self._resolve(clause, entries, where)
            if index in targets:
                raise StoryError(f"{where}: both clauses name {_describe(entries[index])}")
            targets.append(index)
        for o in self.known:  # leaving objects count down until surely gone
            if o.status == "leaving":
                o.leave_frames += frames
                if o.leave_frames >= LEAVE_FRAMES:
                    o.status = "gone"
        return ScenePlan(prompt, clauses, sorted(entries.values(), key=lambda e: e.index), targets)

    def _resolve(self, clause: Clause, entries: dict[int, SceneObject], where: str) -> int:
        """The object a clause names (named, recoloured by v1's rule, or created), with its action applied."""
        subject = f"the {clause.colour} {clause.shape}"
        visible = self.visible()
        match = [o for o in visible if (o.colour, o.shape) == (clause.colour, clause.shape)]
        if match and match[0].status == "leaving":
            raise StoryError(f"{where}: {subject} is leaving the screen and cannot be named again")
        if match:
            return self._act(match[0], clause, entries, where)
        if (len(visible) == 1 and visible[0].status == "on" and visible[0].shape == clause.shape
                and clause.action.verb in ("move", "still") and not entries[visible[0].index].created):
            obj = visible[0]  # v1's rule: the one object, named by its shape and another colour, is recoloured
            entries[obj.index] = entries[obj.index]._replace(colour=clause.colour, previous_colour=obj.colour)
            obj.colour = clause.colour
            return self._act(obj, clause, entries, where)
        return self._create(clause, entries, where)

    def _act(self, obj: _Known, clause: Clause, entries: dict[int, SceneObject], where: str) -> int:
        action = clause.action
        entry = entries[obj.index]
        if action.verb in ("enter", "appear", "beside") and not entry.created:
            raise StoryError(f"{where}: {_describe(obj)} is already on screen, so it cannot "
                             f"{'enter' if action.verb == 'enter' else 'appear'}")
        status = entry.status
        if action.verb == "turn":
            self._check_colour_free(action.colour, obj.index, where, f"{_describe(obj)} cannot turn {action.colour}")
            entry = entry._replace(previous_colour=obj.colour, colour=action.colour)
            obj.colour = action.colour
        elif action.verb == "leave":
            obj.status, obj.leave, status = "leaving", action, "leaving"
        elif action.verb == "vanish":
            obj.status, status = "gone", "vanished"
        entries[obj.index] = entry._replace(action=action, named=True, status=status)
        return obj.index

    def _check_colour_free(self, colour: str, index: int, where: str, what: str) -> None:
        for o in self.visible():
            if o.index != index and o.colour == colour:
                state = " (it is still leaving)" if o.status == "leaving" else ""
                raise StoryError(f"{where}: {what}: {_describe(o)} is on screen{state}, and two objects on "
                                 "screen never share a colour")

    def _create(self, clause: Clause, entries: dict[int, SceneObject], where: str) -> int:
        subject = f"the {clause.colour} {clause.shape}"
        visible = self.visible()
        on = [o for o in visible if o.status == "on"]
        if len(on) >= MAX_ON_SCREEN:
            shown = " and ".join(_describe(o) for o in on)
            raise StoryError(f"{where}: there is no {clause.colour} {clause.shape} on screen, and creating one "
                             f"would put a third object there ({shown} are)")
        if len(self.known) >= MAX_CREATED:
            raise StoryError(f"{where}: creating {subject} would make a fourth object; a story creates at most "
                             f"{MAX_CREATED}")
        if clause.action.verb in ("turn", "vanish"):  # nothing to change or remove: a slip, not a creation
            what = f"turn {clause.action.colour}" if clause.action.verb == "turn" else "vanish"
            raise StoryError(f"{where}: there is no {clause.colour} {clause.shape} on screen to {what}")
        self._check_colour_free(clause.colour, -1, where, f"cannot create {subject}")
        anchor = None
        if clause.action.verb == "beside":
            colour, shape = clause.action.anchor or ("", "")
            found = [o for o in visible if (o.colour, o.shape) == (colour, shape) and o.status == "on"]
            if not found:
                raise StoryError(f"{where}: {subject} should appear {clause.action.way} the {colour} {shape}, but "
                                 f"no {colour} {shape} is on screen")
            anchor = found[0].index
        obj = _Known(len(self.known), clause.shape, clause.colour)
        self.known.append(obj)
        entries[obj.index] = SceneObject(obj.index, obj.shape, obj.colour, STILL, "on", created=True, anchor=anchor)
        return self._act(obj, clause, entries, where)


def interpret(prompts: Sequence[str] | str, first_frames: int = FIRST_FRAMES,
              scene_frames: int = SCENE_FRAMES) -> list[ScenePlan]:
    """Resolve a story's clauses to objects, scene by scene; StoryError / PromptError naming why it cannot be."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("a story needs at least one prompt")
    if first_frames < 1 or scene_frames < 1:
        raise ValueError(f"first_frames and scene_frames must be >= 1, got {first_frames}, {scene_frames}")
    interpreter = _Interpreter()
    return [interpreter.scene(p, first_frames - 1 if k == 0 else scene_frames, k) for k, p in enumerate(prompts)]


# --------------------------------------------------------------------------- rendering


@dataclass
class _Body:
    """An object being drawn: its box kept as a doubled centre, so resizing keeps the centre fixed."""

    index: int
    shape: str
    colour: str
    d: int
    cx2: int
    cy2: int
    action: Action = STILL

    @property
    def x(self) -> int:
        return (self.cx2 - self.d) // 2

    @property
    def y(self) -> int:
        return (self.cy2 - self.d) // 2

    def box(self) -> tuple[int, int, int]:
        return self.x, self.y, self.d

    def outside(self) -> bool:
        x, y, d = self.box()
        return x + d <= 0 or y + d <= 0 or x >= CANVAS or y >= CANVAS

    def step(self) -> None:
        """One frame of the body's action."""
        verb = self.action.verb
        if verb in ("move", "enter", "leave"):
            ux, uy = (DIRECTION_VECTORS[self.action.way] if verb == "move"
                      else EDGE_VECTORS[self.action.way])
            if verb == "enter":
                ux, uy = -ux, -uy
            sx, sy = ux * self.action.speed, uy * self.action.speed
            if verb != "leave":
                sx, sy = _clamped(self.x, sx, self.d), _clamped(self.y, sy, self.d)
            self.cx2 += 2 * sx
            self.cy2 += 2 * sy
        elif verb in ("grow", "shrink"):
            inside = 0 <= self.x <= CANVAS - self.d and 0 <= self.y <= CANVAS - self.d
            self.d = min(max(self.d + (1 if verb == "grow" else -1), GROW_RANGE[0]), GROW_RANGE[1])
            if inside:
                x = min(max(self.x, 0), CANVAS - self.d)
                y = min(max(self.y, 0), CANVAS - self.d)
                if x != self.x:  # pushed back inside: the centre moves with the box
                    self.cx2 = 2 * x + self.d
                if y != self.y:
                    self.cy2 = 2 * y + self.d


def _clamped(x: int, step: int, d: int) -> int:
    """The part of a move's step the walls allow: never past a wall, nor further out than it started."""
    lo, hi = min(0, x), max(CANVAS - d, x)
    return min(max(x + step, lo), hi) - x


class Render(NamedTuple):
    """A rendered v2 story: frames, scene ranges, the plan, every frame's boxes, and what the draw could not honour."""

    frames: torch.Tensor  # uint8 [T, 64, 64, 3]
    scenes: list[Scene]
    plans: list[ScenePlan]
    boxes: list[dict[int, tuple[int, int, int]]]  # per frame: object index -> (x, y, d) of objects drawn
    overlap: bool  # two objects covered the same pixel in some frame
    crowded: bool  # three objects showed in some frame (one of them leaving)
    skipped_relations: list[int]  # scenes whose 'appears beside' could not be placed on the named side


def _gap(a: tuple[int, int, int], b: tuple[int, int, int]) -> int:
    """Chebyshev gap between two boxes (negative when they overlap on both axes)."""
    (ax, ay, ad), (bx, by, bd) = a, b
    return max(bx - (ax + ad), ax - (bx + bd), by - (ay + ad), ay - (by + bd))


def _place_appear(rng: random.Random, d: int, others: list[_Body]) -> tuple[int, int]:
    """Uniform inside the canvas, at least APPEAR_GAP from every other object (v1's draws when alone)."""
    limit = CANVAS - d
    if not others:
        x = rng.randint(0, limit)
        y = rng.randint(0, limit)
        return x, y
    xs = torch.arange(limit + 1).view(-1, 1)
    ys = torch.arange(limit + 1).view(1, -1)
    ok = torch.ones(limit + 1, limit + 1, dtype=torch.bool)
    for o in others:  # _gap over the whole grid of top-left corners at once
        ox, oy, od = o.box()
        gap = torch.maximum(torch.maximum(ox - (xs + d), xs - (ox + od)), torch.maximum(oy - (ys + d), ys - (oy + od)))
        ok &= gap >= APPEAR_GAP
    spots = [tuple(p) for p in ok.nonzero().tolist()]  # x-major, like the loops it replaces
    return rng.choice(spots) if spots else (rng.randint(0, limit), rng.randint(0, limit))


def _place_enter(rng: random.Random, d: int, edge: str) -> tuple[int, int]:
    """Wholly outside the edge, touching it; the other coordinate uniform inside."""
    along = rng.randint(0, CANVAS - d)
    return {"left": (-d, along), "right": (CANVAS, along), "top": (along, -d), "bottom": (along, CANVAS)}[edge]


def _room(anchor: tuple[int, int, int], relation: str) -> int:
    """Free pixels between the anchor's box and the canvas edge on a side."""
    x, y, d = anchor
    return {"left of": x, "right of": CANVAS - (x + d), "above": y, "below": CANVAS - (y + d)}[relation]


def _place_beside(rng: random.Random, d: int, anchor: _Body, relation: str) -> tuple[tuple[int, int], bool]:
    """Next to the anchor on the named side (or the roomiest side when it cannot fit); also whether it fit."""
    box = anchor.box()
    fits = [g for g in range(BESIDE_GAPS[0], BESIDE_GAPS[1] + 1) if _room(box, relation) - g >= d]
    if fits:
        gap, side = rng.choice(fits), relation
    else:
        side = max(RELATIONS, key=lambda r: _room(box, r))
        gap = max(0, min(BESIDE_GAPS[1], _room(box, side) - d))
    ux, uy = RELATION_VECTORS[side]
    ax, ay, ad = box
    limit = CANVAS - d
    if ux:  # left of / right of: x by the gap, y by a centre offset
        x = ax - gap - d if ux < 0 else ax + ad + gap
        ys = [(anchor.cy2 + 2 * o - d) // 2 for o in range(-BESIDE_OFFSET, BESIDE_OFFSET + 1)]
        ys = [y for y in ys if 0 <= y <= limit] or [min(max((anchor.cy2 - d) // 2, 0), limit)]
        spot = (x, rng.choice(ys))
    else:
        y = ay - gap - d if uy < 0 else ay + ad + gap
        xs = [(anchor.cx2 + 2 * o - d) // 2 for o in range(-BESIDE_OFFSET, BESIDE_OFFSET + 1)]
        xs = [x for x in xs if 0 <= x <= limit] or [min(max((anchor.cx2 - d) // 2, 0), limit)]
        spot = (rng.choice(xs), y)
    spot = (min(max(spot[0], 0), limit), min(max(spot[1], 0), limit))
    return spot, bool(fits)


def _create_body(rng: random.Random, obj: SceneObject, bodies: dict[int, _Body]) -> tuple[_Body, bool]:
    """Draw a created object's size and place; also whether an 'appears beside' fit its side."""
    d = rng.randint(MIN_SIZE, MAX_SIZE)
    fit = True
    if obj.action.verb == "enter":
        x, y = _place_enter(rng, d, obj.action.way)
    elif obj.action.verb == "beside" and obj.anchor in bodies:
        (x, y), fit = _place_beside(rng, d, bodies[obj.anchor], obj.action.way)
    else:
        x, y = _place_appear(rng, d, list(bodies.values()))
    action = STILL if obj.action.verb in ("appear", "beside") else obj.action
    return _Body(obj.index, obj.shape, obj.colour, d, 2 * x + d, 2 * y + d, action), fit


def _paint_bodies(bodies: Iterable[_Body]) -> tuple[torch.Tensor, bool]:
    """One frame with the bodies drawn in creation order (later on top), clipped; and whether two overlap."""
    frame = torch.zeros(CANVAS, CANVAS, 3, dtype=torch.uint8)
    cover = torch.zeros(CANVAS, CANVAS, dtype=torch.int16)
    for body in sorted(bodies, key=lambda b: b.index):
        x, y, d = body.box()
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + d, CANVAS), min(y + d, CANVAS)
        if x0 >= x1 or y0 >= y1:
            continue
        mask = _mask(body.shape, d)[y0 - y : y1 - y, x0 - x : x1 - x]
        frame[y0:y1, x0:x1][mask] = torch.tensor(COLOURS[body.colour], dtype=torch.uint8)
        cover[y0:y1, x0:x1] += mask.to(torch.int16)
    return frame, bool((cover > 1).any())


def _apply_scene(plan: ScenePlan, bodies: dict[int, _Body], rng: random.Random) -> tuple[set[int], bool]:
    """A scene's changes on its first new frame: removals, colours, actions, then creations in order."""
    for obj in plan.objects:
        if obj.status == "vanished":
            bodies.pop(obj.index, None)
    planned = {o.index for o in plan.objects}
    for index in [i for i in bodies if i not in planned]:  # surely gone by now
        del bodies[index]
    fit = True
    created = set()
    for obj in plan.objects:
        if obj.created:
            body, ok = _create_body(rng, obj, bodies)
            bodies[obj.index] = body
            created.add(obj.index)
            fit = fit and ok
        elif obj.index in bodies:
            body = bodies[obj.index]
            body.colour = obj.colour
            body.action = obj.action if obj.action.verb != "turn" else STILL
    return created, fit


def render_story(
    prompts: Sequence[str] | str,
    seed: int = 0,
    first_frames: int = FIRST_FRAMES,
    scene_frames: int = SCENE_FRAMES,
) -> Render:
    """Render a v2 story exactly as the domain says (module docstring); PromptError / StoryError when it cannot be."""
    plans = interpret(prompts, first_frames, scene_frames)
    scenes = scene_ranges([p.prompt for p in plans], first_frames, scene_frames)
    rng = random.Random(seed)
    bodies: dict[int, _Body] = {}
    frames, boxes, overlap, crowded, skipped = [], [], False, False, []
    for k, plan in enumerate(plans):
        for i in range(first_frames if k == 0 else scene_frames):
            created: set[int] = set()
            if i == 0:
                created, fit = _apply_scene(plan, bodies, rng)
                if not fit:
                    skipped.append(k)
            for body in bodies.values():
                if body.index not in created:
                    body.step()
            for index in [b.index for b in bodies.values() if b.action.verb == "leave" and b.outside()]:
                del bodies[index]
            frame, clash = _paint_bodies(bodies.values())
            frames.append(frame)
            boxes.append({b.index: b.box() for b in bodies.values()})
            overlap = overlap or clash
            crowded = crowded or sum(not b.outside() for b in bodies.values()) > MAX_ON_SCREEN
    return Render(torch.stack(frames), scenes, plans, boxes, overlap, crowded, skipped)


# --------------------------------------------------------------------------- random stories

_CREATE_VERBS = {"enter": 1.5, "appear": 1.0, "beside": 1.0, "move": 1.5, "still": 0.5}
_ACT_VERBS = {"move": 3.0, "still": 1.0, "leave": 1.0, "vanish": 0.6, "grow": 0.8, "shrink": 0.8, "turn": 1.0}
_ADVERBS = {"": 0.6, "quickly": 0.2, "slowly": 0.2}


def _words(rng: random.Random, colour: str, shape: str) -> str:
    return f"{rng.choice(DETERMINERS)} {colour} {rng.choice(SHAPE_WORDS[shape])}"


def _verb_text(rng: random.Random, verb: str, free: list[str], anchors: list[_Known]) -> str:
    """A random phrasing of a verb (`free`: colours a turn may take; `anchors`: objects to appear beside)."""
    if verb == "move":
        adverb = rng.choices(list(_ADVERBS), weights=list(_ADVERBS.values()))[0]
        return f"{rng.choice(MOTION_PHRASES[rng.choice(DIRECTIONS)])} {adverb}".strip()
    if verb == "still":
        return rng.choice(STILL_PHRASES)
    if verb == "enter":
        return f"enters from the {rng.choice(EDGES)}"
    if verb == "leave":
        return f"{rng.choice(LEAVE_PHRASES)} {rng.choice(EDGES)}"
    if verb == "beside":
        a = rng.choice(anchors)
        return f"appears {rng.choice(RELATIONS)} the {a.colour} {rng.choice(SHAPE_WORDS[a.shape])}"
    if verb == "vanish":
        return rng.choice(VANISH_PHRASES)
    if verb == "turn":
        return f"turns {rng.choice(free)}"
    return {"appear": "appears", "grow": "grows", "shrink": "shrinks"}[verb]


def _pick(rng: random.Random, weights: dict[str, float], allowed: Iterable[str]) -> str:
    names = [v for v in weights if v in set(allowed)]
    return rng.choices(names, weights=[weights[v] for v in names])[0]


def _random_clause(rng: random.Random, state: _Interpreter, named: set[int], taken: set[str],
                   creations: int) -> tuple[str, int | None, str]:
    """One random clause for the state at a scene's start: (text, object it names or None, its colour)."""
    visible = state.visible()
    on = [o for o in visible if o.status == "on"]
    free = [c for c in COLOURS if c not in taken]
    actors = [o for o in on if o.index not in named]
    can_create = len(on) + creations < MAX_ON_SCREEN and len(state.known) + creations < MAX_CREATED and free
    if actors and (not can_create or rng.random() < 0.6):
        obj = rng.choice(actors)
        if len(visible) == 1 and not named and free and rng.random() < 0.25:  # v1's recolouring move
            colour = rng.choice(free)
            verb = _pick(rng, _ACT_VERBS, ("move", "still"))
            return f"{_words(rng, colour, obj.shape)} {_verb_text(rng, verb, free, [])}", obj.index, colour
        verb = _pick(rng, _ACT_VERBS, [v for v in _ACT_VERBS if v != "turn" or free])
        return f"{_words(rng, obj.colour, obj.shape)} {_verb_text(rng, verb, free, [])}", obj.index, obj.colour
    if not can_create:
        raise StoryError("no clause fits this state")
    anchors = [o for o in on if o.index not in named]
    verb = _pick(rng, _CREATE_VERBS, [v for v in _CREATE_VERBS if v != "beside" or anchors])
    colour, shape = rng.choice(free), rng.choice(SHAPES)
    return f"{_words(rng, colour, shape)} {_verb_text(rng, verb, [], anchors)}", None, colour


def _random_scene(rng: random.Random, state: _Interpreter, two_clause_prob: float) -> str:
    """A random scene prompt for the state (one or two clauses); may raise StoryError when it cannot fit."""
    taken = {o.colour for o in state.visible()}
    first, index, colour = _random_clause(rng, state, set(), taken, 0)
    text = first
    if rng.random() < two_clause_prob:
        named = {index} if index is not None else set()
        try:
            second, _, _ = _random_clause(rng, state, named, taken | {colour}, int(index is None))
        except StoryError:
            second = ""
        if second:
            text = f"{first} {rng.choice(JOINERS)} {second}"
    return text + ("." if rng.random() < 0.5 else "")


def _v1_holdout(holdout: HoldOut | None) -> object:
    """The part of a v2 hold-out that v1 stories can use, as v1's HoldOut."""
    from .shapes import HoldOut as HoldOutV1
    from .shapes import all_phrasings as v1_phrasings

    if holdout is None:
        return None
    vocabulary = set(v1_phrasings())
    return HoldOutV1([c for c in holdout.combinations if c[2] in DIRECTIONS],
                     [p for p in holdout.phrasings if p in vocabulary])


def _accepts(holdout: HoldOut | None, split: str, prompt: str) -> bool:
    """Whether a scene suits the split: train never shows a held-out scene, heldout only those."""
    if split == "all" or holdout is None:
        return True  # (a heldout split without a hold-out is refused before drawing)
    return holdout.covers(prompt) == (split == "heldout")


def sample_story(
    rng: random.Random,
    num_scenes: int,
    holdout: HoldOut | None = None,
    split: str = "all",
    *,
    one_object_prob: float = 0.25,
    two_clause_prob: float = 0.5,
    first_frames: int = FIRST_FRAMES,
    scene_frames: int = SCENE_FRAMES,
) -> list[str]:
    """The prompts of a random v2 story whose every scene suits `split` (train: none held out; heldout: all).

    With `one_object_prob` the story is v1's (one object, moves, recolouring); otherwise
    each scene names or creates objects with one clause, or two with `two_clause_prob`.
    """
    from .shapes import sample_story as sample_v1

    if num_scenes < 1:
        raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {_options(SPLITS)}")
    if split == "heldout" and holdout is None:
        raise ValueError("split 'heldout' needs a hold-out")
    if rng.random() < one_object_prob:
        try:
            return sample_v1(rng, num_scenes, _v1_holdout(holdout), split)  # type: ignore[arg-type]
        except ValueError:
            pass  # the hold-out leaves v1 nothing for this split: draw a v2 story
    for _ in range(100):
        state, prompts = _Interpreter(), []
        for k in range(num_scenes):
            for _ in range(400):
                trial = _copy_state(state)
                try:
                    prompt = _random_scene(rng, trial, two_clause_prob)
                    trial.scene(prompt, first_frames - 1 if k == 0 else scene_frames, k)
                except StoryError:
                    continue
                if _accepts(holdout, split, prompt):
                    state = trial
                    prompts.append(prompt)
                    break
            else:
                break
        if len(prompts) == num_scenes:
            return prompts
    raise ValueError(f"could not draw a {num_scenes}-scene story for split {split!r} with hold-out {holdout!r}")


def _copy_state(state: _Interpreter) -> _Interpreter:
    copy = _Interpreter()
    copy.known = [_Known(o.index, o.shape, o.colour, o.status, o.leave, o.leave_frames) for o in state.known]
    return copy


def sample_render(rng: random.Random, num_scenes: int, holdout: HoldOut | None = None, split: str = "all",
                  first_frames: int = FIRST_FRAMES, scene_frames: int = SCENE_FRAMES,
                  **options: float) -> Render:
    """A random story drawn and rendered until no two objects overlap and no three show at once."""
    for _ in range(50):
        prompts = sample_story(rng, num_scenes, holdout, split, first_frames=first_frames,
                               scene_frames=scene_frames, **options)  # type: ignore[arg-type]
        for _ in range(10):
            render = render_story(prompts, rng.getrandbits(32), first_frames, scene_frames)
            if not render.overlap and not render.crowded:
                return render
    raise ValueError(f"could not render a {num_scenes}-scene story without overlapping objects")  # pragma: no cover


# --------------------------------------------------------------------------- dataset


class ShapesDataset(shapes.ShapesDataset):
    """Map-style dataset of v2 Shapes clips; item ``i`` depends only on ``(seed, i)``.

    Items as v1's `phenaki.data.shapes.ShapesDataset` (``video``, ``caption``,
    ``context_frames``, ``prev_caption``).  A straddling clip ends a random story of 2 to
    `max_scenes` scenes: the last `context_frames` frames before its last scene, then that
    scene's first ``num_frames - context_frames`` frames, exactly what the story loop asks
    the model for at every cut (earlier scenes shape the context: a leaving object, a
    recoloured one).  Otherwise a story's first scene of ``num_frames`` frames.
    """

    rng_name = "shapes2"

    def __init__(self, num_samples: int, num_frames: int = FIRST_FRAMES, seed: int = 0,
                 holdout: HoldOut | None = None, split: str = "train", straddle_prob: float = 0.5,
                 context_frames: int = 5, image_prob: float = 0.0, max_scenes: int = 4,
                 one_object_prob: float = 0.25, two_clause_prob: float = 0.5) -> None:
        shapes.check_clip_settings(num_samples, num_frames, split, context_frames, straddle_prob=straddle_prob,
                                   image_prob=image_prob, one_object_prob=one_object_prob,
                                   two_clause_prob=two_clause_prob)
        if max_scenes < 2:
            raise ValueError(f"max_scenes must be >= 2, got {max_scenes}")
        self.num_samples, self.num_frames, self.seed = num_samples, num_frames, seed
        self.holdout, self.split = holdout, split  # type: ignore[assignment]
        self.straddle_prob, self.context_frames, self.image_prob = straddle_prob, context_frames, image_prob
        self.max_scenes = max_scenes
        self.options = {"one_object_prob": one_object_prob, "two_clause_prob": two_clause_prob}

    def _single(self, rng: random.Random, frames: int) -> dict:
        render = sample_render(rng, 1, self.holdout, self.split, first_frames=frames, **self.options)
        return {"video": render.frames, "caption": render.plans[0].prompt, "context_frames": 0, "prev_caption": ""}

    def _straddle(self, rng: random.Random) -> dict:
        ctx, n = self.context_frames, self.num_frames
        scenes = rng.randint(2, self.max_scenes)
        render = sample_render(rng, scenes, self.holdout, self.split, first_frames=max(FIRST_FRAMES, ctx),
                               scene_frames=n - ctx, **self.options)
        last = render.scenes[-1]
        video = render.frames[last.start - ctx : last.end].clone()
        return {"video": video, "caption": last.prompt, "context_frames": ctx, "prev_caption": render.scenes[-2].prompt}

"""Judge generated Shapes videos (the domain: docs/shapes.md) from their pixels alone.

No learned model is involved: every attribute a Shapes prompt names is visible in
plain pixel statistics, so a scene is checked against its prompt with a few
geometric measurements of the one object it should show.  This is what makes text
faithfulness (and generalisation to held-out combinations) measurable for the demo
model.

How a scene is measured
-----------------------
Every frame is thresholded into foreground / background and split into
8-connected components.  A frame *shows the object* when exactly one component of
meaningful size remains and that component is object-sized.  For each such frame
the judge records the object's area, centroid, bounding box, colour, fill
ratio (area / bounding-box area), taper (mean row width of the top third over that
of the bottom third) and a shape class.

Criteria (all thresholds are module constants, named in brackets)
-----------------------------------------------------------------
``present``
    At least ``PRESENT_FRACTION`` (90 %) of the scene's frames show exactly one
    object, i.e. at most ``floor(0.1 * T)`` frames may fail (0 of a 6-frame scene,
    1 of an 11-frame scene): "almost every frame", without letting a flickering
    object pass.

    * Foreground = brightest channel ``>= FG_THRESHOLD`` (90).  The dimmest domain
      colour peaks at 190 (green) and the brightest at 235 (yellow), so 90 is about
      half of the dimmest peak and sits between 1/3 of the brightest (78, the halo
      a 1-px blur spreads outside an edge) and 2/3 of the dimmest (127, the edge
      pixel a blur leaves inside): blurred edges stay where they were.  It is far
      above the background noise of a lossy decoder (a few levels).  Brightness is
      thresholded, not exact zeros, because decoded backgrounds are never exactly 0.
    * Components smaller than ``MIN_COMPONENT`` (6 px) are ignored: isolated
      specks a lossy tokenizer leaves behind; the smallest object has 74 px.
    * Object-sized = area in ``[MIN_AREA, MAX_AREA]`` = [36, 400] px (half the
      smallest domain object, a 12-px triangle of 74 px; about 1.5 x the largest, a
      16-px square of 256 px) and both bounding-box sides in ``[MIN_SIDE,
      MAX_SIDE]`` = [8, 22] px (domain sides are 12..16; 4 px less for a tip lost to
      blur, 6 px more for smearing).  Uniform noise (one canvas-sized component)
      and a blank frame (none) both fail.

``colour``
    Each frame's colour is the per-channel median of the brighter half of the
    object's pixels (its interior: blurred edge pixels are mixed with black); the
    scene's colour is the per-channel median of those over frames.  It is compared
    with the 7 domain colours *up to brightness*: each domain colour is scaled by the
    least-squares factor that fits the measurement, clamped to ``BRIGHTNESS_RANGE``
    (0.7..1.15), before the Euclidean RGB distance is taken, because lossy decoders
    and blur dim or brighten a flat colour without changing which colour it is (a
    small, mostly-edge triangle measures darker after a blur).  The prompt's
    colour must be the nearest and clearly so: its distance ``<= COLOUR_RATIO``
    (0.6) x the runner-up's.  The closest domain pair under this distance (green,
    cyan) is ~100 apart; 0.6 accepts a colour up to ~40 % of the way towards its
    neighbour and rejects anything ambiguous (1.0 is the exact midpoint).

``shape``
    Per frame, from the bounding box's aspect (w / h), fill ratio and taper:
    aspect outside ``ASPECT_RANGE`` (0.75..1.33; every domain shape is d x d) ->
    other; taper ``< TAPER_MAX`` (0.6: the object clearly widens downward) ->
    triangle if fill ``< TRIANGLE_FILL_MAX`` (0.75) else other; taper ``> 1 /
    TAPER_MAX`` (widens upward) -> other; otherwise fill ``>= SQUARE_FILL`` (0.89)
    -> square, fill ``>= CIRCLE_FILL`` (0.64) -> circle, else other.  Spec values:
    fill 1.0 (square), 0.78..0.81 (discrete circles, d = 12..16), 0.50..0.51
    (triangles); taper 1.0 for circle and square, 0.18..0.25 for a triangle.  0.89
    and 0.64 are the midpoints between neighbouring fills; a 1-px blur moves a
    triangle to fill <= 0.66 / taper <= 0.33 (its apex fades) and a circle to fill
    0.72..0.86, all inside their bands.  The object never leaves the canvas in this
    domain (it is clamped at walls), so its bounding box is always the whole
    object.  The scene's shape is the most common per-frame class; it must be the
    prompt's shape and hold in at least half of the frames that show the object.

``direction``
    Displacement = centroid of the last frame showing the object minus that of the
    first; ``along`` its component in the prompted direction, ``across`` the
    perpendicular magnitude.  Correct when the object moved the prompted way:
    ``along >= max(MIN_MOVE, MOVE_FRACTION * expected)`` (2 px; 30 % of the
    2 px/frame travel the domain prescribes, i.e. 3 px over a 6-frame scene, 6 px
    over 11 frames: tolerant of a slow model, far above the sub-pixel centroid
    jitter of a lossy decoder, not passed by a static object) and ``along >
    across`` (the dominant axis).  Special case, because the renderer clamps at
    walls: an object whose bounding box ends within ``WALL_TOL`` (2 px, one frame's
    step) of the wall in the prompted direction, and that moved neither away from
    it nor sideways by the minimum move, is correct too.  A static object not at
    that wall is wrong.

``smooth``
    Between consecutive frames showing the object the centroid moves at most
    ``MAX_STEP`` (4 px) per frame (twice the domain speed of 2 px: room for shape
    jitter, while a teleport jumps much further); every frame's area is within a
    factor ``SIZE_FACTOR`` (1.5) of the scene's median area; every frame's colour is
    within ``COLOUR_DRIFT`` (60) of the scene colour (about half the distance
    between the closest pair of domain colours, so a frame cannot drift towards
    another colour).

``continuity`` (only with ``prev_frames``; ``None`` otherwise)
    The object's centroid in the scene's first frame is within ``CONTINUITY_PX``
    (5 px: the domain's 2-px step across the cut plus 3 px of slack) of its centroid
    in the previous scene's last frame, the shape class is the same in both scenes
    (the last ``CONTINUITY_TAIL`` = 4 frames of the previous scene), and the area
    is within ``SIZE_FACTOR`` of the previous one.  When the object is missing from
    the frames at the cut, the nearest frames that show it are used and the
    allowance grows by 2 px per extra frame.

``correct`` = present and colour and shape and direction and smooth (continuity is
reported apart: it belongs to the story, not to the prompt).

Validated in ``tests/test_judge.py``: every criterion holds on every ground-truth
render (all colours x shapes x directions and sizes, multi-scene stories hitting
walls), also under gaussian noise (std 6) plus a 1-px blur; nothing is correct on
noise or blank videos; and each criterion fails on a video built to break it.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.shapes import (
    COLOURS,
    DIRECTION_VECTORS,
    SPEED,
    HoldOut,
    parse_prompt,
    sample_story,
)

__all__ = [
    "FG_THRESHOLD", "MIN_COMPONENT", "MIN_AREA", "MAX_AREA", "MIN_SIDE", "MAX_SIDE", "PRESENT_FRACTION",
    "COLOUR_RATIO", "BRIGHTNESS_RANGE", "COLOUR_DRIFT", "SQUARE_FILL", "CIRCLE_FILL", "TRIANGLE_FILL_MAX",
    "TAPER_MAX", "ASPECT_RANGE", "MIN_MOVE", "MOVE_FRACTION", "WALL_TOL", "MAX_STEP", "SIZE_FACTOR",
    "CONTINUITY_PX", "CONTINUITY_TAIL", "CRITERIA", "FrameObject", "SceneVerdict", "colour_distances",
    "measure_frames", "judge_scene", "judge_story", "summarise", "evaluate_shapes", "format_shapes_table",
    "bootstrap_interval", "percentile_interval",
]

# --------------------------------------------------------------------------- thresholds

FG_THRESHOLD = 90
MIN_COMPONENT = 6
MIN_AREA, MAX_AREA = 36, 400
MIN_SIDE, MAX_SIDE = 8, 22
PRESENT_FRACTION = 0.9
COLOUR_RATIO = 0.6
BRIGHTNESS_RANGE = (0.7, 1.15)
COLOUR_DRIFT = 60.0
SQUARE_FILL = 0.89
CIRCLE_FILL = 0.64
TRIANGLE_FILL_MAX = 0.75
TAPER_MAX = 0.6
ASPECT_RANGE = (0.75, 1.33)
MIN_MOVE = 2.0
MOVE_FRACTION = 0.3
WALL_TOL = 2
MAX_STEP = 4.0
SIZE_FACTOR = 1.5
CONTINUITY_PX = 5.0
CONTINUITY_TAIL = 4

CRITERIA = ("present", "colour", "shape", "direction", "smooth", "continuity", "correct")
"""The criteria `summarise` reports, in table order."""

_COLOUR_NAMES = list(COLOURS)
_COLOUR_TABLE = torch.tensor([COLOURS[c] for c in _COLOUR_NAMES], dtype=torch.float32)

# --------------------------------------------------------------------------- measurement


@dataclass
class FrameObject:
    """The one object of a frame: where it is, how big, which colour, which shape."""

    area: int
    cx: float  # centroid column + 0.5 (pixel centres), x grows to the right
    cy: float  # centroid row + 0.5, y grows downward
    x0: int  # bounding box, inclusive
    y0: int
    x1: int
    y1: int
    rgb: tuple[float, float, float]  # per-channel median
    fill: float
    taper: float
    shape: str  # circle | square | triangle | other


def colour_distances(rgb: Any) -> torch.Tensor:
    """Distance of an RGB colour to each domain colour (``COLOURS`` order), up to brightness.

    Each domain colour ``c`` is first scaled by the factor ``s`` that best fits ``rgb``
    (least squares), clamped to ``BRIGHTNESS_RANGE``: the distance is ``|rgb - s c|``.
    """
    rgb = torch.as_tensor(rgb, dtype=torch.float32).view(1, 3)
    scale = ((_COLOUR_TABLE * rgb).sum(dim=1) / (_COLOUR_TABLE * _COLOUR_TABLE).sum(dim=1))
    scale = scale.clamp(*BRIGHTNESS_RANGE).view(-1, 1)
    return (rgb - scale * _COLOUR_TABLE).norm(dim=1)


def _as_frames(frames: Any, what: str) -> torch.Tensor:
    """uint8 [T, H, W, 3] tensor from a tensor or array (a single frame gets T = 1)."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"{what} must be a uint8 tensor or array [T, H, W, 3], got {type(frames).__name__}")
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{what} must have shape [T, H, W, 3], got {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise ValueError(f"{what} must be uint8, got {frames.dtype}")
    return frames.cpu()


def _label(fg: torch.Tensor) -> torch.Tensor:
    """8-connected component labels of boolean [T, H, W] (0 = background).

    Every foreground pixel starts with its own index; 3 x 3 max-pooling inside the
    foreground spreads the largest index over each component until nothing changes.
    """
    t, h, w = fg.shape
    mask = fg.to(torch.float32)[:, None]
    labels = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, 1, h, w) * mask
    for _ in range(h * w):
        spread = F.max_pool2d(labels, 3, stride=1, padding=1) * mask
        if torch.equal(spread, labels):
            break
        labels = spread
    return labels[:, 0].to(torch.int64)


def _classify(fill: float, taper: float, aspect: float) -> str:
    """circle | square | triangle | other from fill ratio, taper and aspect (see module docstring)."""
    if not ASPECT_RANGE[0] <= aspect <= ASPECT_RANGE[1]:
        return "other"
    if taper < TAPER_MAX:  # clearly widens downward
        return "triangle" if fill < TRIANGLE_FILL_MAX else "other"
    if taper > 1 / TAPER_MAX:  # widens upward: no domain shape does
        return "other"
    if fill >= SQUARE_FILL:
        return "square"
    return "circle" if fill >= CIRCLE_FILL else "other"


def _describe(frame: torch.Tensor, mask: torch.Tensor) -> FrameObject:
    rows, cols = mask.nonzero(as_tuple=True)
    area = int(rows.numel())
    y0, y1 = int(rows.min()), int(rows.max())
    x0, x1 = int(cols.min()), int(cols.max())
    h, w = y1 - y0 + 1, x1 - x0 + 1
    widths = mask[y0 : y1 + 1].sum(dim=1).to(torch.float32)
    k = max(1, h // 3)
    taper = float(widths[:k].mean() / widths[-k:].mean().clamp(min=1.0))
    fill = area / float(h * w)
    pixels = frame[rows, cols].to(torch.float32)
    bright = pixels.max(dim=1).values
    interior = pixels[bright >= bright.median()]  # the brighter half: edges are mixed with black
    rgb = interior.median(dim=0).values
    return FrameObject(
        area=area,
        cx=float(cols.to(torch.float32).mean()) + 0.5,
        cy=float(rows.to(torch.float32).mean()) + 0.5,
        x0=x0, y0=y0, x1=x1, y1=y1,
        rgb=(float(rgb[0]), float(rgb[1]), float(rgb[2])),
        fill=fill,
        taper=taper,
        shape=_classify(fill, taper, w / h),
    )


def measure_frames(frames: Any) -> list[FrameObject | None]:
    """Per frame: the one object it shows, or None (no object, several, or not object-sized)."""
    frames = _as_frames(frames, "frames")
    if frames.shape[0] == 0:
        return []
    fg = frames.max(dim=-1).values >= FG_THRESHOLD
    labels = _label(fg)
    found: list[FrameObject | None] = []
    for t in range(frames.shape[0]):
        values, counts = torch.unique(labels[t][fg[t]], return_counts=True)
        keep = counts >= MIN_COMPONENT
        values, counts = values[keep], counts[keep]
        if values.numel() != 1 or not MIN_AREA <= int(counts[0]) <= MAX_AREA:
            found.append(None)
            continue
        obj = _describe(frames[t], labels[t] == values[0])
        sides = (obj.x1 - obj.x0 + 1, obj.y1 - obj.y0 + 1)
        found.append(obj if all(MIN_SIDE <= s <= MAX_SIDE for s in sides) else None)
    return found


# --------------------------------------------------------------------------- verdicts


@dataclass
class SceneVerdict:
    """Whether a scene shows its prompt, criterion by criterion, with what was measured."""

    prompt: str
    frames: int
    present: bool
    colour: bool
    shape: bool
    direction: bool
    smooth: bool
    continuity: bool | None  # None: first scene (no previous frames to compare with)
    correct: bool
    found_frames: int = 0
    expected_colour: str = ""
    measured_rgb: tuple[float, float, float] | None = None
    nearest_colour: str | None = None
    colour_ratio: float | None = None  # distance to the prompt's colour / to the runner-up
    expected_shape: str = ""
    measured_shape: str | None = None
    fill: float | None = None
    taper: float | None = None
    expected_direction: str = ""
    displacement: tuple[float, float] | None = None  # (dx, dy) first -> last frame showing the object
    at_wall: bool = False
    max_step: float | None = None
    size_factor: float | None = None  # largest / smallest of (frame area vs median area)
    colour_drift: float | None = None
    continuity_gap: float | None = None  # px between the object across the cut
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def _scene_shape(objects: Sequence[FrameObject]) -> tuple[str, int]:
    """Most common shape class (ties broken in the domain's order) and its count."""
    counts = Counter(o.shape for o in objects)
    order = ["circle", "square", "triangle", "other"]
    best = max(order, key=lambda s: (counts.get(s, 0), -order.index(s)))
    return best, counts.get(best, 0)


def _indexed(objects: Sequence[FrameObject | None]) -> list[tuple[int, FrameObject]]:
    return [(i, o) for i, o in enumerate(objects) if o is not None]


def judge_scene(frames: Any, prompt: str, prev_frames: Any | None = None) -> SceneVerdict:
    """Judge one scene (uint8 ``[T, H, W, 3]``) against its prompt; see the module docstring.

    ``prev_frames``: the previous scene's frames (only its last ``CONTINUITY_TAIL``
    are used), for ``continuity``; without them ``continuity`` is None.
    """
    parsed = parse_prompt(prompt)
    frames = _as_frames(frames, "frames")
    n = int(frames.shape[0])
    seen = _indexed(measure_frames(frames))
    verdict = SceneVerdict(
        prompt=prompt, frames=n, present=False, colour=False, shape=False, direction=False, smooth=False,
        continuity=None, correct=False, found_frames=len(seen), expected_colour=parsed.colour,
        expected_shape=parsed.shape, expected_direction=parsed.direction, reasons=[],
    )
    allowed_missing = math.floor((1 - PRESENT_FRACTION) * n + 1e-9)
    verdict.present = n > 0 and n - len(seen) <= allowed_missing
    if not verdict.present:
        verdict.reasons.append(f"present: one object in {len(seen)}/{n} frames (need >= {n - allowed_missing})")
    if prev_frames is not None:
        verdict.continuity = False
    if not seen:
        verdict.reasons.append("no frame shows exactly one object-sized object")
        return verdict
    objs = [o for _, o in seen]
    rgb = _judge_colour(verdict, objs, parsed.colour)
    shape = _judge_shape(verdict, objs, parsed.shape)
    _judge_direction(verdict, seen, parsed.direction, (int(frames.shape[1]), int(frames.shape[2])))
    area = _judge_smooth(verdict, seen, rgb)
    if prev_frames is not None:
        _judge_continuity(verdict, prev_frames, seen[0], shape, area)
    verdict.correct = all((verdict.present, verdict.colour, verdict.shape, verdict.direction, verdict.smooth))
    return verdict


def _judge_colour(verdict: SceneVerdict, objs: list[FrameObject], colour: str) -> torch.Tensor:
    """The object's median colour must be nearest the prompt's, and clearly so; returns that colour."""
    rgb = torch.tensor([_median([o.rgb[c] for o in objs]) for c in range(3)])
    distances = colour_distances(rgb)
    nearest = _COLOUR_NAMES[int(distances.argsort()[0])]
    own = float(distances[_COLOUR_NAMES.index(colour)])
    others = [float(distances[i]) for i, name in enumerate(_COLOUR_NAMES) if name != colour]
    ratio = own / max(min(others), 1e-6)
    verdict.measured_rgb = tuple(round(float(v), 1) for v in rgb)
    verdict.nearest_colour = nearest
    verdict.colour_ratio = round(ratio, 3)
    verdict.colour = nearest == colour and ratio <= COLOUR_RATIO
    if not verdict.colour:
        verdict.reasons.append(f"colour: measured {verdict.measured_rgb} is {nearest}, distance ratio {ratio:.2f} "
                               f"(want {colour}, <= {COLOUR_RATIO})")
    return rgb


def _judge_shape(verdict: SceneVerdict, objs: list[FrameObject], shape_wanted: str) -> str:
    """The shape most frames show must be the prompt's, in at least half of them; returns it."""
    shape, votes = _scene_shape(objs)
    verdict.measured_shape = shape
    verdict.fill = round(_median([o.fill for o in objs]), 3)
    verdict.taper = round(_median([o.taper for o in objs]), 3)
    verdict.shape = shape == shape_wanted and 2 * votes >= len(objs)
    if not verdict.shape:
        verdict.reasons.append(f"shape: looks like a {shape} in {votes}/{len(objs)} frames (fill {verdict.fill}, "
                               f"taper {verdict.taper}); want {shape_wanted}")
    return shape


def _judge_direction(verdict: SceneVerdict, seen: list[tuple[int, FrameObject]], direction: str,
                     size: tuple[int, int]) -> None:
    """The object must move the prompt's way (mostly along it), or be held at that wall."""
    h, w = size
    (i0, first), (i1, last) = seen[0], seen[-1]
    dx, dy = last.cx - first.cx, last.cy - first.cy
    ux, uy = DIRECTION_VECTORS[direction]
    along = dx * ux + dy * uy
    across = abs(dx * uy - dy * ux)
    min_move = max(MIN_MOVE, MOVE_FRACTION * SPEED * (i1 - i0))
    wall = {"left": last.x0 <= WALL_TOL, "right": last.x1 >= w - 1 - WALL_TOL,
            "up": last.y0 <= WALL_TOL, "down": last.y1 >= h - 1 - WALL_TOL}
    verdict.at_wall = wall[direction]
    verdict.displacement = (round(dx, 2), round(dy, 2))
    moved = along >= min_move and along > across
    held_at_wall = verdict.at_wall and along > -min_move and across < min_move
    verdict.direction = moved or held_at_wall
    if not verdict.direction:
        verdict.reasons.append(f"direction: moved ({dx:+.1f}, {dy:+.1f}) px, want {direction} by >= "
                               f"{min_move:.1f} px{' (at that wall)' if verdict.at_wall else ''}")


def _judge_smooth(verdict: SceneVerdict, seen: list[tuple[int, FrameObject]], rgb: torch.Tensor) -> float:
    """No jumps, no swelling or shrinking, no colour drift between frames; returns the median area."""
    objs = [o for _, o in seen]
    max_step = 0.0
    for (ia, a), (ib, b) in zip(seen, seen[1:]):
        max_step = max(max_step, math.hypot(b.cx - a.cx, b.cy - a.cy) / (ib - ia))
    area = _median([o.area for o in objs])
    size_factor = max(max(o.area / area, area / o.area) for o in objs)
    drift = max(math.dist(o.rgb, tuple(rgb.tolist())) for o in objs)
    verdict.max_step = round(max_step, 2)
    verdict.size_factor = round(size_factor, 3)
    verdict.colour_drift = round(drift, 1)
    verdict.smooth = max_step <= MAX_STEP and size_factor <= SIZE_FACTOR and drift <= COLOUR_DRIFT
    if not verdict.smooth:
        verdict.reasons.append(f"smooth: max step {max_step:.1f} px (<= {MAX_STEP}), size factor {size_factor:.2f} "
                               f"(<= {SIZE_FACTOR}), colour drift {drift:.0f} (<= {COLOUR_DRIFT:g})")
    return area


def _judge_continuity(verdict: SceneVerdict, prev_frames: Any, start: tuple[int, FrameObject], shape: str,
                      area: float) -> None:
    """The object must carry on from where the previous scene left it: near, same shape, same size."""
    i0, first = start
    tail = _as_frames(prev_frames, "prev_frames")[-CONTINUITY_TAIL:]
    prev_seen = _indexed(measure_frames(tail))
    if not prev_seen:
        verdict.reasons.append("continuity: no object at the end of the previous scene")
        return
    j, before = prev_seen[-1]
    steps = (tail.shape[0] - 1 - j) + i0 + 1  # frames between the two measurements
    gap = math.hypot(first.cx - before.cx, first.cy - before.cy)
    allowed = CONTINUITY_PX + SPEED * (steps - 1)
    prev_shape, _ = _scene_shape([o for _, o in prev_seen])
    prev_area = _median([o.area for _, o in prev_seen])
    same_size = max(area / prev_area, prev_area / area) <= SIZE_FACTOR
    verdict.continuity_gap = round(gap, 2)
    verdict.continuity = gap <= allowed and prev_shape == shape and shape != "other" and same_size
    if not verdict.continuity:
        verdict.reasons.append(f"continuity: {gap:.1f} px from the previous scene (<= {allowed:g}), shape "
                               f"{prev_shape} -> {shape}, area {prev_area:.0f} -> {area:.0f}")


def judge_story(video_frames: Any, scenes: Sequence[Any]) -> list[SceneVerdict]:
    """Judge every scene (objects with ``prompt``, ``start``, ``end``) of a video.

    Each scene after the first is given the previous scene's frames for continuity.
    Every scene's prompt must be a Shapes prompt (a ``<prime>`` scene is not).
    """
    frames = _as_frames(video_frames, "video_frames")
    verdicts = []
    prev = None
    for scene in scenes:
        if not 0 <= scene.start < scene.end <= frames.shape[0]:
            raise ValueError(f"scene {scene!r} is outside the video's {frames.shape[0]} frames")
        current = frames[scene.start : scene.end]
        verdicts.append(judge_scene(current, scene.prompt, prev))
        prev = current
    return verdicts


# --------------------------------------------------------------------------- aggregates


def _rates(verdicts: Sequence[Any], criteria: Sequence[str] = CRITERIA) -> dict[str, Any]:
    """Each criterion's pass rate over the verdicts that judged it (v1's or v2's criteria)."""
    out: dict[str, Any] = {"scenes": len(verdicts)}
    for name in criteria:
        values = [getattr(v, name) for v in verdicts if getattr(v, name) is not None]
        out[name] = sum(map(bool, values)) / len(values) if values else None
    out["continuity_scenes"] = sum(v.continuity is not None for v in verdicts)
    return out


def summarise(verdicts: Sequence[SceneVerdict], groups: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """Rate of each criterion over all scenes (key ``"all"``) and per named group of indices.

    Each entry: ``scenes`` (count), one rate per criterion in ``CRITERIA`` (None when
    no scene counts: continuity only counts scenes that have a previous scene), and
    ``continuity_scenes``.
    """
    summary = {"all": _rates(verdicts)}
    for name, indices in (groups or {}).items():
        if name == "all":
            raise ValueError("group name 'all' is reserved for the overall rates")
        for i in indices:
            if not 0 <= i < len(verdicts):
                raise IndexError(f"group {name!r}: index {i} out of range for {len(verdicts)} verdicts")
        summary[name] = _rates([verdicts[i] for i in indices])
    return summary


# --------------------------------------------------------------------------- evaluation


def bootstrap_interval(stories: Sequence[Sequence[bool]], rounds: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float] | None:
    """Interval of the share of correct scenes when the stories are redrawn with replacement.

    Scenes of one story share its generation (a cut inherits the scene before it), so the
    story, not the scene, is the unit resampled. Without it, sampler variants that differ
    by less than the run-to-run spread look like gains. None when there are no stories.
    """
    if not stories:
        return None
    rng = random.Random(seed)
    counts = [(sum(map(bool, story)), len(story)) for story in stories]
    rates = []
    for _ in range(rounds):
        picked = [counts[rng.randrange(len(counts))] for _ in counts]
        rates.append(sum(c for c, _ in picked) / max(1, sum(n for _, n in picked)))
    return percentile_interval(rates, level)


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The central `level` share of bootstrap `values` (the percentile interval)."""
    ordered = sorted(values)
    tail = (1.0 - level) / 2
    last = len(ordered) - 1
    return ordered[int(tail * last)], ordered[int(math.ceil((1.0 - tail) * last))]


def _is_heldout(index: int, stories: int, count: int) -> bool:
    """Spread `count` held-out stories evenly over `stories` (exactly `count` of them)."""
    return (index + 1) * count // stories > index * count // stories


def _evaluation_plan(stories: int, num_scenes: int, heldout_fraction: float, seed: int, holdout: Any,
                     generate_kwargs: dict[str, Any] | None) -> tuple[random.Random, int, dict[str, Any]]:
    """Checked evaluation options: the story RNG, how many stories are held out, the generate options set."""
    if stories < 1:
        raise ValueError(f"stories must be >= 1, got {stories}")
    if num_scenes < 1:
        raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")
    held_count = math.floor(stories * heldout_fraction + 0.5) if holdout is not None else 0
    return random.Random(seed), held_count, {k: v for k, v in (generate_kwargs or {}).items() if v is not None}


def evaluate_shapes(
    pipe: Any,
    stories: int,
    seed: int = 0,
    *,
    num_scenes: int = 3,
    holdout: HoldOut | None = None,
    heldout_fraction: float = 0.5,
    progress: bool | Callable[[int], object] = False,
    generate_kwargs: dict[str, Any] | None = None,
    negative_previous: bool = False,
) -> dict[str, Any]:
    """Generate `stories` random Shapes stories with `pipe` and judge every scene.

    Story prompts come from ``random.Random(seed)`` via ``sample_story`` (colour and/or
    direction change between scenes); with a `holdout`, ``stories * heldout_fraction``
    (rounded half up) stories, spread evenly, are drawn from the held-out split
    (every scene held out), the others from the train split.  Story ``i`` is generated
    with ``seed + i``; with `negative_previous`, every scene after the first has the previous
    scene's prompt as its negative prompt.  `progress`: True for a tqdm bar, or a callable given 1 per
    story.  Returns a JSON-able dict: ``summary`` (``all``, ``seen``, ``heldout``:
    per-criterion scene rates plus ``stories``, ``story_correct``, the share of
    stories whose every scene is correct, and ``correct_ci95``, the 95% interval of the
    ``correct`` rate from resampling the stories, see `bootstrap_interval`) and
    ``stories_detail``.
    """
    rng, held_count, kwargs = _evaluation_plan(stories, num_scenes, heldout_fraction, seed, holdout, generate_kwargs)

    bar, step = _story_progress(progress, stories)

    verdicts: list[SceneVerdict] = []
    groups: dict[str, list[int]] = {"seen": [], "heldout": []}
    story_scenes: dict[str, list[list[bool]]] = {"seen": [], "heldout": []}  # scene verdicts per story
    detail = []
    try:
        for i in range(stories):
            split = "heldout" if _is_heldout(i, stories, held_count) else "train"
            group = "heldout" if split == "heldout" else "seen"
            prompts = sample_story(rng, num_scenes, holdout, split)
            lines = [p if j == 0 or not negative_previous else f'{p} [negative="{prompts[j - 1]}"]'
                     for j, p in enumerate(prompts)]
            video = pipe.generate(lines, seed=seed + i, progress=False, **kwargs)
            if [s.prompt for s in video.scenes] != prompts:
                raise ValueError(f"story {i}: the video's scenes {video.scenes!r} do not match its prompts {prompts!r}")
            story = judge_story(video.frames, video.scenes)
            groups[group].extend(range(len(verdicts), len(verdicts) + len(story)))
            verdicts.extend(story)
            ok = all(v.correct for v in story)
            story_scenes[group].append([v.correct for v in story])
            detail.append({"index": i, "split": split, "seed": seed + i, "prompts": prompts, "correct": ok,
                           "scenes": [v.to_dict() for v in story]})
            step(1)
    finally:
        if bar is not None:
            bar.close()

    return {
        "seed": seed,
        "stories": stories,
        "scenes_per_story": num_scenes,
        "heldout_stories": held_count,
        "holdout": None if holdout is None else {"combinations": [list(c) for c in holdout.combinations],
                                                  "phrasings": list(holdout.phrasings)},
        "generate": {**kwargs, **({"negative_previous": True} if negative_previous else {})},
        "summary": _story_summary(verdicts, groups, story_scenes),
        "stories_detail": detail,
    }


def _story_progress(progress: bool | Callable[[int], object], stories: int) -> tuple[Any, Callable[[int], object]]:
    """A tqdm bar over stories (progress=True) and its update, the caller's callable, or nothing."""
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=stories, desc="stories", unit="story", dynamic_ncols=True)
        return bar, bar.update
    if callable(progress):
        return None, progress
    return None, lambda _n: None


def _story_summary(verdicts: Sequence[SceneVerdict], groups: dict[str, list[int]],
                   story_scenes: dict[str, list[list[bool]]]) -> dict[str, Any]:
    """Scene rates per group, with each group's share of fully correct stories and its interval."""
    summary = summarise(verdicts, groups)
    story_scenes = {**story_scenes, "all": story_scenes["seen"] + story_scenes["heldout"]}
    for name, scenes in story_scenes.items():
        summary[name]["stories"] = len(scenes)
        summary[name]["story_correct"] = sum(map(all, scenes)) / len(scenes) if scenes else None
        interval = bootstrap_interval(scenes)
        summary[name]["correct_ci95"] = None if interval is None else list(interval)
    return summary


def format_shapes_table(result: dict[str, Any]) -> str:
    """The criterion rates of `evaluate_shapes` as a text table: seen | held-out | all."""
    summary = result["summary"]
    columns = [("seen", "seen"), ("held-out", "heldout"), ("all", "all")]

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    rows = [("stories", [str(summary[k]["stories"]) for _, k in columns]),
            ("scenes", [str(summary[k]["scenes"]) for _, k in columns])]
    rows += [(name, [pct(summary[k][name]) for _, k in columns]) for name in CRITERIA]

    def interval(value: list[float] | None) -> str:
        return "-" if value is None else f"{100 * value[0]:.0f}-{100 * value[1]:.0f}%"

    rows.append(("correct, 95% CI", [interval(summary[k].get("correct_ci95")) for _, k in columns]))
    rows.append(("story correct", [pct(summary[k]["story_correct"]) for _, k in columns]))
    width = max(len(name) for name, _ in rows)
    cell = max(8, *(len(v) for _, values in rows for v in values))
    lines = [f"{'':<{width}}  " + "  ".join(f"{title:>{cell}}" for title, _ in columns)]
    lines += [f"{name:<{width}}  " + "  ".join(f"{v:>{cell}}" for v in values) for name, values in rows]
    return "\n".join(lines)

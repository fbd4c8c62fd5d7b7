"""Sampling settings: the one definition of every knob that decides a generated video's frames.

`SamplingSettings` is frozen and checks itself when built, so a value is validated here and
nowhere else. A model's defaults come from the `sampling` section of its `pipeline.json` (and of
the training config); `Phenaki.generate(prompts, steps=12)` overrides by keyword through
`replace`; `phenaki-sample` and `phenaki-eval shapes` build one command-line option per field
(`phenaki.cli.options`); story lines override any field marked `scene` in brackets
(`a red ball rises [steps=8 candidates=1]`). A new setting is one field here, with its help text
and its check, and the code that uses it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from ..utils.typed import ConfigError, coerce, unknown_key

__all__ = ["SamplingSettings", "SettingsError", "SCENE_LENGTH_KEYS", "scene_setting_names"]

SCENE_LENGTH_KEYS: dict[str, type] = {"frames": int, "seconds": float}
"""Story-line keys that set one scene's length (new frames, or seconds at the run's fps)."""


class SettingsError(ConfigError):
    """A sampling setting is out of range, misspelt, or asks for a part the model lacks."""


Check = Callable[[Any], bool]


def _setting(default: Any, help: str, check: Check | None = None, rule: str = "", *, scene: bool = True) -> Any:
    """A settings field: its default, the help the CLI shows, and the rule its value must keep."""
    return field(default=default, metadata={"help": help, "check": check, "rule": rule, "scene": scene})


def _at_least(low: float) -> Check:
    return lambda v: math.isfinite(v) and v >= low


def _optional(check: Check) -> Check:
    return lambda v: v is None or check(v)


def _known_schedule(name: str) -> bool:
    from ..models.masking import SCHEDULES

    return name in SCHEDULES


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample: the MaskGIT decode loop, the choice among draws, and the story loop's lengths."""

    # the decode loop (phenaki.sampling.decode)
    steps: int = _setting(12, "Decoding steps per window.", _at_least(1), ">= 1")
    guidance: float = _setting(3.0, "Classifier-free guidance scale (1: the plain conditional model, 0: none).",
                               _at_least(0), ">= 0")
    guidance_ramp: bool = _setting(False, "Raise the guidance linearly from 1 at the first step to its scale at the "
                                          "last.")
    temperature: float = _setting(1.0, "Sampling temperature (0: greedy).", _at_least(0), ">= 0")
    choice_temperature: float | None = _setting(
        None, "Scale of the noise that varies which tokens are revealed first (default: the temperature).",
        _optional(_at_least(0)), ">= 0 or none")
    temporal_bias: float = _setting(0.0, "Confidence lost per token-frame, so earlier token-frames are revealed "
                                         "first (0: none; >= 100: strictly in order).", _at_least(0), ">= 0")
    use_critic: bool = _setting(False, "Rank each step's new tokens by the transformer's token critic.")
    critic_revise: bool = _setting(False, "Let the token critic also send back tokens revealed at earlier steps "
                                          "(needs use_critic).")
    schedule: str = _setting("cosine", "Mask schedule: how many tokens stay masked after each step.",
                             _known_schedule, "a known schedule")
    top_k: int | None = _setting(None, "Sample only among the k likeliest tokens.", _optional(_at_least(1)),
                                 ">= 1 or none")
    top_p: float | None = _setting(None, "Sample only from the smallest set of tokens holding this much "
                                         "probability.", _optional(lambda v: 0 < v <= 1), "in (0, 1] or none")
    # the choice among draws (phenaki.sampling.search)
    candidates: int = _setting(1, "Draw every window this many times and keep the draw the transformer finds "
                                  "likeliest (about this many times the sampling time).", _at_least(1), ">= 1")
    polish: float = _setting(0.0, "Then replace every drawn token the transformer finds less likely than this, "
                                  "given all the others, by its likeliest token there (0: off).",
                             lambda v: 0 <= v < 1, "in [0, 1)")
    polish_passes: int = _setting(1, "Polish this many times, each pass on the tokens the last one left.",
                                  _at_least(1), ">= 1")
    relevance_floor: float = _setting(0.0, "With candidates: pass over draws the text explains less than this share "
                                           "of the best draw (0: off).", lambda v: 0 <= v <= 1, "in [0, 1]")
    match_weight: float = _setting(0.0, "With candidates: add this many nats per unit of the model's text-video "
                                        "matcher similarity to each draw's likelihood (0: off).", _at_least(0),
                                   "finite and >= 0")
    negative_prompt: str | None = _setting(
        None, "Text the guidance pushes away from, in place of the empty text (default: none).",
        _optional(lambda v: 0 < len(v.strip()) <= 1000), "1 to 1000 characters, or none")
    # the story loop (phenaki.pipeline)
    first_frames: int = _setting(11, "Frames of the first scene (1: text-to-image).", _at_least(1), ">= 1",
                                 scene=False)
    scene_frames: int = _setting(6, "New frames of every later scene.", _at_least(1), ">= 1", scene=False)
    context_frames: int = _setting(5, "Frames of the video so far that prime the next scene.", _at_least(1),
                                   ">= 1", scene=False)
    fps: float = _setting(8.0, "Frames per second of the video.", lambda v: math.isfinite(v) and v > 0, "> 0",
                          scene=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, self.check(f.name, getattr(self, f.name)))
        if self.critic_revise and not self.use_critic:
            raise SettingsError("critic_revise needs use_critic: only the critic can judge revealed tokens")

    def replace(self, **changes: Any) -> "SamplingSettings":
        """These settings with some changed (None leaves a setting as it is); checked as a whole."""
        names = [f.name for f in dataclasses.fields(self)]
        for key in changes:
            if key not in names:
                raise SettingsError(f"unknown sampling setting '{key}'{unknown_key(key, names)}; "
                                    f"known: {', '.join(names)}")
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes) if changes else self

    @classmethod
    def check(cls, name: str, value: Any) -> Any:
        """One setting's value, coerced to its type and checked against its rule (alone: settings that
        depend on each other are checked when a whole `SamplingSettings` is built)."""
        f = _field(name)
        try:
            value = coerce(value, typing.get_type_hints(cls)[name], name)
        except ConfigError as exc:
            raise SettingsError(str(exc)) from None
        if f.metadata["check"] is not None and not f.metadata["check"](value):
            raise SettingsError(f"{name} must be {f.metadata['rule']}, got {value!r}")
        return value

    @classmethod
    def parse(cls, name: str, text: str) -> Any:
        """One setting from text (a story line, a form): numbers, true/false, none; then `check`ed."""
        lowered = text.strip().lower()
        value: Any = text.strip()
        if lowered in ("true", "false"):
            value = lowered == "true"
        elif lowered in ("none", "null"):
            value = None
        else:
            for number in (int, float):
                try:
                    value = number(lowered)
                    break
                except ValueError:
                    continue
        return cls.check(name, value)

    @classmethod
    def help(cls, name: str) -> str:
        """The help text of one setting (what the CLI shows)."""
        return _field(name).metadata["help"]


def _field(name: str) -> dataclasses.Field:
    for f in dataclasses.fields(SamplingSettings):
        if f.name == name:
            return f
    names = [f.name for f in dataclasses.fields(SamplingSettings)]
    raise SettingsError(f"unknown sampling setting '{name}'{unknown_key(name, names)}")


def scene_setting_names() -> list[str]:
    """The settings a story line may override for its own scene."""
    return [f.name for f in dataclasses.fields(SamplingSettings) if f.metadata["scene"]]

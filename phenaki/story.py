"""Story files: one scene per line, blank lines and `#` comments ignored.

A line may end with per-scene settings in square brackets, e.g.
`a red ball moves right [frames=12 guidance=4]`: the scene's length (`frames` new frames,
or `seconds`) and any sampling setting that `SamplingSettings` marks as a scene's own; a value
with spaces is quoted, as in `[negative="the blue ball"]` (`negative` is `negative_prompt`).
Parsing is strict so a typo never silently changes a video.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sampling.settings import (
    SCENE_LENGTH_KEYS,
    SamplingSettings,
    SettingsError,
    scene_setting_names,
)

SCENE_SETTINGS: tuple[str, ...] = (*SCENE_LENGTH_KEYS, *scene_setting_names())
SCENE_ALIASES = {"negative": "negative_prompt"}  # the short spelling story lines use

MAX_PROMPT_CHARS = 1000

_SETTINGS_RE = re.compile(r"\[([^\[\]]*)\]\s*$")


class StoryError(ValueError):
    """A story file or prompt line cannot be used; the message names file and line."""


@dataclass
class StoryScene:
    """One scene: its prompt and any settings that override the run's defaults."""

    prompt: str
    settings: dict[str, Any] = field(default_factory=dict)


def parse_scene_line(line: str, where: str = "prompt") -> StoryScene:
    """Split a line into prompt text and its optional trailing `[key=value ...]` settings."""
    text = line.strip()
    settings: dict[str, Any] = {}
    match = _SETTINGS_RE.search(text)
    if match:
        text = text[: match.start()].strip()
        try:
            items = shlex.split(match.group(1))
        except ValueError as exc:
            raise StoryError(f"{where}: settings in brackets: {exc} (quote a value with spaces: "
                             '[negative="the blue ball"])') from None
        for item in items:
            key, sep, value = item.partition("=")
            key = SCENE_ALIASES.get(key, key)
            if not sep or not value:
                raise StoryError(f"{where}: setting '{item}' must look like key=value")
            if key not in SCENE_SETTINGS:
                known = ", ".join(SCENE_SETTINGS)
                raise StoryError(f"{where}: unknown scene setting '{key}' (known: {known})")
            settings[key] = _scene_value(key, value, where)
    if not text:
        raise StoryError(f"{where}: the scene has no prompt text")
    if len(text) > MAX_PROMPT_CHARS:
        raise StoryError(f"{where}: prompt is {len(text)} characters (limit {MAX_PROMPT_CHARS})")
    return StoryScene(text, settings)


def parse_story(text: str, source: str = "<story>") -> list[StoryScene]:
    """Parse the text of a story file into scenes."""
    scenes = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        scenes.append(parse_scene_line(line, f"{source}:{number}"))
    if not scenes:
        raise StoryError(f"{source}: no scenes (every line is blank or a # comment)")
    return scenes


def read_story(path: str | Path) -> list[StoryScene]:
    """Read a UTF-8 story file; errors name the file (and the line when it is a line)."""
    path = Path(path)
    if not path.is_file():
        raise StoryError(f"story file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StoryError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_story(text, str(path))


def _scene_value(key: str, value: str, where: str) -> Any:
    """A bracket setting's value: a scene length (a positive number), or a checked sampling setting."""
    if key in SCENE_LENGTH_KEYS:
        kind = SCENE_LENGTH_KEYS[key]
        try:
            number = kind(value)
        except ValueError:
            raise StoryError(f"{where}: setting '{key}' needs a {kind.__name__}, got '{value}'") from None
        if number <= 0:
            raise StoryError(f"{where}: setting '{key}' must be positive, got '{value}'")
        return number
    try:
        return SamplingSettings.parse(key, value)
    except SettingsError as exc:
        raise StoryError(f"{where}: {exc}") from None

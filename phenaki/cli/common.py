"""What every command shares: logging, output checks, story input, Shapes hold-outs."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ..story import StoryError, StoryScene, parse_scene_line, read_story

OUTPUT_SUFFIXES = (".mp4", ".webm", ".gif", ".mkv")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


def check_output(out: Path) -> None:
    """An output is a video file by suffix, or a folder of PNG frames (no suffix)."""
    if out.suffix and out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise click.BadParameter(
            f"unsupported output '{out}': use {', '.join(OUTPUT_SUFFIXES)} "
            "or a folder name without suffix for PNG frames",
            param_hint="--out",
        )


def check_model_ref(value: str | None, hint: str = "--checkpoint") -> None:
    """A model is a folder or a Hub repo id (org/name); anything else is a usage error, before any loading."""
    if value is None or Path(value).is_dir():
        return
    from ..checkpoint import is_repo_id

    if not is_repo_id(value):
        raise click.BadParameter(f"model folder not found: {value} (give a folder or a Hub repo id org/name)",
                                 param_hint=hint)


def collect_scenes(prompts_file: Path | None, prompt: tuple[str, ...]) -> list[StoryScene]:
    """Scenes from `--prompts FILE` or repeated `--prompt`, never both."""
    if prompts_file is not None and prompt:
        raise click.UsageError("give --prompts FILE or --prompt TEXT, not both")
    if prompts_file is None and not prompt:
        raise click.UsageError("nothing to generate: give --prompts story.txt or --prompt TEXT")
    try:
        if prompts_file is not None:
            return read_story(prompts_file)
        return [parse_scene_line(p, f"--prompt {i + 1}") for i, p in enumerate(prompt)]
    except StoryError as exc:
        raise click.BadParameter(str(exc), param_hint="--prompts/--prompt") from None


def holdout_of(config_path: Path | None, domain: int = 1):
    """The Shapes hold-outs named by a config's data section for a domain version (None without a config)."""
    if config_path is None:
        return None
    from ..config import ConfigError, load_config
    from ..data import shapes, shapes2

    try:
        return (shapes2 if domain == 2 else shapes).holdout_from_config(load_config(config_path).data)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--config") from None

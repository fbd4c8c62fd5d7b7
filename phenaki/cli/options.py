"""Command-line options for every sampling setting, built from `SamplingSettings` itself.

Each field becomes `--field-name` (booleans `--name/--no-name`) with the field's help; a value
is checked by the field's own rule when the command line is read (exit 2 naming the option),
and an option left out keeps the model's default. A new setting needs nothing here.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable

import click

from ..sampling.settings import SamplingSettings, SettingsError

NAMES = tuple(f.name for f in dataclasses.fields(SamplingSettings))


def _click_type(hint: Any) -> Any:
    """The click type of a field's annotation (optional values are plain values left unset)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return {int: int, float: float, str: str}.get(args[0], str)


def _checked(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return SamplingSettings.check(name, value)
        except SettingsError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return callback


def sampling_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add one option per sampling setting to a click command (default: the model's own)."""
    hints = typing.get_type_hints(SamplingSettings)
    for name in reversed(NAMES):
        flag = "--" + name.replace("_", "-")
        help_text = SamplingSettings.help(name) + " [default: the model's]"
        if hints[name] is bool:
            option = click.option(f"{flag}/--no-{name.replace('_', '-')}", name, default=None, help=help_text)
        else:
            option = click.option(flag, name, type=_click_type(hints[name]), default=None, help=help_text,
                                  callback=_checked(name))
        fn = option(fn)
    return fn


def settings_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """Take the sampling settings out of a command's options: those given on the command line."""
    return {name: value for name in NAMES if (value := options.pop(name)) is not None}

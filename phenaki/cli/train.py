"""The options every `train/*.py` script shares, and loading its config."""

from __future__ import annotations

import functools
import logging
import os
import sys

import click

log = logging.getLogger(__name__)

SPIN_COUNT = "20000"


def limit_spinning() -> None:
    """Let training's OpenMP threads spin only briefly before they sleep while waiting.

    By default GNU OpenMP spins 300 000 times at every barrier, so a training run on all
    cores slows 4-10x as soon as anything else runs on the machine (an evaluation, a
    sampler). 20 000 spins cost nothing measurable alone and cut that to 2.5-3.5x;
    sleeping at once (`OMP_WAIT_POLICY=PASSIVE`) does better beside other work but costs
    the tokenizer 20% alone (BENCHMARKS.md, "Threads that sleep"). OpenMP reads this once,
    when torch loads it, so it must run before `import torch`; a wait policy or spin count
    already set in the environment is kept.
    """
    if "torch" in sys.modules:
        log.debug("torch is already loaded: OpenMP's spin count stays as it was")
        return
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)


def training_command(section: str):
    """Make a train script's `main` a click command with the options every trainer shares.

    The script imports its trainer inside `main`, so that torch loads after `limit_spinning`.
    """
    limit_spinning()
    options = [
        click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False)),
        click.option("--resume", default=None, help="'latest' or a checkpoint directory."),
        click.option("--output-dir", default=None, help=f"Overrides {section}.output_dir."),
        click.option("--set", "overrides", multiple=True, help="Config override KEY=VALUE (repeatable)."),
        click.option("--stop-at", type=int, default=None, help="Stop (with a checkpoint) at this step."),
        click.option("--export-to", default=None, type=click.Path(file_okay=False),
                     help="Train nothing: write the model of the --resume checkpoint (default latest; its EMA "
                          "weights) to this folder, as the final model would be. Safe while the run goes on."),
        click.option("--no-progress", is_flag=True, help="No progress bar (logs only)."),
        click.option("--log-with", default=None, metavar="TRACKERS",
                     help=f"Also report to experiment trackers: tensorboard, wandb, mlflow or all (comma-separated; "
                          f"overrides {section}.log_with)."),
        click.option("--dry-run", is_flag=True, help="Build the model on the meta device, print parameters, "
                     "tokens and memory per device; train nothing."),
        click.option("--world-size", type=int, default=None,
                     help="Processes for the --dry-run estimate (default: $WORLD_SIZE or 1)."),
    ]

    def wrap(fn):
        @functools.wraps(fn)
        def run(**kwargs):
            from ..integrity import CheckpointError

            try:
                return fn(**kwargs)
            except CheckpointError as exc:  # damaged or unwritable checkpoints: one line, exit 1
                raise click.ClickException(str(exc)) from None

        for option in reversed(options):
            run = option(run)
        return click.command(context_settings={"help_option_names": ["-h", "--help"]})(run)

    return wrap


def training_config(which: str, options: dict):
    """Logging, then the config with its overrides; with --dry-run, print the footprint and return None."""
    from ..config import ConfigError, load_config
    from ..training.base import parse_overrides

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = parse_overrides(options["overrides"])
        if options.get("log_with"):
            overrides[f"train_{which}.log_with"] = options["log_with"].replace(",", " ").split()
        config = load_config(options["config_path"], overrides)
    except (ConfigError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from None
    if options["dry_run"]:
        from ..training.footprint import footprint

        world = options["world_size"] or int(os.environ.get("WORLD_SIZE", "1"))
        click.echo("\n".join(footprint(config, which, world).lines()))
        return None
    return config

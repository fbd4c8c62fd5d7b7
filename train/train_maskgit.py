"""Train the text-conditioned MaskGIT transformer on a frozen tokenizer's ids.

    accelerate launch train/train_maskgit.py --config configs/shapes_demo.yaml \
        --tokenizer runs/shapes_demo/tokenizer/final
"""

import logging
import os

import click

from phenaki.config import ConfigError, load_config
from phenaki.footprint import footprint
from phenaki.maskgit_trainer import train_maskgit
from phenaki.training import parse_overrides


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--tokenizer", "tokenizer_dir", default=None, type=click.Path(file_okay=False),
              help="Trained tokenizer directory (default: <train_tokenizer.output_dir>/final).")
@click.option("--resume", default=None, help="'latest' or a checkpoint directory.")
@click.option("--output-dir", default=None, help="Overrides train_maskgit.output_dir.")
@click.option("--set", "overrides", multiple=True, help="Config override KEY=VALUE (repeatable).")
@click.option("--stop-at", type=int, default=None, help="Stop (with a checkpoint) at this step.")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs only).")
@click.option("--dry-run", is_flag=True,
              help="Build the model on the meta device, print parameters, tokens and memory per device; train nothing.")
@click.option("--world-size", type=int, default=None,
              help="Processes for the --dry-run estimate (default: $WORLD_SIZE or 1).")
def main(config_path, tokenizer_dir, resume, output_dir, overrides, stop_at, no_progress, dry_run, world_size):
    """Train the generator described by CONFIG's transformer, text and train_maskgit sections."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(config_path, parse_overrides(overrides))
    except (ConfigError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from None
    if dry_run:
        world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
        click.echo("\n".join(footprint(config, "maskgit", world).lines()))
        return
    final = train_maskgit(config, tokenizer_dir, resume=resume, stop_at=stop_at, output_dir=output_dir,
                          progress=not no_progress)
    click.echo(f"pipeline saved to {final}")


if __name__ == "__main__":
    main()

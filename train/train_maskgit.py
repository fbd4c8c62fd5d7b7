"""Train the text-conditioned MaskGIT transformer on a frozen tokenizer's ids.

    accelerate launch train/train_maskgit.py --config configs/shapes_demo.yaml \
        --tokenizer runs/shapes_demo/tokenizer/final
"""

import click

from phenaki.cli import training_command, training_config


@training_command("train_maskgit")
@click.option("--tokenizer", "tokenizer_dir", default=None, type=click.Path(file_okay=False),
              help="Trained tokenizer directory (default: <train_tokenizer.output_dir>/final).")
def main(tokenizer_dir, **options):
    """Train the generator described by CONFIG's transformer, text and train_maskgit sections."""
    # imported here, after training_command has limited OpenMP spinning, so torch loads after it
    from phenaki.training.maskgit_trainer import train_maskgit

    config = training_config("maskgit", options)
    if config is None:
        return
    final = train_maskgit(config, tokenizer_dir, resume=options["resume"], stop_at=options["stop_at"],
                          export_to=options["export_to"],
                          output_dir=options["output_dir"], progress=not options["no_progress"])
    click.echo(f"pipeline saved to {final}")


if __name__ == "__main__":
    main()

"""Train the text-video matcher that helps a trained pipeline choose among candidate windows.

    accelerate launch train/train_matcher.py --config configs/shapes_demo.yaml \
        --pipeline runs/shapes_demo/maskgit/final
    python train/export_model.py runs/shapes_demo/maskgit/final assets/my-model \
        --matcher runs/shapes_demo/matcher/final
"""

import click

from phenaki.cli import training_command, training_config


@training_command("train_matcher")
@click.option("--pipeline", "pipeline_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The trained pipeline the matcher serves (it reads that pipeline's text encoder).")
def main(pipeline_dir, **options):
    """Train the matcher described by CONFIG's matcher, data and train_matcher sections."""
    # imported here, after training_command has limited OpenMP spinning, so torch loads after it
    from phenaki.training.matcher_trainer import train_matcher

    config = training_config("matcher", options)
    if config is None:
        return
    try:
        final = train_matcher(config, pipeline_dir, resume=options["resume"], stop_at=options["stop_at"],
                              export_to=options["export_to"],
                              output_dir=options["output_dir"], progress=not options["no_progress"])
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"matcher saved to {final}")


if __name__ == "__main__":
    main()

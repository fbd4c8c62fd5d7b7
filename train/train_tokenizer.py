"""Train the C-ViViT tokenizer.

    accelerate launch train/train_tokenizer.py --config configs/shapes_demo.yaml
    python train/train_tokenizer.py --config configs/shapes_demo.yaml --resume latest
"""

import click

from phenaki.cli import training_command, training_config


@training_command("train_tokenizer")
def main(**options):
    """Train the tokenizer described by CONFIG's tokenizer, data and train_tokenizer sections."""
    # imported here, after training_command has limited OpenMP spinning, so torch loads after it
    from phenaki.training.tokenizer_trainer import train_tokenizer

    config = training_config("tokenizer", options)
    if config is None:
        return
    final = train_tokenizer(config, resume=options["resume"], stop_at=options["stop_at"],
                            export_to=options["export_to"],
                            output_dir=options["output_dir"], progress=not options["no_progress"])
    click.echo(f"tokenizer saved to {final}")


if __name__ == "__main__":
    main()

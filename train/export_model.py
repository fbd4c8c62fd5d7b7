"""Export a trained pipeline directory in half precision (e.g. for shipping in assets/).

    python train/export_model.py runs/shapes_demo/maskgit/final assets/phenaki-shapes --dtype bfloat16
"""

import click
import torch

from phenaki.pipeline import Phenaki

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": None}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.argument("target", type=click.Path(file_okay=False))
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="bfloat16", show_default=True)
def main(source, target, dtype):
    """Load SOURCE (a pipeline directory) and write it to TARGET with weights cast to DTYPE."""
    pipe = Phenaki.from_pretrained(source, device="cpu", dtype="float32")
    path = pipe.save_pretrained(target, dtype=DTYPES[dtype])
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    click.echo(f"wrote {path} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

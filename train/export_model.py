"""Export a trained pipeline directory in half precision (e.g. for shipping in assets/).

    python train/export_model.py runs/shapes_demo/maskgit/final assets/phenaki-shapes --dtype bfloat16

With `--tokenizer DIR` the pipeline's tokenizer is replaced by a decoder-only fine-tune of
it (`train_tokenizer.init_from` + `decoder_only`); any other tokenizer is refused.
With `--drop-block N` (repeatable) the transformer's block N is removed (layer dropping):
a deeper generator becomes a smaller one to train on with `train_maskgit.init_from`.
"""

import click
import torch

from phenaki.cvivit import CViViT
from phenaki.pipeline import Phenaki, PipelineError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": None}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.argument("target", type=click.Path(file_okay=False))
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="bfloat16", show_default=True)
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A decoder-only fine-tune of SOURCE's tokenizer to ship in its place.")
@click.option("--drop-block", "drop_blocks", type=int, multiple=True,
              help="Remove this transformer block (0 = the first); repeat for several.")
def main(source, target, dtype, tokenizer_dir, drop_blocks):
    """Load SOURCE (a pipeline directory) and write it to TARGET with weights cast to DTYPE."""
    pipe = Phenaki.from_pretrained(source, device="cpu", dtype="float32")
    if tokenizer_dir is not None:
        try:
            pipe = pipe.with_tokenizer_decoder(CViViT.from_pretrained(tokenizer_dir))
        except PipelineError as exc:
            raise click.ClickException(str(exc)) from None
    if drop_blocks:
        try:
            smaller = pipe.transformer.without_blocks(drop_blocks)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        pipe = pipe.with_transformer(smaller, dropped_blocks={"from_depth": pipe.transformer.config.depth,
                                                              "blocks": sorted(set(drop_blocks))})
    path = pipe.save_pretrained(target, dtype=DTYPES[dtype])
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    click.echo(f"wrote {path} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

"""Export a trained pipeline directory in half precision (e.g. for shipping in assets/).

    python train/export_model.py runs/shapes_demo/maskgit/final phenaki/pretrained/phenaki-shapes --dtype bfloat16

With `--tokenizer DIR` the pipeline's tokenizer is replaced by a decoder-only fine-tune of
it (`train_tokenizer.init_from` + `decoder_only`); any other tokenizer is refused.
With `--drop-block N` (repeatable) the transformer's block N is removed (layer dropping):
a deeper generator becomes a smaller one to train on with `train_maskgit.init_from`.
With `--matcher DIR` a matcher trained for SOURCE (`train/train_matcher.py --pipeline SOURCE`)
goes in (`matcher/`), and `--match-weight W` sets how much it counts when choosing among
candidates (`sampling.match_weight`). `--polish-passes N` sets `sampling.polish_passes`.
"""

import click
import torch

from phenaki.checkpoint import CheckpointError
from phenaki.models.cvivit import CViViT
from phenaki.models.matcher import TextVideoMatcher
from phenaki.pipeline import Phenaki, PipelineError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": None}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.argument("target", type=click.Path(file_okay=False))
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="bfloat16", show_default=True)
@click.option("--text-dtype", type=click.Choice(sorted(DTYPES)), default=None,
              help="Cast the text encoder to this instead (default: --dtype); float32 keeps it whole.")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A decoder-only fine-tune of SOURCE's tokenizer to ship in its place.")
@click.option("--drop-block", "drop_blocks", type=int, multiple=True,
              help="Remove this transformer block (0 = the first); repeat for several.")
@click.option("--matcher", "matcher_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A matcher trained for SOURCE (train/train_matcher.py --pipeline SOURCE) to ship with it.")
@click.option("--match-weight", type=click.FloatRange(min=0.0), default=None,
              help="Set sampling.match_weight in the export (default: SOURCE's setting).")
@click.option("--polish-passes", type=click.IntRange(min=1), default=None,
              help="Set sampling.polish_passes in the export (default: SOURCE's setting).")
def main(source, target, dtype, text_dtype, tokenizer_dir, drop_blocks, matcher_dir, match_weight, polish_passes):
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
    if matcher_dir is not None:
        try:
            pipe = pipe.with_matcher(TextVideoMatcher.from_pretrained(matcher_dir))
        except (PipelineError, CheckpointError) as exc:
            raise click.ClickException(str(exc)) from None
    if match_weight is not None:
        if match_weight > 0 and pipe.matcher is None:
            raise click.ClickException("--match-weight: the export has no matcher (give --matcher DIR)")
        pipe.sampling = pipe.sampling.replace(match_weight=match_weight)
    elif pipe.matcher is not None and pipe.sampling.match_weight <= 0:
        click.echo("note: the export has a matcher but sampling.match_weight is 0, so it is not used "
                   "(set it with --match-weight)", err=True)
    if polish_passes is not None:
        pipe.sampling = pipe.sampling.replace(polish_passes=polish_passes)
    path = pipe.save_pretrained(target, dtype=DTYPES[dtype], text_dtype=DTYPES[text_dtype or dtype])
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    click.echo(f"wrote {path} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

"""`phenaki-data`: write the Shapes domain, pack folders into tar shards, pre-tokenise shards."""

from __future__ import annotations

from pathlib import Path

import click

from .common import holdout_of, setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", "-v", is_flag=True)
def data_main(verbose: bool) -> None:
    """Datasets: write the Shapes domain, pack folders into tar shards, pre-tokenise shards."""
    setup_logging(verbose)


@data_main.command("shapes")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Dataset folder to write.")
@click.option("--num", type=click.IntRange(min=1), required=True, help="Number of clips.")
@click.option("--frames", "num_frames", type=click.IntRange(min=1), default=11, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["mp4", "webm", "gif", "png"]), default="mp4", show_default=True)
@click.option("--split", type=click.Choice(["train", "heldout", "all"]), default="all", show_default=True)
@click.option("--straddle-prob", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True)
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="Take hold-outs (and defaults) from this config's data section.")
def data_shapes(out: Path, num: int, num_frames: int, seed: int, fmt: str, split: str,
                straddle_prob: float, config_path: Path | None) -> None:
    """Write N Shapes clips + captions.jsonl, in the folder-dataset layout."""
    from tqdm import tqdm

    from ..data.export import export_shapes

    holdout = holdout_of(config_path)
    with tqdm(total=num, desc="shapes", unit="clip") as bar:
        root = export_shapes(out, num, num_frames=num_frames, seed=seed, fmt=fmt, split=split,
                             straddle_prob=straddle_prob, holdout=holdout, progress=bar.update)
    click.echo(f"wrote {num} clips and {root / 'captions.jsonl'}")


@data_main.command("shard")
@click.option("--in", "source", type=click.Path(path_type=Path), required=True,
              help="Folder dataset (captions.jsonl or captions.csv + files).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for shard-NNNNNN.tar files.")
@click.option("--per-shard", type=click.IntRange(min=1), default=1000, show_default=True, help="Samples per shard.")
def data_shard(source: Path, out: Path, per_shard: int) -> None:
    """Pack a folder dataset into WebVid-style tar shards (files copied byte for byte)."""
    from ..data.shards import write_shards
    from ..data.video_text import DatasetError

    try:
        shards = write_shards(source, out, samples_per_shard=per_shard)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {len(shards)} shard(s) to {out}")


@data_main.command("tokenize")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(path_type=Path), required=True,
              help="Trained tokenizer directory.")
@click.option("--in", "shards", required=True, help="Shards: a folder, a glob, or shard-{000000..000099}.tar.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Token cache folder to write.")
@click.option("--fps", type=click.FloatRange(min=0.0, min_open=True), default=8.0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--bf16/--fp32", default=True, show_default=True, help="Encode under bf16 autocast.")
def data_tokenize(tokenizer_dir: Path, shards: str, out: Path, fps: float, batch_size: int, device: str,
                  bf16: bool) -> None:
    """Run the frozen tokenizer once over tar shards; the MaskGIT trainer reads the result directly.

    Resumable: finished shards are kept when the command is run again after a crash.
    Train on it with `--set train_maskgit.tokens_cache=OUT`.
    """
    import torch
    from tqdm import tqdm

    from ..checkpoint import CheckpointError
    from ..data.video_text import DatasetError
    from ..models.cvivit import CViViT
    from ..training.token_cache import tokenize_shards
    from ..utils.torch_utils import resolve_device

    try:
        tokenizer = CViViT.from_pretrained(tokenizer_dir)
    except (CheckpointError, FileNotFoundError, OSError) as exc:
        raise click.ClickException(f"cannot load the tokenizer from {tokenizer_dir}: {exc}") from None
    try:
        dev = resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None
    with tqdm(desc="tokenise", unit="sample") as bar:
        try:
            path = tokenize_shards(tokenizer, shards, out, num_frames=tokenizer.config.num_frames, fps=fps,
                                   batch_size=batch_size, device=dev, autocast=torch.bfloat16 if bf16 else None,
                                   progress=bar.update)
        except DatasetError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"token cache written to {path}")

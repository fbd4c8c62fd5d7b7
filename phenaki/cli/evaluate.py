"""`phenaki-eval`: tokenizers (PSNR, codes, speed), Shapes faithfulness judged from pixels, object-token probes,
paired comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .common import check_model_ref, holdout_of, setup_logging
from .options import sampling_options, settings_overrides


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", "-v", is_flag=True)
def eval_main(verbose: bool) -> None:
    """Evaluate tokenizers and generators."""
    setup_logging(verbose)


@eval_main.command("tokenizer")
@click.option("--checkpoint", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Tokenizer directory (config.json + model.safetensors).")
@click.option("--data", required=True,
              help="A dataset folder (captions.jsonl/csv), or 'shapes' for fresh Shapes clips.")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="With --data shapes: use this config's held-out combinations.")
@click.option("--clips", type=click.IntRange(min=1), default=256, show_default=True,
              help="Clips to evaluate. Codebook usage counts the distinct codes these clips contain, so "
                   "a small sample understates it (mostly background tokens).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--fps", type=click.FloatRange(min=0.0, min_open=True), default=8.0, show_default=True)
@click.option("--seed", type=int, default=1234, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--bf16", is_flag=True, help="Run under bf16 autocast.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the figures here.")
def eval_tokenizer(checkpoint: Path, data: str, config_path: Path | None, clips: int, batch_size: int,
                   fps: float, seed: int, device: str, bf16: bool, json_out: Path | None) -> None:
    """PSNR, SSIM, codebook use, tokens per clip, bits per pixel and encode/decode speed."""
    import json

    import torch
    from tqdm import tqdm

    from ..checkpoint import CheckpointError
    from ..evaluation.ceiling import evaluate_tokenizer
    from ..models.cvivit import CViViT
    from ..utils.fileio import atomic_write_text

    try:
        model = CViViT.from_pretrained(checkpoint)
    except (CheckpointError, FileNotFoundError) as exc:
        raise click.BadParameter(str(exc), param_hint="--checkpoint") from None
    tok = model.config
    if data == "shapes":
        from ..data.shapes import ShapesDataset

        holdout = holdout_of(config_path)
        split = "heldout" if holdout is not None else "all"
        dataset = ShapesDataset(num_samples=clips, num_frames=tok.num_frames, seed=seed, holdout=holdout,
                                split=split)
    else:
        from ..data.video_text import DatasetError, VideoTextDataset

        try:
            dataset = VideoTextDataset(data, num_frames=tok.num_frames, fps=fps, size=tok.image_size, seed=seed)
        except DatasetError as exc:
            raise click.BadParameter(str(exc), param_hint="--data") from None
    from ..utils.torch_utils import resolve_device

    device = resolve_device(device)
    with tqdm(total=min(clips, len(dataset)), desc="evaluate", unit="clip") as bar:
        report = evaluate_tokenizer(model, dataset, num_clips=clips, batch_size=batch_size, device=device,
                                    autocast=torch.bfloat16 if bf16 else None, progress=bar.update)
    click.echo(report.table())
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(report.to_dict(), indent=2) + "\n")


@eval_main.command("shapes")
@click.option("--checkpoint", required=True,
              help="Pipeline directory (pipeline.json + tokenizer/ + transformer/ + text_encoder/).")
@click.option("--stories", type=click.IntRange(min=1), default=20, show_default=True,
              help="Random stories to generate and judge.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the story prompts; story i is generated with seed + i.")
@click.option("--scenes", type=click.IntRange(min=1), default=3, show_default=True, help="Scenes per story.")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Take held-out combinations and phrasings from this config's data section.")
@click.option("--domain", type=click.IntRange(1, 2), default=1, show_default=True,
              help="Shapes domain of the stories: 1 (one object, docs/shapes.md) or 2 (two objects and events, "
                   "docs/shapes2.md; also reports clauses per verb and scenes per clause count).")
@click.option("--heldout-fraction", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Share of stories drawn from the held-out split (needs --config naming hold-outs).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Also write rates and every verdict here.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@sampling_options
@click.option("--negative-previous", is_flag=True,
              help="Give every scene after the first its previous scene's prompt as the negative prompt.")
@click.option("--tokenizer-ceiling", is_flag=True,
              help="Judge the checkpoint's tokenizer reconstructions of the true renders, in the story loop's "
                   "windows, instead of generating: the most any generator on that tokenizer can score.")
def eval_shapes(**options: Any) -> None:
    """Text faithfulness on random Shapes stories, judged from pixels (seen vs held-out).

    With --domain 2 the stories are v2's (two objects, events), judged clause by clause.
    """
    import json

    import torch
    from tqdm import tqdm

    from ..evaluation.judge import evaluate_shapes, format_shapes_table
    from ..utils.fileio import atomic_write_text

    overrides = settings_overrides(options)
    checkpoint, config_path = options["checkpoint"], options["config_path"]
    check_model_ref(checkpoint)
    domain = options["domain"]
    if domain == 2:
        from ..evaluation.judge2 import evaluate_shapes2 as evaluate
        from ..evaluation.judge2 import format_shapes2_table as format_table
        from ..evaluation.judge2 import tokenizer_ceiling2 as Ceiling

    else:
        from ..evaluation.ceiling import TokenizerCeiling as Ceiling

        evaluate, format_table = evaluate_shapes, format_shapes_table
    holdout = holdout_of(config_path, domain)
    if config_path is not None and holdout is None:
        click.echo(f"note: {config_path} names no held-out combinations or phrasings; "
                   "every story comes from the train split", err=True)
    from ..checkpoint import CheckpointError
    from ..pipeline import Phenaki, PipelineError
    from ..sampling.settings import SettingsError

    try:
        pipe = Phenaki.from_pretrained(checkpoint, device=options["device"])
    except (PipelineError, CheckpointError, FileNotFoundError) as exc:
        raise click.BadParameter(str(exc), param_hint="--checkpoint") from None
    if options["tokenizer_ceiling"]:
        s = pipe.sampling.replace(**overrides)
        autocast = None if pipe.dtype == torch.float32 else pipe.dtype  # decode as the pipeline does
        pipe = Ceiling(pipe.tokenizer, first_frames=s.first_frames, scene_frames=s.scene_frames,
                                context_frames=s.context_frames, autocast=autocast)
    with tqdm(total=options["stories"], desc="stories", unit="story") as bar:
        try:
            result = evaluate(pipe, options["stories"], options["seed"], num_scenes=options["scenes"],
                                     holdout=holdout, heldout_fraction=options["heldout_fraction"],
                                     progress=bar.update, generate_kwargs=overrides,
                                     negative_previous=options["negative_previous"])
        except (PipelineError, SettingsError) as exc:
            raise click.ClickException(str(exc)) from None
    result["checkpoint"] = str(checkpoint)
    result["tokenizer_ceiling"] = options["tokenizer_ceiling"]
    click.echo(format_table(result))
    if options["json_out"] is not None:
        atomic_write_text(options["json_out"], json.dumps(result, indent=2) + "\n")
        click.echo(f"wrote {options['json_out']}")



@eval_main.command("probe")
@click.option("--checkpoint", required=True,
              help="Pipeline directory (pipeline.json + tokenizer/ + transformer/ + text_encoder/).")
@click.option("--domain", type=click.IntRange(1, 2), default=1, show_default=True,
              help="Shapes domain of the probed clips: 1 (docs/shapes.md) or 2 (docs/shapes2.md).")
@click.option("--clips", type=click.IntRange(min=1), default=48, show_default=True,
              help="One-scene clips to encode and probe.")
@click.option("--seed", type=int, default=5, show_default=True, help="Seed of the clips and of the random masks.")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Take held-out combinations and phrasings from this config's data section (for --split).")
@click.option("--split", type=click.Choice(["all", "train", "heldout"]), default="all", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the rows here.")
def eval_probe(checkpoint: str, domain: int, clips: int, seed: int, config_path: Path | None, split: str,
               batch_size: int, device: str, json_out: Path | None) -> None:
    """How well the transformer predicts the tokens that draw objects, from no context to nearly all.

    Scores argmax predictions of the non-background tokens of real Shapes clips under six maskings
    (docs/shapes2.md, "Measuring a model"): a run's progress on objects shows here long before whole scenes pass.
    """
    import json
    from dataclasses import asdict

    from ..checkpoint import CheckpointError
    from ..evaluation.token_probe import format_probe, probe_pipeline
    from ..pipeline import Phenaki, PipelineError
    from ..utils.fileio import atomic_write_text

    check_model_ref(checkpoint)
    holdout = holdout_of(config_path, domain)
    if split != "all" and holdout is None:
        raise click.BadParameter(f"--split {split} needs --config naming held-out combinations", param_hint="--split")
    try:
        pipe = Phenaki.from_pretrained(checkpoint, device=device)
    except (PipelineError, CheckpointError, FileNotFoundError) as exc:
        raise click.BadParameter(str(exc), param_hint="--checkpoint") from None
    rows = probe_pipeline(pipe, domain, clips=clips, seed=seed, batch_size=batch_size, holdout=holdout, split=split)
    click.echo(format_probe(rows))
    if json_out is not None:
        record = {"checkpoint": str(checkpoint), "domain": domain, "clips": clips, "seed": seed, "split": split,
                  "rows": [asdict(r) for r in rows]}
        atomic_write_text(json_out, json.dumps(record, indent=2) + "\n")
        click.echo(f"wrote {json_out}")


@eval_main.command("compare")
@click.argument("a_json", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.argument("b_json", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--rounds", type=click.IntRange(min=100), default=2000, show_default=True,
              help="Bootstrap rounds (stories redrawn together for both runs).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Also write the comparison here.")
def eval_compare(a_json: Path, b_json: Path, rounds: int, json_out: Path | None) -> None:
    """B against A: two `phenaki-eval shapes --json` results on the same stories, story by story."""
    import json

    from ..evaluation.comparison import (
        ComparisonError,
        compare_results,
        format_comparison,
    )
    from ..utils.fileio import atomic_write_text

    results = []
    for path in (a_json, b_json):
        try:
            results.append(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise click.BadParameter(f"{path} is not JSON: {exc}") from None
    try:
        comparison = compare_results(*results, rounds=rounds)
    except ComparisonError as exc:
        raise click.ClickException(f"cannot compare {a_json} and {b_json}: {exc}") from None
    comparison["a"]["file"], comparison["b"]["file"] = str(a_json), str(b_json)
    for name in ("a", "b"):
        run = comparison[name]
        click.echo(f"{name.upper()}: {run['file']} (checkpoint {run['checkpoint']}, settings {run['generate'] or 'defaults'})")
    for group in ("all", "seen", "heldout"):
        if comparison["groups"][group]["stories"]:
            click.echo("")
            click.echo(format_comparison(comparison, group))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(comparison, indent=2) + "\n")
        click.echo(f"wrote {json_out}")


@eval_main.command("verify")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("--record", is_flag=True,
              help="Write the folder's checksums anew instead (after a deliberate edit, e.g. of a model card).")
def eval_verify(folder: Path, record: bool) -> None:
    """Check a model or checkpoint folder against the checksums it was saved with."""
    import time

    from ..integrity import RECORD_NAME, IntegrityError, record_folder, verify_folder

    if not folder.is_dir():
        raise click.BadParameter(f"folder not found: {folder}", param_hint="FOLDER")
    if record:
        for sub in sorted(p.parent for p in folder.rglob(RECORD_NAME) if p.parent != folder):
            record_folder(sub)  # inner records first: the outer one covers them
        record_folder(folder)
        click.echo(f"wrote {folder / RECORD_NAME}")
        return
    started = time.perf_counter()
    try:
        count = verify_folder(folder)
    except IntegrityError as exc:
        raise click.ClickException(str(exc)) from None
    seconds = time.perf_counter() - started
    if count is None:
        click.echo(f"{folder}: no {RECORD_NAME} (saved before folders recorded their checksums): not verified",
                   err=True)
        return
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    click.echo(f"{folder}: {count} files ({size / 1e6:.1f} MB) match their checksums ({seconds:.2f} s)")


@eval_main.command("plot")
@click.argument("source", type=click.Path(path_type=Path, exists=True))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The PNG to write.")
def eval_plot(source: Path, out: Path) -> None:
    """Plot a training run's curves (its folder or metrics.jsonl) or a judged result (phenaki-eval shapes --json)."""
    import json

    from ..evaluation.plots import PlotError, plot_judged, plot_run

    try:
        if source.is_dir() or source.suffix == ".jsonl":
            path = plot_run(source, out)
        else:
            try:
                result = json.loads(source.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise PlotError(f"{source}: not JSON ({exc})") from None
            path = plot_judged(result, out)
    except PlotError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {path}")

"""Command-line tools: `phenaki-sample`, `phenaki-data`, `phenaki-eval`, `phenaki-web`.

The CLI is the one place that talks to people: clear messages, progress bars and
non-zero exits on bad input. The work itself lives in the library modules.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from .story import StoryError, StoryScene, parse_scene_line, read_story

OUTPUT_SUFFIXES = (".mp4", ".webm", ".gif", ".mkv")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _check_output(out: Path) -> None:
    """An output is a video file by suffix, or a folder of PNG frames (no suffix)."""
    if out.suffix and out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise click.BadParameter(
            f"unsupported output '{out}': use {', '.join(OUTPUT_SUFFIXES)} "
            "or a folder name without suffix for PNG frames",
            param_hint="--out",
        )


critic_option = click.option(
    "--critic", type=click.Choice(["off", "rank", "revise"]), default=None,
    help="Token critic (the checkpoint's sampling setting by default): off; rank the new tokens by it; "
         "revise: it may also send back tokens revealed earlier.")


candidates_option = click.option(
    "--candidates", type=click.IntRange(min=1), default=None,
    help="Draw every window this many times and keep the draw the transformer finds most likely "
         "(the checkpoint's sampling setting by default; about this many times the sampling time).")


polish_option = click.option(
    "--polish", type=click.FloatRange(0.0, 1.0, max_open=True), default=None,
    help="After drawing a window, replace every token the transformer finds less likely than this, "
         "given all the others, by its likeliest token there (the checkpoint's sampling setting by "
         "default; 0 = off).")


polish_passes_option = click.option(
    "--polish-passes", type=click.IntRange(min=1), default=None,
    help="Polish this many times, each pass on the tokens the last one left (the checkpoint's sampling "
         "setting by default).")


relevance_option = click.option(
    "--relevance-floor", type=click.FloatRange(0.0, 1.0), default=None,
    help="With candidates: pass over draws whose likelihood the text raises by less than this share of "
         "the best draw's (an empty window is as likely without the text); the checkpoint's sampling "
         "setting by default, 0 = off.")


match_option = click.option(
    "--match-weight", type=click.FloatRange(min=0.0), default=None,
    help="With candidates: add this many nats per unit of the model's matcher's text-video similarity to "
         "each draw's likelihood (the checkpoint's sampling setting by default; 0 = off; needs a model with "
         "a matcher).")


def critic_settings(choice: str | None) -> dict[str, bool | None]:
    """`--critic off|rank|revise` as `generate` arguments (None: the checkpoint's own setting)."""
    if choice is None:
        return {"use_critic": None, "critic_revise": None}
    return {"use_critic": choice != "off", "critic_revise": choice == "revise"}


def collect_scenes(prompts_file: Path | None, prompt: tuple[str, ...]) -> list[StoryScene]:
    """Scenes from `--prompts FILE` or repeated `--prompt`, never both."""
    if prompts_file is not None and prompt:
        raise click.UsageError("give --prompts FILE or --prompt TEXT, not both")
    if prompts_file is None and not prompt:
        raise click.UsageError("nothing to generate: give --prompts story.txt or --prompt TEXT")
    try:
        if prompts_file is not None:
            return read_story(prompts_file)
        return [parse_scene_line(p, f"--prompt {i + 1}") for i, p in enumerate(prompt)]
    except StoryError as exc:
        raise click.BadParameter(str(exc), param_hint="--prompts/--prompt") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), help="Story file: one scene per line.")
@click.option("--prompt", multiple=True, help="A scene prompt (repeatable) instead of a story file.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("story.mp4"), show_default=True,
              help="Output: .mp4, .webm, .gif, .mkv, or a folder for PNG frames.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Checkpoint directory (default: the demo model shipped in assets/).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Decoding steps per scene.")
@click.option("--guidance", type=click.FloatRange(min=0.0), default=None, help="Classifier-free guidance scale.")
@click.option("--temperature", type=click.FloatRange(min=0.0, min_open=True), default=None)
@click.option("--temporal-bias", type=click.FloatRange(min=0.0), default=None,
              help="Confidence lost per token-frame: earlier token-frames are revealed first (0 = none).")
@critic_option
@candidates_option
@polish_option
@polish_passes_option
@relevance_option
@match_option
@click.option("--fps", type=click.FloatRange(min=0.0, min_open=True), default=None)
@click.option("--first-frames", type=click.IntRange(min=1), default=None,
              help="Frames of the first scene (1 = text-to-image).")
@click.option("--scene-frames", type=click.IntRange(min=1), default=None, help="New frames per later scene.")
@click.option("--scene-seconds", type=click.FloatRange(min=0.0, min_open=True), default=None)
@click.option("--context", "context_frames", type=click.IntRange(min=1), default=None,
              help="Frames of the video so far kept as the prime of the next scene.")
@click.option("--prime", type=click.Path(path_type=Path), default=None, help="Video to continue.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto", show_default=True)
@click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--verbose", "-v", is_flag=True)
def sample_main(**kwargs) -> None:
    """Generate one video from a story: a list of prompts, one scene each."""
    _setup_logging(kwargs["verbose"])
    scenes = collect_scenes(kwargs["prompts_file"], kwargs["prompt"])
    out: Path = kwargs["out"]
    _check_output(out)
    if kwargs["scene_frames"] is not None and kwargs["scene_seconds"] is not None:
        raise click.UsageError("give --scene-frames or --scene-seconds, not both")
    if kwargs["prime"] is not None and not kwargs["prime"].exists():
        raise click.BadParameter(f"prime video not found: {kwargs['prime']}", param_hint="--prime")
    if kwargs["checkpoint"] is not None and not kwargs["checkpoint"].is_dir():
        raise click.BadParameter(f"checkpoint directory not found: {kwargs['checkpoint']}",
                                 param_hint="--checkpoint")
    from .checkpoint import CheckpointError
    from .pipeline import PipelineError, run_cli_sample
    from .text import TextEncoderError
    from .video import VideoError

    kwargs.update(critic_settings(kwargs.pop("critic")))
    try:
        run_cli_sample(scenes, **kwargs)
    except (PipelineError, CheckpointError, TextEncoderError, VideoError) as exc:
        raise click.ClickException(str(exc)) from None


def _holdout(config_path: Path | None):
    """The Shapes hold-outs named by a config's data section (None without a config)."""
    if config_path is None:
        return None
    from .config import ConfigError, load_config
    from .data.shapes import holdout_from_config

    try:
        return holdout_from_config(load_config(config_path).data)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--config") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", "-v", is_flag=True)
def data_main(verbose: bool) -> None:
    """Datasets: write the Shapes domain, pack folders into tar shards, pre-tokenise shards."""
    _setup_logging(verbose)


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

    from .data.export import export_shapes

    holdout = _holdout(config_path)
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
    from .data.video_text import DatasetError
    from .data.shards import write_shards

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

    from .checkpoint import CheckpointError
    from .cvivit import CViViT
    from .data.video_text import DatasetError
    from .token_cache import tokenize_shards
    from .torch_utils import resolve_device

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", "-v", is_flag=True)
def eval_main(verbose: bool) -> None:
    """Evaluate tokenizers and generators."""
    _setup_logging(verbose)


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

    from .checkpoint import CheckpointError
    from .cvivit import CViViT
    from .evaluation import evaluate_tokenizer
    from .fileio import atomic_write_text

    try:
        model = CViViT.from_pretrained(checkpoint)
    except (CheckpointError, FileNotFoundError) as exc:
        raise click.BadParameter(str(exc), param_hint="--checkpoint") from None
    tok = model.config
    if data == "shapes":
        from .data.shapes import ShapesDataset

        holdout = _holdout(config_path)
        split = "heldout" if holdout is not None else "all"
        dataset = ShapesDataset(num_samples=clips, num_frames=tok.num_frames, seed=seed, holdout=holdout,
                                split=split)
    else:
        from .data.video_text import DatasetError, VideoTextDataset

        try:
            dataset = VideoTextDataset(data, num_frames=tok.num_frames, fps=fps, size=tok.image_size, seed=seed)
        except DatasetError as exc:
            raise click.BadParameter(str(exc), param_hint="--data") from None
    from .torch_utils import resolve_device

    device = resolve_device(device)
    with tqdm(total=min(clips, len(dataset)), desc="evaluate", unit="clip") as bar:
        report = evaluate_tokenizer(model, dataset, num_clips=clips, batch_size=batch_size, device=device,
                                    autocast=torch.bfloat16 if bf16 else None, progress=bar.update)
    click.echo(report.table())
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(report.to_dict(), indent=2) + "\n")


@eval_main.command("shapes")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True,
              help="Pipeline directory (pipeline.json + tokenizer/ + transformer/ + text_encoder/).")
@click.option("--stories", type=click.IntRange(min=1), default=20, show_default=True,
              help="Random stories to generate and judge.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the story prompts; story i is generated with seed + i.")
@click.option("--scenes", type=click.IntRange(min=1), default=3, show_default=True, help="Scenes per story.")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Take held-out combinations and phrasings from this config's data section.")
@click.option("--heldout-fraction", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Share of stories drawn from the held-out split (needs --config naming hold-outs).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Also write rates and every verdict here.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Override decoding steps per scene.")
@click.option("--guidance", type=click.FloatRange(min=0.0), default=None, help="Override the guidance scale.")
@click.option("--temperature", type=click.FloatRange(min=0.0), default=None,
              help="Override the sampling temperature (0 = greedy).")
@click.option("--temporal-bias", type=click.FloatRange(min=0.0), default=None,
              help="Override the temporal bias (earlier token-frames revealed first; 0 = none).")
@critic_option
@candidates_option
@polish_option
@polish_passes_option
@relevance_option
@match_option
@click.option("--tokenizer-ceiling", is_flag=True,
              help="Judge the checkpoint's tokenizer reconstructions of the true renders, in the story loop's "
                   "windows, instead of generating: the most any generator on that tokenizer can score.")
def eval_shapes(checkpoint: Path, stories: int, seed: int, scenes: int, config_path: Path | None,
                heldout_fraction: float, json_out: Path | None, device: str, steps: int | None,
                guidance: float | None, temperature: float | None, temporal_bias: float | None,
                critic: str | None, candidates: int | None, polish: float | None, polish_passes: int | None,
                relevance_floor: float | None, match_weight: float | None, tokenizer_ceiling: bool) -> None:
    """Text faithfulness on random Shapes stories, judged from pixels (seen vs held-out)."""
    import json

    import torch

    from tqdm import tqdm

    from .fileio import atomic_write_text
    from .judge import evaluate_shapes, format_shapes_table

    if not checkpoint.is_dir():
        raise click.BadParameter(f"checkpoint directory not found: {checkpoint}", param_hint="--checkpoint")
    holdout = _holdout(config_path)
    if config_path is not None and holdout is None:
        click.echo(f"note: {config_path} names no held-out combinations or phrasings; "
                   "every story comes from the train split", err=True)
    from .checkpoint import CheckpointError
    from .pipeline import Phenaki, PipelineError

    try:
        pipe = Phenaki.from_pretrained(checkpoint, device=device)
    except (PipelineError, CheckpointError, FileNotFoundError) as exc:
        raise click.BadParameter(str(exc), param_hint="--checkpoint") from None
    if tokenizer_ceiling:
        from .evaluation import TokenizerCeiling

        s = pipe.sampling
        autocast = None if pipe.dtype == torch.float32 else pipe.dtype  # decode as the pipeline does
        pipe = TokenizerCeiling(pipe.tokenizer, first_frames=s.first_frames, scene_frames=s.scene_frames,
                                context_frames=s.context_frames, autocast=autocast)
    with tqdm(total=stories, desc="stories", unit="story") as bar:
        result = evaluate_shapes(pipe, stories, seed, num_scenes=scenes, holdout=holdout,
                                 heldout_fraction=heldout_fraction, progress=bar.update,
                                 generate_kwargs={"steps": steps, "guidance": guidance,
                                                  "temperature": temperature, "temporal_bias": temporal_bias,
                                                  "candidates": candidates, "polish": polish,
                                                  "polish_passes": polish_passes,
                                                  "relevance_floor": relevance_floor, "match_weight": match_weight,
                                                  **critic_settings(critic)})
    result["checkpoint"] = str(checkpoint)
    result["tokenizer_ceiling"] = tokenizer_ceiling
    click.echo(format_shapes_table(result))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(result, indent=2) + "\n")
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

    from .comparison import ComparisonError, compare_results, format_comparison
    from .fileio import atomic_write_text

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


def main() -> None:  # pragma: no cover - `python -m phenaki.cli`
    sample_main()


if __name__ == "__main__":  # pragma: no cover
    main()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Checkpoint directory (default: the demo model shipped in assets/).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (0.0.0.0 = every one).")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto", show_default=True)
@click.option("--output-dir", type=click.Path(path_type=Path), default=None,
              help="Where request folders go (default: a fresh temporary folder).")
@click.option("--max-scenes", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max-line-chars", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--max-frames", type=click.IntRange(min=1), default=128, show_default=True,
              help="Most frames one story may produce.")
@click.option("--max-steps", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="Generations running at once; later requests wait in the queue.")
@click.option("--queue-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--keep-outputs", type=click.IntRange(min=1), default=32, show_default=True,
              help="Request folders kept; older ones are deleted.")
@click.option("--verbose", "-v", is_flag=True)
def web_main(**kw) -> None:
    """Serve the story-to-video web demo (needs the web extra: pip install -e ".[web]")."""
    _setup_logging(kw["verbose"])
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise click.ClickException('the web demo needs Gradio: pip install -e ".[web]"') from None
    if kw["checkpoint"] is not None and not kw["checkpoint"].is_dir():
        raise click.BadParameter(f"checkpoint directory not found: {kw['checkpoint']}", param_hint="--checkpoint")
    from .checkpoint import CheckpointError
    from .pipeline import PipelineError
    from .web import WebLimits, serve

    limits = WebLimits(max_scenes=kw["max_scenes"], max_line_chars=kw["max_line_chars"],
                       max_total_frames=kw["max_frames"], max_steps=kw["max_steps"],
                       concurrency=kw["concurrency"], queue_size=kw["queue_size"], keep_outputs=kw["keep_outputs"])
    click.echo("loading the model ...")
    try:
        serve(str(kw["checkpoint"]) if kw["checkpoint"] else None, host=kw["host"], port=kw["port"],
              device=kw["device"], dtype=kw["dtype"], output_dir=kw["output_dir"], limits=limits)
    except (PipelineError, CheckpointError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # e.g. the port is taken
        raise click.ClickException(f"cannot serve on {kw['host']}:{kw['port']}: {exc}") from None
    except (ValueError, RuntimeError) as exc:  # e.g. --device cuda without CUDA
        raise click.ClickException(str(exc)) from None


def training_command(section: str):
    """Make a train script's `main` a click command with the options every trainer shares."""
    options = [
        click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False)),
        click.option("--resume", default=None, help="'latest' or a checkpoint directory."),
        click.option("--output-dir", default=None, help=f"Overrides {section}.output_dir."),
        click.option("--set", "overrides", multiple=True, help="Config override KEY=VALUE (repeatable)."),
        click.option("--stop-at", type=int, default=None, help="Stop (with a checkpoint) at this step."),
        click.option("--no-progress", is_flag=True, help="No progress bar (logs only)."),
        click.option("--dry-run", is_flag=True, help="Build the model on the meta device, print parameters, "
                     "tokens and memory per device; train nothing."),
        click.option("--world-size", type=int, default=None,
                     help="Processes for the --dry-run estimate (default: $WORLD_SIZE or 1)."),
    ]

    def wrap(fn):
        for option in reversed(options):
            fn = option(fn)
        return click.command(context_settings={"help_option_names": ["-h", "--help"]})(fn)

    return wrap


def training_config(which: str, options: dict):
    """Logging, then the config with its overrides; with --dry-run, print the footprint and return None."""
    import os

    from .config import ConfigError, load_config
    from .training import parse_overrides

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(options["config_path"], parse_overrides(options["overrides"]))
    except (ConfigError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from None
    if options["dry_run"]:
        from .footprint import footprint

        world = options["world_size"] or int(os.environ.get("WORLD_SIZE", "1"))
        click.echo("\n".join(footprint(config, which, world).lines()))
        return None
    return config

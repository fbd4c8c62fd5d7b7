"""`phenaki-sample`: a story file (or prompts) in, one video and its JSON sidecar out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from ..config import KERNELS
from .common import check_model_ref, check_output, collect_scenes, setup_logging
from .options import sampling_options, settings_overrides


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), help="Story file: one scene per line.")
@click.option("--prompt", multiple=True, help="A scene prompt (repeatable) instead of a story file.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("story.mp4"), show_default=True,
              help="Output: .mp4, .webm, .gif, .mkv, or a folder for PNG frames.")
@click.option("--checkpoint", default=None,
              help="Model: a folder or a Hub repo id (default: the demo model shipped with the package).")
@click.option("--revision", default=None, help="With a Hub repo id: the commit, branch or tag to load.")
@click.option("--seed", type=int, default=0, show_default=True)
@sampling_options
@click.option("--scene-seconds", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Length of every later scene in seconds (instead of --scene-frames).")
@click.option("--prime", type=click.Path(path_type=Path), default=None, help="Video to continue.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True)
@click.option("--kernels", type=click.Choice(list(KERNELS)), default=None,
              help="Attention kernel and threads: auto measures the fastest on this machine once and caches it "
                   "(default; PHENAKI_KERNELS), sdpa / explicit force a path, default takes the built-in rule.")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the transformer and tokenizer first: about 90 s on a CPU, so it pays off only "
                   "over many stories in one process.")
@click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--verbose", "-v", is_flag=True)
def sample_main(**options: Any) -> None:
    """Generate one video from a story: a list of prompts, one scene each."""
    setup_logging(options["verbose"])
    scenes = collect_scenes(options["prompts_file"], options["prompt"])
    check_output(options["out"])
    if options["scene_frames"] is not None and options["scene_seconds"] is not None:
        raise click.UsageError("give --scene-frames or --scene-seconds, not both")
    if options["prime"] is not None and not options["prime"].exists():
        raise click.BadParameter(f"prime video not found: {options['prime']}", param_hint="--prime")
    check_model_ref(options["checkpoint"])
    from ..checkpoint import CheckpointError
    from ..kernels import KernelError
    from ..models.text import TextEncoderError
    from ..pipeline import PipelineError, UnreadablePromptError
    from ..sampling.settings import SettingsError
    from ..video import VideoError

    try:
        _run(scenes, options)
    except UnreadablePromptError as exc:
        raise click.BadParameter(str(exc), param_hint="--prompts/--prompt/--negative-prompt") from None
    except (PipelineError, CheckpointError, SettingsError, TextEncoderError, VideoError, KernelError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("interrupted: no video written", err=True)
        raise SystemExit(130) from None


def _run(scenes: list, options: dict[str, Any]) -> None:
    """Load, generate, save, and report."""
    from ..pipeline import Phenaki
    from ..video import sidecar_path

    started = time.perf_counter()
    command = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items() if k != "verbose"}
    overrides = settings_overrides(options)
    pipe = Phenaki.from_pretrained(options["checkpoint"], revision=options["revision"], device=options["device"],
                                   dtype=options["dtype"], kernels=options["kernels"], compile=options["compile_"])
    texts = [s.prompt for s in scenes] + [s.settings.get("negative_prompt") for s in scenes]
    for prompt, words in pipe.unknown_words([t for t in texts + [overrides.get("negative_prompt")] if t]).items():
        click.echo(f"warning: not in the model's vocabulary, left out of {prompt!r}: {', '.join(words)}", err=True)
    result = pipe.generate(scenes, seed=options["seed"], prime=options["prime"], num_samples=options["num_samples"],
                           scene_seconds=options["scene_seconds"], progress=True, **overrides)
    videos = result if isinstance(result, list) else [result]
    out = Path(options["out"])
    for i, video in enumerate(videos):
        target = out if len(videos) == 1 else out.with_name(f"{out.stem}-{i}{out.suffix}")
        video.metadata["command"] = command
        video.metadata["sample_index"] = i
        video.save(target)
        click.echo(f"wrote {target} ({video.num_frames} frames, {video.num_frames / video.fps:.2f} s at "
                   f"{video.fps:g} fps) and {sidecar_path(target)}")
    click.echo(f"{len(scenes)} scene(s) in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":  # python -m phenaki.cli.sample
    sample_main()

"""`phenaki-web`: serve the story-to-video web demo."""

from __future__ import annotations

from pathlib import Path

import click

from .common import setup_logging


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
@click.option("--max-steps", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most decoding steps a request may ask for.")
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="Generations running at once; later requests wait in the queue.")
@click.option("--queue-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Requests that may wait; when it is full, new ones are turned away at once.")
@click.option("--keep-outputs", type=click.IntRange(min=1), default=32, show_default=True,
              help="Request folders kept; older ones are deleted, never one still being written.")
@click.option("--verbose", "-v", is_flag=True)
def web_main(**kw) -> None:
    """Serve the story-to-video web demo (needs the web extra: pip install -e ".[web]").

    The page's HTTP API has one endpoint, /generate (gradio_client: api_name="/generate").
    """
    setup_logging(kw["verbose"])
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise click.ClickException('the web demo needs Gradio: pip install -e ".[web]"') from None
    if kw["checkpoint"] is not None and not kw["checkpoint"].is_dir():
        raise click.BadParameter(f"checkpoint directory not found: {kw['checkpoint']}", param_hint="--checkpoint")
    from ..checkpoint import CheckpointError
    from ..pipeline import PipelineError
    from ..web import WebLimits, serve

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

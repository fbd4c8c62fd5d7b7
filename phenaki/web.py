"""The web demo: write a story, watch it become a video (`phenaki-web`, Gradio).

Gradio is the convention for model demos (Hugging Face Spaces) and gives what a
demo needs without hand-written web code: a request queue with a concurrency
limit, progress reporting, video playback and file downloads.

Safety and sharing:
- every request writes into its own folder under the output root; the oldest
  folders are removed once more than `keep_outputs` exist;
- the queue runs at most `concurrency` generations at once and holds at most
  `queue_size` waiting requests;
- user text is only ever parsed as a story (prompt + `[key=value]` settings), never
  executed; the number of scenes, line length, total frames and steps are limited;
- bad input becomes a message in the page (`gradio.Error`), never a stack trace,
  and the server keeps serving.
"""

from __future__ import annotations

import html
import logging
import math
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .story import StoryError, StoryScene, parse_story

log = logging.getLogger(__name__)

EXAMPLES = [
    "a red ball moves right\nthe blue ball rises\nthe green ball moves left",
    "the yellow square falls\na yellow box slides left\nthe magenta block goes up",
    "a white triangle moves to the right\nthe cyan triangle sinks",
    "a green disc rises\nthe red disc moves left\nthe blue disc falls\na white disc goes right",
]


class RequestError(ValueError):
    """A request the demo refuses; the message is shown in the page as it is."""


@dataclass
class WebLimits:
    """What one request may ask for (all configurable on the command line)."""

    max_scenes: int = 8
    max_line_chars: int = 200
    max_total_frames: int = 128
    max_steps: int = 64
    max_seed: int = 2**31 - 1
    concurrency: int = 1
    queue_size: int = 16
    keep_outputs: int = 32
    display_scale: int = 4  # nearest-neighbour upscaling of the small demo frames


@dataclass
class Request:
    """A validated request: the scenes and the generation settings."""

    scenes: list[StoryScene]
    seed: int
    steps: int
    guidance: float
    scene_seconds: float | None
    fps: float
    settings: dict[str, Any] = field(default_factory=dict)


def parse_request(story: str, seed: float, steps: float, guidance: float, scene_seconds: float | None,
                  fps: float, limits: WebLimits, *, model_fps: float, first_frames: int, scene_frames: int,
                  temporal_patch: int) -> Request:
    """Validate everything the page sends; raise RequestError naming the problem."""
    text = (story or "").strip()
    if not text:
        raise RequestError("The story is empty: write one scene per line, e.g. 'a red ball moves right'.")
    for number, line in enumerate(text.splitlines(), start=1):
        if len(line.strip()) > limits.max_line_chars:
            raise RequestError(f"Line {number} is {len(line.strip())} characters long; the limit is "
                               f"{limits.max_line_chars}.")
    try:
        scenes = parse_story(text, "line")
    except StoryError as exc:
        message = str(exc)
        raise RequestError(message[0].upper() + message[1:]) from None
    if len(scenes) > limits.max_scenes:
        raise RequestError(f"The story has {len(scenes)} scenes; this server allows at most {limits.max_scenes}.")
    if seed is None or not float(seed).is_integer() or not 0 <= seed <= limits.max_seed:
        raise RequestError(f"The seed must be a whole number from 0 to {limits.max_seed}.")
    if steps is None or not float(steps).is_integer() or not 1 <= steps <= limits.max_steps:
        raise RequestError(f"Steps must be a whole number from 1 to {limits.max_steps}.")
    if guidance is None or not math.isfinite(guidance) or not 0 <= guidance <= 50:
        raise RequestError("Guidance must be between 0 and 50.")
    if fps is None or not math.isfinite(fps) or not 1 <= fps <= 60:
        raise RequestError("Frames per second must be between 1 and 60.")
    if scene_seconds is not None and not (math.isfinite(scene_seconds) and scene_seconds > 0):
        raise RequestError("Scene length must be a positive number of seconds.")
    for number, scene in enumerate(scenes, start=1):
        for key, value in scene.settings.items():
            if not math.isfinite(float(value)):
                raise RequestError(f"Scene {number}: {key} must be a finite number.")
        if scene.settings.get("steps", 1) > limits.max_steps:
            raise RequestError(f"Scene {number}: steps={scene.settings['steps']} is above this server's limit "
                               f"of {limits.max_steps}.")
        if scene.settings.get("guidance", 0) > 50 or scene.settings.get("temperature", 0) > 10:
            raise RequestError(f"Scene {number}: guidance must be at most 50 and temperature at most 10.")
    # the frame budget: first scene + later scenes (per-line [frames=] / [seconds=] override)
    total = 0
    for index, scene in enumerate(scenes):
        if "frames" in scene.settings:
            frames = int(scene.settings["frames"])
        elif "seconds" in scene.settings:
            frames = round(float(scene.settings["seconds"]) * model_fps)
        elif index == 0:
            frames = first_frames
        elif scene_seconds:
            frames = max(temporal_patch, round(scene_seconds * model_fps))
        else:
            frames = scene_frames
        total += frames
    if total > limits.max_total_frames:
        raise RequestError(f"The story would have about {total} frames; this server allows at most "
                           f"{limits.max_total_frames}. Use fewer or shorter scenes.")
    return Request(scenes, int(seed), int(steps), float(guidance), scene_seconds, float(fps))


REQUEST_DIR = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")


class OutputStore:
    """Per-request folders in `<root>/phenaki-web/`; the oldest are removed beyond `keep`.

    Only that subfolder is served and pruned, and only folders named like request
    folders are ever deleted, so pointing `--output-dir` at a folder with other
    files in it neither exposes nor removes them.
    """

    def __init__(self, root: str | Path | None, keep: int) -> None:
        base = Path(root) if root else Path(tempfile.mkdtemp(prefix="phenaki-web-"))
        self.root = base / "phenaki-web"
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, keep)
        self._lock = threading.Lock()

    def new(self) -> Path:
        with self._lock:
            path = self.root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
            path.mkdir()
            self._prune()
            return path

    def _prune(self) -> None:
        folders = sorted((p for p in self.root.iterdir() if p.is_dir() and REQUEST_DIR.match(p.name)),
                         key=lambda p: (p.stat().st_mtime, p.name))
        for old in folders[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)


class StoryService:
    """Turns validated requests into files; one instance per server, shared by all requests."""

    def __init__(self, pipe: Any, limits: WebLimits, outputs: OutputStore) -> None:
        self.pipe = pipe
        self.limits = limits
        self.outputs = outputs

    def request(self, story: str, seed: float, steps: float, guidance: float, scene_seconds: float | None,
                fps: float) -> Request:
        s = self.pipe.sampling
        return parse_request(story, seed, steps, guidance, scene_seconds or None, fps, self.limits,
                             model_fps=self.pipe.fps, first_frames=s.first_frames, scene_frames=s.scene_frames,
                             temporal_patch=self.pipe.temporal_patch)

    def generate(self, request: Request, progress: Callable[[float, str], object] | None = None) -> dict[str, Path]:
        """Generate, then write story.mp4, story.gif and story.json into a fresh folder."""
        from .video import Video

        def report(done: int, total: int, scene: int, scenes: int) -> None:  # steps done of the whole story
            if progress is not None:
                progress(done / max(1, total), f"scene {scene}/{scenes}")

        video = self.pipe.generate(request.scenes, seed=request.seed, steps=request.steps,
                                   guidance=request.guidance, scene_seconds=request.scene_seconds, progress=report)
        scale = max(1, self.limits.display_scale)
        frames = video.frames
        if scale > 1:
            frames = frames.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
        shown = Video(frames, fps=request.fps, scenes=video.scenes,
                      metadata={**video.metadata, "display_scale": scale, "source": "phenaki-web"})
        folder = self.outputs.new()
        mp4 = shown.save(folder / "story.mp4")
        gif = shown.save(folder / "story.gif")  # the same sidecar, story.json, describes both
        sidecar = folder / "story.json"
        return {"mp4": mp4, "gif": gif, "json": sidecar, "frames": video.num_frames}  # type: ignore[dict-item]


def build_app(service: StoryService, model_name: str) -> Any:
    """The Gradio page (`model_name` is shown: a name, never a path of the serving machine)."""
    import gradio as gr

    s = service.pipe.sampling
    limits = service.limits

    def run(story, seed, steps, guidance, scene_seconds, fps, progress=gr.Progress()):
        try:
            request = service.request(story, seed, steps, guidance, scene_seconds, fps)
        except RequestError as exc:
            raise gr.Error(html.escape(str(exc)), print_exception=False) from None
        progress(0.0, desc="starting")
        try:
            files = service.generate(request, lambda fraction, text: progress(fraction, desc=text))
        except Exception as exc:  # noqa: BLE001 - the page gets one line, the log the details
            log.exception("generation failed")
            raise gr.Error(html.escape(f"Generation failed: {exc}"), print_exception=False) from None
        frames = files["frames"]
        summary = (f"{len(request.scenes)} scene(s), {frames} frames, {frames / request.fps:.2f} s at "
                   f"{request.fps:g} fps, seed {request.seed}")
        return str(files["mp4"]), [str(files["mp4"]), str(files["gif"]), str(files["json"])], summary

    # Gradio copies returned files into its cache: clear entries older than an hour, hourly
    with gr.Blocks(title="Phenaki: story to video", delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"# Phenaki: story to video\nOne scene per line; each scene continues the last. "
                    f"Model: `{model_name}`")
        with gr.Row():
            with gr.Column():
                story = gr.Textbox(label="Story (one scene per line)", lines=6, value=EXAMPLES[0],
                                   elem_id="story")
                with gr.Row():
                    seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, elem_id="seed")
                    steps = gr.Slider(1, limits.max_steps, value=min(s.steps, limits.max_steps), step=1, label="Steps", elem_id="steps")
                with gr.Row():
                    guidance = gr.Slider(0, 20, value=s.guidance, step=0.5, label="Guidance", elem_id="guidance")
                    scene_seconds = gr.Number(label="Scene length (s, later scenes; 0 = model default)", value=0,
                                              minimum=0, elem_id="scene-seconds")
                    fps = gr.Number(label="Frames per second", value=service.pipe.fps, minimum=1, maximum=60,
                                    elem_id="fps")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
                gr.Examples(EXAMPLES, inputs=[story], label="Example stories")
            with gr.Column():
                video = gr.Video(label="Video", autoplay=True, loop=True, elem_id="video")
                summary = gr.Markdown(elem_id="summary")
                files = gr.File(label="Downloads (MP4, GIF, JSON sidecar)", file_count="multiple", elem_id="files")
        button.click(run, [story, seed, steps, guidance, scene_seconds, fps], [video, files, summary],
                     concurrency_limit=limits.concurrency)
    app.queue(max_size=limits.queue_size, default_concurrency_limit=limits.concurrency)
    return app


def serve(checkpoint: str | None, *, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
          dtype: str = "auto", output_dir: str | None = None, limits: WebLimits | None = None,
          block: bool = True) -> Any:
    """Load the model, build the page and start the server; returns the Gradio app."""
    from .pipeline import Phenaki

    pipe = Phenaki.from_pretrained(checkpoint, device=device, dtype=dtype)
    limits = limits or WebLimits()
    outputs = OutputStore(output_dir, limits.keep_outputs)
    app = build_app(StoryService(pipe, limits, outputs), Path(pipe.source).name if pipe.source else "phenaki")
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, allowed_paths=[str(outputs.root)],
               show_error=False, quiet=not block)
    return app

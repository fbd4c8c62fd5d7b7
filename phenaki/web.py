"""The web demo: write a story, watch it become a video (`phenaki-web`, Gradio).

Gradio is the convention for model demos (Hugging Face Spaces) and gives what a
demo needs without hand-written web code: a request queue with a concurrency
limit, progress reporting, video playback and file downloads.

Safety and sharing:
- every request writes into its own folder under the output root; the oldest
  folders are removed once more than `keep_outputs` exist, never one still being
  written, and the files are handed to Gradio's cache before their folder is
  released, so retention cannot take a file from a request being answered;
- the queue runs at most `concurrency` generations at once and holds at most
  `queue_size` waiting requests; a request cancelled while it runs stops at the
  next decoding step, removes its folder, and only then frees its place;
- user text is only ever parsed as a story (prompt + `[key=value]` settings), never
  executed; the number of scenes, line length, total frames and steps are limited;
- bad input becomes a message in the page (`gradio.Error`), never a stack trace,
  and the server keeps serving;
- the files and the sidecar name the model by its folder name, never by a path of
  the serving machine.

HTTP API: one endpoint, `/generate` (see `build_app`), e.g. with `gradio_client`:
`Client(url).predict(story, seed, steps, guidance, scene_seconds, fps, api_name="/generate")`.
"""

from __future__ import annotations

import asyncio
import contextvars
import html
import itertools
import logging
import math
import re
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .story import StoryError, StoryScene, parse_story

log = logging.getLogger(__name__)

EXAMPLES = [
    "a red ball moves right\nthe blue ball rises\nthe green ball moves left",
    "the yellow square falls\na yellow box slides left\nthe magenta block goes up",
    "a white triangle moves to the right\nthe cyan triangle sinks",
    "a green disc rises\nthe red disc moves left\nthe blue disc falls\na white disc goes right",
]


API_NAME = "generate"  # the page's one endpoint: gradio_client's api_name="/generate", POST /gradio_api/call/generate


class RequestError(ValueError):
    """A request the demo refuses; the message is shown in the page as it is."""


class Cancelled(Exception):
    """The request was cancelled while it ran (raised in the worker at the next decoding step)."""


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
    negative: str | None = None  # the story's negative prompt (a line's own [negative="..."] wins)


def _number(value: Any) -> float | None:
    """A number sent by the page or an API client; None for anything else (None, text, a bool)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _whole(value: Any, low: int, high: int) -> int | None:
    number = _number(value)
    if number is None or not number.is_integer() or not low <= number <= high:
        return None
    return int(number)


def parse_request(story: str, seed: float, steps: float, guidance: float, scene_seconds: float | None,
                  fps: float, limits: WebLimits, *, model_fps: float, first_frames: int, scene_frames: int,
                  temporal_patch: int, negative: Any = None) -> Request:
    """Validate everything the page (or an API client) sends; raise RequestError naming the problem.

    Numbers may arrive as anything JSON can carry (text, null, a fraction), so each is
    checked here, with a message naming the field, rather than trusted."""
    if story is not None and not isinstance(story, str):
        raise RequestError("The story must be text, one scene per line.")
    text = (story or "").strip()
    if not text:
        raise RequestError("The story is empty: write one scene per line, e.g. 'a red ball moves right'.")
    for number, line in enumerate(text.splitlines(), start=1):
        if len(line.strip()) > limits.max_line_chars:
            raise RequestError(f"Line {number} is {len(line.strip())} characters long; the limit is "
                               f"{limits.max_line_chars}.")
    try:
        scenes = parse_story(text, "line")
    except StoryError as exc:  # "line:3: unknown scene setting ..." -> "Line 3: unknown scene setting ..."
        message = re.sub(r"^line:(\d+): ", r"Line \1: ", str(exc))
        message = re.sub(r"^line: ", "The story has ", message)
        raise RequestError(message[0].upper() + message[1:]) from None
    if len(scenes) > limits.max_scenes:
        raise RequestError(f"The story has {len(scenes)} scenes; this server allows at most {limits.max_scenes}.")
    whole_seed = _whole(seed, 0, limits.max_seed)
    if whole_seed is None:
        raise RequestError(f"The seed must be a whole number from 0 to {limits.max_seed}.")
    whole_steps = _whole(steps, 1, limits.max_steps)
    if whole_steps is None:
        raise RequestError(f"Steps must be a whole number from 1 to {limits.max_steps}.")
    guidance = _number(guidance)  # type: ignore[assignment]
    if guidance is None or not math.isfinite(guidance) or not 0 <= guidance <= 50:
        raise RequestError("Guidance must be between 0 and 50.")
    fps = _number(fps)  # type: ignore[assignment]
    if fps is None or not math.isfinite(fps) or not 1 <= fps <= 60:
        raise RequestError("Frames per second must be between 1 and 60.")
    if scene_seconds is not None:
        scene_seconds = _number(scene_seconds)
        if scene_seconds is None or not (math.isfinite(scene_seconds) and scene_seconds > 0):
            raise RequestError("Scene length must be a positive number of seconds.")
    for number, scene in enumerate(scenes, start=1):
        for key, value in scene.settings.items():  # numbers must be finite; text (schedule=, negative=) is text
            if isinstance(value, float) and not math.isfinite(value):
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
    if negative is not None and not isinstance(negative, str):
        raise RequestError("The negative prompt must be text.")
    negative = (negative or "").strip() or None
    if negative is not None and len(negative) > limits.max_line_chars:
        raise RequestError(f"The negative prompt is {len(negative)} characters; this server allows at most "
                           f"{limits.max_line_chars}.")
    return Request(scenes, whole_seed, whole_steps, float(guidance), scene_seconds, float(fps), negative=negative)


REQUEST_DIR = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")


class OutputStore:
    """Per-request folders in `<root>/phenaki-web/`; the oldest are removed beyond `keep`.

    Only that subfolder is pruned, and only folders named like request folders (real
    folders, not links) are ever deleted, so pointing `--output-dir` at a folder with
    other files in it never removes them. Age is the order of creation: the folders
    this store made, in the order it made them, are newer than any it found (those are
    ordered by the time in their names). A folder's modification time is not its age,
    since writing a file into a folder touches it. A folder held by `reserve` is never
    pruned, however many newer ones there are; it is pruned once released, if it is
    no longer among the `keep` newest. One server per output folder.
    """

    def __init__(self, root: str | Path | None, keep: int) -> None:
        base = Path(root) if root else Path(tempfile.mkdtemp(prefix="phenaki-web-"))
        self.root = base / "phenaki-web"
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, keep)
        self._lock = threading.Lock()
        self._order = itertools.count()
        self._made: dict[str, int] = {}  # name -> creation number, for the folders this store made and kept
        self._busy: set[str] = set()

    def new(self) -> Path:
        """A fresh request folder, not held: the next prune may take it once `keep` newer ones exist."""
        with self._lock:
            path = self._create()
            self._prune()
            return path

    @contextmanager
    def reserve(self) -> Iterator[Path]:
        """A fresh request folder that pruning leaves alone until the block ends. If the block
        fails or is interrupted, the folder and whatever was written into it are removed."""
        with self._lock:
            path = self._create()
            self._busy.add(path.name)
            self._prune()
        try:
            yield path
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        finally:
            with self._lock:
                self._busy.discard(path.name)
                self._prune()

    def discard(self, path: Path) -> None:
        """Remove one request folder of this store now (a request answered to nobody)."""
        with self._lock:
            if path.parent == self.root and REQUEST_DIR.match(path.name) and path.name not in self._busy:
                shutil.rmtree(path, ignore_errors=True)
                self._made.pop(path.name, None)

    def folders(self) -> list[Path]:
        """The request folders, oldest first."""
        with self._lock:
            return self._folders()

    def _create(self) -> Path:
        while True:
            path = self.root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
            try:
                path.mkdir()
            except FileExistsError:  # the same second and the same 32 random bits: draw again
                continue
            self._made[path.name] = next(self._order)
            return path

    def _folders(self) -> list[Path]:
        found = [p for p in self.root.iterdir() if REQUEST_DIR.match(p.name) and p.is_dir() and not p.is_symlink()]
        names = {p.name for p in found}
        self._made = {name: n for name, n in self._made.items() if name in names}  # forget folders gone

        def age(path: Path) -> tuple:
            if path.name in self._made:
                return (1, self._made[path.name], "")
            return (0, -1, path.name)  # found here: "YYYYmmdd-HHMMSS-..." sorts by the time it was made

        return sorted(found, key=age)

    def _prune(self) -> None:
        for old in self._folders()[: -self.keep]:
            if old.name not in self._busy:
                shutil.rmtree(old, ignore_errors=True)
                self._made.pop(old.name, None)


class StoryService:
    """Turns validated requests into files; one instance per server, shared by all requests."""

    def __init__(self, pipe: Any, limits: WebLimits, outputs: OutputStore, model_name: str | None = None) -> None:
        self.pipe = pipe
        self.limits = limits
        self.outputs = outputs
        self.model_name = model_name or (Path(pipe.source).name if getattr(pipe, "source", None) else "phenaki")

    def request(self, story: str, seed: float, steps: float, guidance: float, scene_seconds: float | None,
                fps: float, negative: Any = None) -> Request:
        s = self.pipe.sampling
        if _number(scene_seconds) == 0:  # the page's 0: the model's default length
            scene_seconds = None
        return parse_request(story, seed, steps, guidance, scene_seconds, fps, self.limits,
                             model_fps=self.pipe.fps, first_frames=s.first_frames, scene_frames=s.scene_frames,
                             temporal_patch=self.pipe.temporal_patch, negative=negative)

    def unknown_words(self, request: Request) -> dict[str, list[str]]:
        """The words of the request's prompts the model leaves out (a prompt with none it knows is
        refused when generating)."""
        from .pipeline import PipelineError

        texts = [scene.prompt for scene in request.scenes] + [request.negative or ""]
        texts += [scene.settings.get("negative_prompt") or "" for scene in request.scenes]
        try:
            return self.pipe.unknown_words([t for t in texts if t])
        except PipelineError as exc:
            message = str(exc)
            raise RequestError(message[0].upper() + message[1:]) from None

    def generate(self, request: Request, progress: Callable[[float, str], object] | None = None, *,
                 cancel: threading.Event | None = None,
                 hand_over: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
        """Generate, then write story.mp4, story.gif and story.json into a fresh folder.

        Returns {"mp4", "gif", "json": paths, "folder": the request folder, "request": its name,
        "frames": the number of frames}. Once `cancel` is set, generation stops at the next
        decoding step with `Cancelled`, and no folder is left behind. A request the model
        cannot meet (a prompt with no word it knows, say) raises `RequestError` with the
        model's reason. `hand_over(files)`, called while the folder is still held against
        pruning, may copy the files elsewhere and return the dict to return instead."""
        from .pipeline import GenerationStopped, PipelineError
        from .video import Video

        def check() -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled("the request was cancelled")

        def report(done: int, total: int, scene: int, scenes: int) -> None:  # steps done of the whole story
            if progress is not None:
                progress(done / max(1, total), f"scene {scene}/{scenes}")

        check()
        started = time.perf_counter()
        try:
            video = self.pipe.generate(request.scenes, seed=request.seed, steps=request.steps,
                                       guidance=request.guidance, scene_seconds=request.scene_seconds,
                                       negative_prompt=request.negative,
                                       progress=report, callback=None if cancel is None else lambda _: cancel.is_set())
        except GenerationStopped:
            raise Cancelled("the request was cancelled") from None
        except PipelineError as exc:
            message = str(exc)
            raise RequestError(message[0].upper() + message[1:]) from None
        check()
        scale = max(1, self.limits.display_scale)
        frames = video.frames
        if scale > 1:
            frames = frames.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
        with self.outputs.reserve() as folder:  # removed again if writing fails or the request is cancelled
            metadata = {**video.metadata, "display_scale": scale, "source": "phenaki-web", "request": folder.name}
            if "checkpoint" in metadata:  # a name, never a path of the serving machine
                metadata["checkpoint"] = self.model_name
            shown = Video(frames, fps=request.fps, scenes=video.scenes, metadata=metadata)
            files: dict[str, Any] = {"mp4": shown.save(folder / "story.mp4"),
                                     "gif": shown.save(folder / "story.gif"),  # the same sidecar describes both
                                     "json": folder / "story.json", "folder": folder, "request": folder.name,
                                     "frames": video.num_frames}
            check()
            if hand_over is not None:
                files = hand_over(files)
        log.info("request %s: %d scene(s), %d frames, seed %d, %d steps, %.2f s", folder.name, len(request.scenes),
                 video.num_frames, request.seed, request.steps, time.perf_counter() - started)
        return files


def _message(text: str) -> str:
    """A message for the page: Gradio shows messages as HTML, so markup in user text is escaped
    (quotes need not be, outside attributes, and API clients read the text as it is)."""
    return html.escape(text, quote=False)


async def _settle(future: asyncio.Future) -> None:
    """Wait for a worker to finish, however often the waiting task is cancelled meanwhile."""
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            continue
        except BaseException:  # noqa: BLE001 - the worker's own error; the caller is already leaving
            break


def _unchecked_fields() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Number and slider fields whose values `parse_request` checks, with a message naming the
    field: Gradio's own range check gives a message without the field's name, turns text or
    null into a bare "Error", and logs a stack trace. The page never sends such values; an API
    client can. (Set on the instances: a subclass of a Gradio component makes Gradio write a
    type-stub file beside this module.)"""
    import gradio as gr

    def passed_through(component: Any) -> Any:
        component.preprocess = lambda payload: payload
        return component

    def NumberField(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - used like the component it makes
        return passed_through(gr.Number(*args, **kwargs))

    def SliderField(*args: Any, **kwargs: Any) -> Any:  # noqa: N802
        return passed_through(gr.Slider(*args, **kwargs))

    return NumberField, SliderField


def _generate_handler(service: StoryService, downloads: Any) -> Callable[..., Any]:
    """The page's function: checks the request, runs it on one of `concurrency` worker threads, and
    turns refusals into messages and a client's cancel into a stop at the next decoding step."""
    import gradio as gr

    limits = service.limits
    # the generations run here, on `concurrency` threads that live as long as the app (the queue
    # never starts more at once); the page's function itself is a coroutine, so that a client's
    # cancel reaches it and it can stop the generation instead of leaving it running unseen
    workers = ThreadPoolExecutor(max_workers=limits.concurrency, thread_name_prefix="phenaki-web")

    def to_cache(files: dict[str, Any]) -> dict[str, Any]:
        """Copy the files into Gradio's cache while the request folder is still held, so that
        retention cannot delete them before Gradio would have copied them (it copies returned
        files after the function returns), and the output folder itself is never served."""
        cached = {key: Path(downloads.move_resource_to_block_cache(str(files[key]))) for key in ("mp4", "gif", "json")}
        return {**files, **cached}

    async def generate(story, seed, steps, guidance, scene_seconds, fps, negative=None, progress=gr.Progress()):
        try:
            request = service.request(story, seed, steps, guidance, scene_seconds, fps, negative)
            unknown = service.unknown_words(request)
        except RequestError as exc:
            raise gr.Error(_message(str(exc)), print_exception=False) from None
        for prompt, words in unknown.items():
            gr.Warning(html.escape(f"Not in the model's vocabulary, left out of '{prompt}': {', '.join(words)}"))
        progress(0.0, desc="starting")
        cancel = threading.Event()

        def work() -> dict[str, Any]:
            return service.generate(request, lambda fraction, text: progress(fraction, desc=text), cancel=cancel,
                                    hand_over=to_cache)

        # the worker sees this request's context, which is how Gradio's progress finds its event
        future = asyncio.get_running_loop().run_in_executor(workers, contextvars.copy_context().run, work)
        try:
            files = await asyncio.shield(future)
        except RequestError as exc:  # found by the model, e.g. a prompt with no word it knows
            raise gr.Error(_message(str(exc)), print_exception=False) from None
        except asyncio.CancelledError:
            # cancelled by the client: Gradio cancels this task, but a thread cannot be stopped from
            # outside. Ask the worker to stop at its next step, wait until it has (so the place in the
            # queue is freed only when the machine is), and leave no folder behind.
            cancel.set()
            await _settle(future)
            if not future.cancelled() and future.exception() is None:  # it had already finished
                service.outputs.discard(future.result()["folder"])
            log.info("a request was cancelled while it ran; nothing of it was kept")
            raise
        except Exception as exc:  # noqa: BLE001 - the page gets one line, the log the details
            log.exception("generation failed")
            raise gr.Error(_message(f"Generation failed: {exc}"), print_exception=False) from None
        frames = files["frames"]
        summary = (f"{len(request.scenes)} scene(s), {frames} frames, {frames / request.fps:.2f} s at "
                   f"{request.fps:g} fps, seed {request.seed}; request {files['request']}")
        return str(files["mp4"]), [str(files["mp4"]), str(files["gif"]), str(files["json"])], summary

    return generate


def build_app(service: StoryService, model_name: str) -> Any:
    """The Gradio page (`model_name` is shown: a name, never a path of the serving machine).

    Its one endpoint, `/generate` (`API_NAME`), takes (story, seed, steps, guidance,
    scene_seconds, fps, negative prompt) and returns (the MP4, [MP4, GIF, JSON sidecar], a one-line summary
    that ends with the request's folder name). A refused request raises `gradio.Error`
    with the message shown in the page; a client receives it as the error's text.
    """
    import gradio as gr

    s = service.pipe.sampling
    limits = service.limits
    NumberField, SliderField = _unchecked_fields()

    # Gradio copies returned files into its cache: clear entries older than an hour, hourly
    with gr.Blocks(title="Phenaki: story to video", delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"# Phenaki: story to video\nOne scene per line; each scene continues the last. "
                    f"Model: `{model_name}`")
        with gr.Row():
            with gr.Column():
                story = gr.Textbox(label="Story (one scene per line)", lines=6, value=EXAMPLES[0],
                                   elem_id="story")
                with gr.Row():
                    seed = NumberField(label="Seed", value=0, precision=0, minimum=0, elem_id="seed")
                    steps = SliderField(1, limits.max_steps, value=min(s.steps, limits.max_steps), step=1,
                                        label="Steps", elem_id="steps")
                with gr.Row():
                    guidance = SliderField(0, 20, value=s.guidance, step=0.5, label="Guidance", elem_id="guidance")
                    scene_seconds = NumberField(label="Scene length (s, later scenes; 0 = model default)",
                                                value=0, minimum=0, elem_id="scene-seconds")
                    fps = NumberField(label="Frames per second", value=service.pipe.fps, minimum=1, maximum=60,
                                      elem_id="fps")
                negative = gr.Textbox(label="Negative prompt (optional): what guidance pushes away from",
                                      lines=1, value="", elem_id="negative")
                with gr.Row():
                    button = gr.Button("Generate", variant="primary", elem_id="generate")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
                gr.Examples(EXAMPLES, inputs=[story], label="Example stories")
            with gr.Column():
                video = gr.Video(label="Video", autoplay=True, loop=True, elem_id="video")
                summary = gr.Markdown(label="Summary", show_label=False, elem_id="summary")
                downloads = gr.File(label="Downloads (MP4, GIF, JSON sidecar)", file_count="multiple",
                                    elem_id="files")
        generate = _generate_handler(service, downloads)
        run = button.click(generate, [story, seed, steps, guidance, scene_seconds, fps, negative],
                           [video, downloads, summary], concurrency_limit=limits.concurrency, api_name=API_NAME)
        # stops the running generation at its next step (or takes it out of the queue) and frees its place
        cancel.click(None, None, None, cancels=[run])
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
    service = StoryService(pipe, limits, outputs)
    app = build_app(service, service.model_name)
    # the output folder is not among the served paths: the page serves Gradio's cached copies
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=False, quiet=not block)
    return app

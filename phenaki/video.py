"""Video I/O for phenaki: reading, writing, resizing and cropping clips.

Frames are always ``uint8`` tensors of shape ``[T, H, W, 3]`` (RGB), the layout that
decoders hand out, so no conversion is needed until a model wants floats.

Reading goes through PyAV for container files (mp4, webm, mkv, avi, gif, ...), and
through Pillow for single images and folders of PNG/JPEG frames.  A window of a long
file is read by seeking to the keyframe before it and stopping as soon as the last
wanted frame is decoded, so sampling short clips from long videos stays cheap.

Writing is atomic: the output is produced under a temporary name in the target
directory and moved into place only once complete, so a crash or an exception never
leaves a half-written file where a good one used to be. A write that fails for want of
room (a full disk, a file-size limit) or any other OS error raises ``VideoWriteError``
(a ``VideoError`` and an ``OSError``) naming the output, with the previous file intact
and no temporary file left.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Union

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .utils.fileio import atomic_file, atomic_write_dir

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
SizeLike = Union[int, Sequence[int]]

#: Single-image files read as 1-frame videos (and accepted inside frame folders).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: Suffixes ``write_video`` understands; a path without suffix (or ending in "/")
#: is written as a folder of PNG frames.
WRITE_SUFFIXES: tuple[str, ...] = (".mp4", ".mkv", ".webm", ".gif")
#: Frame rate assumed for frame folders and images without a sidecar giving one.
DEFAULT_FOLDER_FPS = 8.0
#: Default constant-rate-factor per encoder (lower is better quality, bigger file).
DEFAULT_CRF: dict[str, int] = {"libx264": 18, "libvpx-vp9": 30}

_EPS = 1e-6  # guards floor() in fps resampling against float round-off
_GIF_MAX_FPS = 50.0  # GIF delays are in 1/100 s and players clamp delays < 2
_GIF_COLORS = 255  # keep one palette slot free so the encoder's transparency never clashes
_FRAME_PATTERN = "frame_{:05d}.png"
_CONTAINER_FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".webm": "webm", ".gif": "gif"}
_CODECS = {".mp4": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9", ".gif": "gif"}


class VideoError(ValueError):
    """A video could not be read or written (bad file, bad window, codec failure)."""


class VideoNotFoundError(VideoError, FileNotFoundError):
    """The video path does not exist (also catchable as ``FileNotFoundError``)."""


class VideoWriteError(VideoError, OSError):
    """A video or its sidecar could not be written (a full disk, a file-size limit, no permission);
    whatever was there before is unchanged. Also catchable as ``OSError`` (its ``errno`` is the cause's)."""


def _write_failure(final: Path, exc: BaseException) -> VideoWriteError:
    """One line naming the output and the cause, e.g. `cannot write out.mp4: [Errno 28] No space left on device`."""
    if isinstance(exc, OSError) and exc.strerror:  # not exc's own text: it names the temporary file
        reason = f"[Errno {exc.errno}] {exc.strerror}" if exc.errno else exc.strerror
    else:
        reason = " ".join(str(exc).split()) or type(exc).__name__
    error = VideoWriteError(f"cannot write {final}: {reason} (nothing was changed)")
    error.errno = getattr(exc, "errno", None)
    return error


# --------------------------------------------------------------------------- dataclasses


@dataclass
class Scene:
    """A prompt that holds for frames ``[start, end)`` of a video."""

    prompt: str
    start: int
    end: int

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise ValueError(f"Scene prompt must be a str, got {type(self.prompt).__name__}")
        self.start, self.end = int(self.start), int(self.end)
        if self.start < 0 or self.end <= self.start:
            raise ValueError(f"Scene needs 0 <= start < end, got start={self.start}, end={self.end}")

    @property
    def num_frames(self) -> int:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "start": self.start, "end": self.end}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        missing = [k for k in ("prompt", "start", "end") if k not in data]
        if missing:
            raise ValueError(f"Scene dict is missing {missing}: {data!r}")
        return cls(prompt=data["prompt"], start=int(data["start"]), end=int(data["end"]))


@dataclass
class VideoInfo:
    """What ``probe_video`` learns about a video without decoding it."""

    num_frames: int
    fps: float
    width: int
    height: int
    duration: float  # seconds, num_frames / fps


@dataclass
class Video:
    """Frames plus the frame rate, scene prompts and free-form metadata that go with them."""

    frames: torch.Tensor
    fps: float
    scenes: list[Scene] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.frames = _as_frames_tensor(self.frames, what="Video.frames")
        self.fps = _check_fps(self.fps, what="Video.fps")
        self.scenes = [s if isinstance(s, Scene) else Scene.from_dict(s) for s in self.scenes]
        for scene in self.scenes:
            if scene.end > self.num_frames:
                raise ValueError(f"{scene} ends after the last frame (video has {self.num_frames} frames)")
        if not isinstance(self.metadata, dict):
            raise ValueError(f"Video.metadata must be a dict, got {type(self.metadata).__name__}")

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.num_frames / self.fps

    def sidecar_dict(self) -> dict[str, Any]:
        """The JSON-able description written next to the video by ``save``."""
        return {
            "fps": self.fps,
            "num_frames": self.num_frames,
            "height": self.height,
            "width": self.width,
            "scenes": [s.to_dict() for s in self.scenes],
            "metadata": self.metadata,
        }

    def save(self, path: PathLike, *, quality: int | None = None) -> Path:
        """Write the frames (format from the suffix, see ``write_video``) and a sidecar JSON.

        The sidecar is serialised first so unserialisable metadata fails before anything
        is written.  Returns the path of the video (file or PNG folder).
        """
        try:
            text = json.dumps(self.sidecar_dict(), indent=2, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Video metadata is not JSON serialisable: {exc}") from exc
        side = sidecar_path(path)
        # the sidecar is written first and renamed in after the video, so a failure of either
        # (a full disk) leaves the previous video and sidecar as they were
        with atomic_file(side) as side_tmp:
            try:
                side_tmp.write_text(text + "\n", encoding="utf-8")
            except OSError as exc:
                raise _write_failure(side, exc) from exc
            out = write_video(path, self.frames, self.fps, quality=quality)
        return out

    @classmethod
    def load(cls, path: PathLike, **read_kwargs: Any) -> Video:
        """Read a video (``read_kwargs`` go to ``read_video``) plus its sidecar, if any.

        Scene ranges from the sidecar are mapped onto the returned frames when a window
        or a different fps is requested; scenes falling outside the window are dropped.
        If the codec padded odd frame sizes on save, the padding is cropped off again.
        """
        frames, fps = read_video(path, **read_kwargs)
        side = sidecar_path(path)
        if not side.is_file():
            return cls(frames=frames, fps=fps)
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
            scenes = [Scene.from_dict(s) for s in data.get("scenes", [])]
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise VideoError(f"cannot read sidecar {side}: {exc}") from exc
        frames = _crop_codec_padding(frames, data.get("height"), data.get("width"), side)
        src_fps = float(data.get("fps") or fps)
        start = int(read_kwargs.get("start", 0))
        target = read_kwargs.get("fps")
        indices = [_source_index(i, src_fps, target) for i in range(start, start + frames.shape[0])]
        return cls(
            frames=frames,
            fps=fps,
            scenes=_remap_scenes(scenes, indices),
            metadata=dict(data.get("metadata") or {}),
        )


def sidecar_path(path: PathLike) -> Path:
    """Where the JSON sidecar of ``path`` lives: ``<parent>/<stem>.json``.

    For a PNG-folder output (``out/frames/`` or ``out/frames``) it is ``out/frames.json``.
    """
    p = Path(path)
    if _is_folder_path(path) or p.is_dir():
        return p.parent / f"{p.name}.json"
    return p.parent / f"{p.stem}.json"


# --------------------------------------------------------------------------- probing


def probe_video(path: PathLike) -> VideoInfo:
    """Frame count, fps and size of a video file, image, or frame folder, without decoding."""
    p = _existing(path)
    if p.is_dir():
        files = _list_frame_files(p)
        width, height = _image_size(files[0])
        fps = _sidecar_fps(p)
        return VideoInfo(len(files), fps, width, height, len(files) / fps)
    if p.suffix.lower() in IMAGE_SUFFIXES:
        width, height = _image_size(p)
        fps = _sidecar_fps(p)
        return VideoInfo(1, fps, width, height, 1 / fps)
    with _open_input(p) as container:
        stream = _video_stream(container, p)
        fps = _stream_fps(p, container, stream)
        count = _count_frames(p, container, stream)
        width, height = stream.codec_context.width, stream.codec_context.height
    return VideoInfo(count, float(fps), width, height, count / float(fps))


# --------------------------------------------------------------------------- reading


def read_video(
    path: PathLike,
    *,
    start: int = 0,
    num_frames: int | None = None,
    fps: float | None = None,
) -> tuple[torch.Tensor, float]:
    """Read frames as uint8 ``[T, H, W, 3]`` RGB and return them with their frame rate.

    ``fps`` resamples to a target rate by dropping/duplicating frames: output frame ``i``
    is source frame ``floor(i * src_fps / fps)``.  ``start`` and ``num_frames`` count
    output frames (after resampling).  A window reaching past the end returns the frames
    that exist; a window with no frames at all raises ``VideoError``.
    """
    p = Path(path)
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be an int >= 0, got {start!r}")
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1):
        raise ValueError(f"num_frames must be None or an int >= 1, got {num_frames!r}")
    if fps is not None:
        fps = _check_fps(fps, what="fps")
    p = _existing(p)
    if p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES:
        return _read_images(p, start, num_frames, fps)
    return _read_container(p, start, num_frames, fps)


def _read_images(p: Path, start: int, num_frames: int | None, fps: float | None) -> tuple[torch.Tensor, float]:
    """Read a frame folder (natural name order) or a single image; only wanted files are opened."""
    files = _list_frame_files(p) if p.is_dir() else [p]
    src_fps = _sidecar_fps(p)
    total = _output_count(len(files), src_fps, fps)
    stop = total if num_frames is None else min(total, start + num_frames)
    if start >= stop:
        raise VideoError(_empty_window_message(p, start, fps, len(files), src_fps))
    cache: dict[int, np.ndarray] = {}
    out = []
    for i in range(start, stop):
        j = _source_index(i, src_fps, fps)
        if j not in cache:
            cache[j] = _load_image(files[j])
            if cache[j].shape != cache[next(iter(cache))].shape:
                raise VideoError(f"frame {files[j]} has size {cache[j].shape[:2]}, unlike the others in {p}")
        out.append(cache[j])
    return torch.from_numpy(np.stack(out)), float(fps or src_fps)


def _read_container(p: Path, start: int, num_frames: int | None, fps: float | None) -> tuple[torch.Tensor, float]:
    """Decode a window of a container file with PyAV, seeking when the window starts late."""
    with _open_input(p) as container:
        stream = _video_stream(container, p)
        src_fps = _stream_fps(p, container, stream)
        try:
            frames = _decode_window(container, stream, src_fps, start, num_frames, fps, allow_seek=True)
        except _SeekMissed:
            frames = None
        except av.FFmpegError as exc:
            raise VideoError(f"cannot decode video {p}: {exc}") from exc
    if frames is None:  # the seek landed after the window (or lost timestamps): start over
        logger.debug("seek in %s missed the window; decoding from the start", p)
        with _open_input(p) as container:
            stream = _video_stream(container, p)
            try:
                frames = _decode_window(container, stream, src_fps, start, num_frames, fps, allow_seek=False)
            except av.FFmpegError as exc:
                raise VideoError(f"cannot decode video {p}: {exc}") from exc
    if not frames:
        available = probe_video(p).num_frames
        raise VideoError(_empty_window_message(p, start, fps, available, float(src_fps)))
    return torch.from_numpy(np.stack(frames)), float(fps or src_fps)


class _SeekMissed(Exception):
    """Internal: after seeking, the first decoded frame is already past the window start."""


def _decode_frames(container: av.container.InputContainer, stream: av.VideoStream) -> Iterator[av.VideoFrame]:
    """Yield decoded frames of ``stream``; a separate function so tests can count decoding."""
    yield from container.decode(stream)


# Frames are converted to RGB on one thread. PyAV's scaler otherwise runs slice threads, and a
# DataLoader worker forked from a process that had converted frames was seen waiting forever on
# them (a shard test under CI). Before PyAV had `threads`, it scaled on one thread anyway.
_TO_RGB: dict[str, object] = {"format": "rgb24"}
if "threads=" in (av.VideoFrame.reformat.__doc__ or ""):
    _TO_RGB["threads"] = 1


def _decode_window(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    src_fps: Fraction,
    start: int,
    num_frames: int | None,
    fps: float | None,
    *,
    allow_seek: bool,
) -> list[np.ndarray]:
    """Collect output frames ``start .. start+num_frames-1`` as RGB arrays.

    Each decoded frame gets a source index from its timestamp, ``round((pts - start_time)
    * time_base * src_fps)``, or by counting when timestamps are missing.  Indices are
    forced to increase; a gap in them repeats the previous frame so timing is kept.
    """
    stream.thread_type = "AUTO"
    tb = stream.time_base
    ref = stream.start_time
    need = _source_index(start, float(src_fps), fps)
    seeked = False
    if allow_seek and need > 0 and ref is not None and tb:
        target = ref + math.floor(Fraction(need) / src_fps / tb)
        try:
            container.seek(target, stream=stream, backward=True, any_frame=False)
            seeked = True
        except av.FFmpegError as exc:  # some demuxers cannot seek; decode from the start
            logger.debug("seek to %s failed (%s); decoding from the start", target, exc)

    out: list[np.ndarray] = []
    i = start
    prev_k = -1
    prev: av.VideoFrame | None = None
    converted: tuple[av.VideoFrame | None, np.ndarray | None] = (None, None)

    def rgb(frame: av.VideoFrame) -> np.ndarray:
        nonlocal converted
        if converted[0] is not frame:  # convert each decoded frame at most once
            converted = (frame, frame.to_ndarray(**_TO_RGB))
        return converted[1]

    def done() -> bool:
        return num_frames is not None and len(out) >= num_frames

    for frame in _decode_frames(container, stream):
        if frame.pts is not None and ref is None:
            ref = frame.pts  # no stream start time: count from the first frame
        k = _timestamp_index(frame.pts, ref, tb, src_fps)
        if seeked and prev is None and (k is None or k > need):
            raise _SeekMissed
        if k is None:
            k = prev_k + 1
        elif k < 0:
            continue  # pre-roll before the stream start
        if k <= prev_k:
            k = prev_k + 1
        while need < k:  # frames between prev and this one: repeat the nearest earlier one
            out.append(rgb(prev if prev is not None else frame))
            i += 1
            need = _source_index(i, float(src_fps), fps)
            if done():
                return out
        while need == k:
            out.append(rgb(frame))
            i += 1
            need = _source_index(i, float(src_fps), fps)
            if done():
                return out
        prev, prev_k = frame, k
    return out


def _timestamp_index(pts: int | None, ref: int | None, tb: Fraction | None, src_fps: Fraction) -> int | None:
    """Source frame index from a timestamp, or None when the frame carries none."""
    if pts is None or ref is None or not tb:
        return None
    return round((pts - ref) * tb * src_fps)


def _source_index(i: int, src_fps: float, fps: float | None) -> int:
    """Source frame shown at output frame ``i`` when resampling ``src_fps`` -> ``fps``."""
    if fps is None:
        return i
    return math.floor(i * src_fps / fps + _EPS)


def _output_count(n_src: int, src_fps: float, fps: float | None) -> int:
    """How many output frames ``n_src`` source frames give at the target rate."""
    if fps is None or n_src == 0:
        return n_src
    count = max(0, math.ceil((n_src - _EPS) * fps / src_fps))
    while count > 0 and _source_index(count - 1, src_fps, fps) > n_src - 1:
        count -= 1
    while _source_index(count, src_fps, fps) <= n_src - 1:
        count += 1
    return count


def _empty_window_message(p: Path, start: int, fps: float | None, available: int, src_fps: float) -> str:
    rate = f" at {fps:g} fps ({_output_count(available, src_fps, fps)} frames at that rate)" if fps else ""
    return f"no frames to read from {p}: start={start} is past the end; it has {available} frames{rate}"


def _stream_fps(p: Path, container: av.container.InputContainer, stream: av.VideoStream) -> Fraction:
    """Frame rate of a stream: its average rate, or frames / duration for GIFs."""
    if container.format.name == "gif":
        fps = _gif_fps(p)
        if fps:
            return fps
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < rate < 10_000:
            return Fraction(rate)
    if stream.frames and stream.duration and stream.time_base:
        return Fraction(stream.frames) / (stream.duration * stream.time_base)
    logger.warning("%s: unknown frame rate, assuming 25 fps", p)
    return Fraction(25)


def _gif_fps(p: Path) -> Fraction | None:
    """GIF frame delays vary (1/100 s steps), so use frame count over total duration.

    This demuxes the whole file once (no decoding), which is cheap for GIF sizes.
    """
    with _open_input(p) as container:
        stream = _video_stream(container, p)
        try:
            pts = [(pk.pts, pk.duration or 0) for pk in container.demux(stream) if pk.size and pk.pts is not None]
        except av.FFmpegError as exc:
            raise VideoError(f"cannot read video {p}: {exc}") from exc
        tb = stream.time_base
    if not pts or not tb:
        return None
    first = min(t for t, _ in pts)
    last, last_dur = max(pts)
    if last_dur <= 0:
        last_dur = (last - first) / max(1, len(pts) - 1)
    total = (last + last_dur - first) * tb
    return Fraction(len(pts)) / Fraction(total) if total > 0 else None


def _count_frames(p: Path, container: av.container.InputContainer, stream: av.VideoStream) -> int:
    """Frame count from the header, else by demuxing packets (no decoding)."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    try:
        return sum(1 for pk in container.demux(stream) if pk.size)
    except av.FFmpegError as exc:
        raise VideoError(f"cannot read video {p}: {exc}") from exc


@contextmanager
def _open_input(p: Path) -> Iterator[av.container.InputContainer]:
    """Open a container for reading; av errors (corrupt, unknown format) become ``VideoError``."""
    try:
        container = av.open(str(p), mode="r")
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"cannot open video {p}: {exc}") from exc
    try:
        yield container
    finally:
        container.close()


def _video_stream(container: av.container.InputContainer, p: Path) -> av.VideoStream:
    if not container.streams.video:
        raise VideoError(f"{p} has no video stream")
    return container.streams.video[0]


def _existing(path: PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise VideoNotFoundError(f"video not found: {p}")
    return p


def _natural_key(name: str) -> list[Any]:
    """Sort key so frame_2.png comes before frame_10.png."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _list_frame_files(folder: Path) -> list[Path]:
    files = [
        f
        for f in folder.iterdir()
        if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file()
    ]
    if not files:
        raise VideoError(f"no image frames ({', '.join(IMAGE_SUFFIXES)}) in folder {folder}")
    return sorted(files, key=lambda f: _natural_key(f.name))


def _load_image(p: Path) -> np.ndarray:
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        raise VideoError(f"cannot read image {p}: {exc}") from exc


def _image_size(p: Path) -> tuple[int, int]:
    try:
        with Image.open(p) as im:
            return im.size
    except (OSError, ValueError) as exc:
        raise VideoError(f"cannot read image {p}: {exc}") from exc


def _sidecar_fps(p: Path) -> float:
    """fps recorded in the sidecar of a frame folder / image, else ``DEFAULT_FOLDER_FPS``."""
    side = sidecar_path(p)
    if side.is_file():
        try:
            fps = json.loads(side.read_text(encoding="utf-8")).get("fps")
            if fps:
                return _check_fps(fps, what=f"fps in {side}")
        except (OSError, ValueError, AttributeError) as exc:
            logger.warning("ignoring unreadable sidecar %s: %s", side, exc)
    return DEFAULT_FOLDER_FPS


# --------------------------------------------------------------------------- writing


def write_video(path: PathLike, frames: torch.Tensor | np.ndarray, fps: float, *, quality: int | None = None) -> Path:
    """Write uint8 ``[T, H, W, 3]`` RGB frames atomically; the format comes from the suffix.

    ``.mp4``/``.mkv``: H.264 (libx264, yuv420p); odd sizes get one replicated edge
    row/column so they become even.  ``.webm``: VP9 (yuv420p).  ``.gif``: 255-colour
    palette per frame, delays in 1/100 s spread so the total duration matches ``fps``.
    No suffix, or a trailing "/": a folder of lossless ``frame_00000.png`` files.
    ``quality`` is the CRF for H.264 (default 18) and VP9 (default 30); lower is better.
    It is ignored for GIF and PNG.  Float frames are rejected: convert to uint8 first.
    The same frames always give the same bytes (bit-exact muxing; H.264 without
    macroblock-tree rate control, whose output depends on stale memory at some sizes).
    """
    kind = _output_kind(path)
    final = Path(path)
    arr = _as_frames_array(frames)
    fps = _check_fps(fps, what="fps")
    if arr.shape[0] == 0:
        raise ValueError(f"cannot write {final}: no frames")
    if quality is not None and (isinstance(quality, bool) or not isinstance(quality, int) or quality < 0):
        raise ValueError(f"quality must be None or an int >= 0, got {quality!r}")
    if final.exists() and final.is_dir() != (kind == "png"):
        what = "a folder" if final.is_dir() else "a file"
        raise VideoError(f"cannot write {final}: {what} is already there")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if kind == "png":
            _write_png_folder(final, arr)
        else:
            _write_container_atomic(final, kind, arr, fps, quality)
    except VideoError:
        raise
    except (OSError, av.FFmpegError) as exc:  # a full disk surfaces as either, depending on who wrote
        raise _write_failure(final, exc) from exc
    logger.debug("wrote %d frames (%dx%d, %.3f fps) to %s", arr.shape[0], arr.shape[2], arr.shape[1], fps, final)
    return final


def _output_kind(path: PathLike) -> str:
    """The suffix to write (".mp4", ...) or "png" for a frame folder; fails before any write."""
    if _is_folder_path(path) or Path(path).suffix == "":
        return "png"
    suffix = Path(path).suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise ValueError(
            f"unsupported video suffix {Path(path).suffix!r} for {path}: use one of "
            f"{', '.join(WRITE_SUFFIXES)}, or no suffix for a folder of PNG frames"
        )
    return suffix


def _is_folder_path(path: PathLike) -> bool:
    s = os.fspath(path)
    return s.endswith("/") or s.endswith(os.sep)


def _write_container_atomic(final: Path, suffix: str, arr: np.ndarray, fps: float, quality: int | None) -> None:
    with atomic_file(final, suffix) as tmp:
        try:
            if suffix == ".gif":
                _encode_gif(tmp, arr, fps, label=final)
            else:
                _encode_yuv(tmp, suffix, arr, fps, quality, label=final)
        except av.FFmpegError as exc:
            if isinstance(exc, OSError):  # the file could not be written (a full disk): not a codec failure
                raise _write_failure(final, exc) from exc
            raise VideoError(f"failed to write {final}: {exc}") from exc


def _frame_to_av(frame: np.ndarray, fmt: str = "rgb24") -> av.VideoFrame:
    """Wrap one frame for the encoder (separate so tests can inject failures)."""
    return av.VideoFrame.from_ndarray(frame, format=fmt)


def _encode_yuv(tmp: Path, suffix: str, arr: np.ndarray, fps: float, quality: int | None, *, label: Path) -> None:
    """Encode with libx264 / libvpx-vp9 in yuv420p."""
    codec = _CODECS[suffix]
    if codec == "libx264":
        arr = _pad_to_even(arr, label)
    rate = Fraction(fps).limit_denominator(1001)
    crf = DEFAULT_CRF[codec] if quality is None else quality
    options = {"crf": str(crf)}
    if codec == "libx264":
        # With x264's macroblock-tree rate control the output depends on stale heap memory at
        # some frame sizes (64x64, 96x96, 128x64 among them): the same frames encode to
        # different bytes from run to run. Without it every size tried encodes reproducibly,
        # in a bigger file at the same CRF (the demo story: 10.6 KB at 40.2 dB, not 5.6 KB at 39.2).
        options["x264-params"] = "mbtree=0"
    if codec == "libvpx-vp9":  # constant quality mode, reasonably fast
        options.update({"b:v": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"})
    # bitexact: no random Matroska/WebM UIDs and no muxer version string, so the file
    # depends on the frames alone
    container = av.open(str(tmp), mode="w", format=_CONTAINER_FORMATS[suffix], options={"fflags": "+bitexact"})
    try:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height = arr.shape[2], arr.shape[1]
        stream.pix_fmt = "yuv420p"
        for i, frame in enumerate(arr):
            vf = _frame_to_av(frame)
            vf.pts, vf.time_base = i, 1 / rate
            container.mux(stream.encode(vf))
        container.mux(stream.encode(None))
    except BaseException:
        _close_quietly(container)
        raise
    container.close()  # writes the trailer; errors here are real write errors


def _pad_to_even(arr: np.ndarray, where: Path) -> np.ndarray:
    """H.264 in yuv420p needs even sizes: replicate the last row/column if odd."""
    pad_h, pad_w = arr.shape[1] % 2, arr.shape[2] % 2
    if not (pad_h or pad_w):
        return arr
    h, w = arr.shape[1], arr.shape[2]
    logger.warning(
        "%s: odd frame size %dx%d padded to %dx%d (last row/column repeated) for H.264",
        where, w, h, w + pad_w, h + pad_h,
    )
    return np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _encode_gif(tmp: Path, arr: np.ndarray, fps: float, *, label: Path) -> None:
    """GIF with an adaptive 255-colour palette per frame.

    Frame ``i`` starts at ``round(100 * i / fps)`` centiseconds, so single delays may
    differ by 1/100 s but the total duration (and average fps) is kept.
    """
    if fps > _GIF_MAX_FPS:
        logger.warning("%s: GIF cannot show %.3g fps; frames get the minimum delay (%g fps)", label, fps, _GIF_MAX_FPS)
        fps = _GIF_MAX_FPS
    starts = [round(100 * i / fps) for i in range(arr.shape[0] + 1)]
    container = av.open(str(tmp), mode="w", format="gif")
    try:
        # no transparency-diffing: with a full palette it can pick a used index (wrong colours)
        rate = Fraction(fps).limit_denominator(1001)
        stream = container.add_stream("gif", rate=rate, options={"gifflags": "-transdiff"})
        stream.width, stream.height = arr.shape[2], arr.shape[1]
        stream.pix_fmt = "pal8"
        stream.codec_context.time_base = Fraction(1, 100)
        durations: dict[int, int] = {}
        for i, frame in enumerate(arr):
            vf = _frame_to_av(_quantize(frame), "pal8")
            vf.pts, vf.time_base = starts[i], Fraction(1, 100)
            durations[starts[i]] = starts[i + 1] - starts[i]
            for packet in stream.encode(vf):
                _mux_gif_packet(container, packet, durations)
        for packet in stream.encode(None):
            _mux_gif_packet(container, packet, durations)
    except BaseException:
        _close_quietly(container)
        raise
    container.close()


def _close_quietly(container: av.container.OutputContainer) -> None:
    """Close after a failure without letting a second error hide the first one."""
    try:
        container.close()
    except Exception as exc:  # noqa: BLE001 - the original exception is re-raised by the caller
        logger.debug("ignoring error while closing a failed output: %s", exc)


def _mux_gif_packet(container: av.container.OutputContainer, packet: av.Packet, durations: dict[int, int]) -> None:
    """Give each packet its delay so the last frame's delay is right too."""
    if packet.pts is not None and packet.pts in durations:
        packet.duration = durations[packet.pts]
    container.mux(packet)


def _quantize(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGB frame -> (palette indices, 256x4 ARGB palette) for the pal8 encoder."""
    image = Image.fromarray(frame).quantize(_GIF_COLORS, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
    rgb = np.asarray(image.getpalette(), dtype=np.uint8).reshape(-1, 3)[:256]
    palette = np.zeros((256, 4), dtype=np.uint8)
    palette[:, 0] = 255  # opaque
    palette[: len(rgb), 1:] = rgb
    return np.asarray(image), palette


def _write_png_folder(final: Path, arr: np.ndarray) -> None:
    """Write frames to a temp folder, then swap it in; an older folder is removed last."""
    width = max(5, len(str(arr.shape[0] - 1)))

    def write(tmp: Path) -> None:
        for i, frame in enumerate(arr):
            _save_png(frame, tmp / f"frame_{i:0{width}d}.png")

    atomic_write_dir(final, write)


def _save_png(frame: np.ndarray, p: Path) -> None:
    Image.fromarray(frame).save(p, format="PNG", compress_level=4)


# --------------------------------------------------------------------------- resize / crop


def resize_video(
    frames: torch.Tensor | np.ndarray,
    size: SizeLike,
    *,
    antialias: bool = True,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Resize uint8 ``[T, H, W, 3]`` frames; ``size`` is the shorter side (int) or ``(h, w)``.

    Interpolates in float (``mode`` "bilinear" or "bicubic", antialiased when shrinking)
    and rounds back to uint8.  Returns the input unchanged if it already has the size.
    """
    x = _as_frames_tensor(frames, what="frames")
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"mode must be 'bilinear' or 'bicubic', got {mode!r}")
    T, H, W, _ = x.shape
    if isinstance(size, int):
        _check_positive(size, "size")
        short, long = (H, W) if H <= W else (W, H)
        new_long = max(1, round(long * size / short))
        h, w = (size, new_long) if H <= W else (new_long, size)
    else:
        h, w = _pair(size, "size")
    if (h, w) == (H, W):
        return x
    out = torch.empty((T, h, w, 3), dtype=torch.uint8)
    for i in range(0, T, 32):  # chunks keep float memory bounded for long clips
        chunk = x[i : i + 32].permute(0, 3, 1, 2).float()
        y = F.interpolate(chunk, size=(h, w), mode=mode, align_corners=False, antialias=antialias)
        out[i : i + 32] = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return out


def crop_video(
    frames: torch.Tensor | np.ndarray,
    size: SizeLike,
    *,
    mode: str = "center",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Crop the same window from every frame; ``size`` is a side (square) or ``(h, w)``.

    ``mode="random"`` draws the offset from ``generator`` (reproducible when seeded).
    """
    x = _as_frames_tensor(frames, what="frames")
    h, w = _pair(size, "size")
    H, W = x.shape[1], x.shape[2]
    if h > H or w > W:
        raise ValueError(f"crop size {h}x{w} (h x w) is larger than the frames ({H}x{W})")
    if mode == "center":
        top, left = (H - h) // 2, (W - w) // 2
    elif mode == "random":
        top = int(torch.randint(0, H - h + 1, (1,), generator=generator))
        left = int(torch.randint(0, W - w + 1, (1,), generator=generator))
    else:
        raise ValueError(f"crop mode must be 'center' or 'random', got {mode!r}")
    return x[:, top : top + h, left : left + w].contiguous()


def resize_and_crop(
    frames: torch.Tensor | np.ndarray,
    size: SizeLike,
    *,
    mode: str = "center",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Scale so the frames just cover ``size`` (square side or ``(h, w)``), then crop to it."""
    x = _as_frames_tensor(frames, what="frames")
    h, w = _pair(size, "size")
    H, W = x.shape[1], x.shape[2]
    scale = max(h / H, w / W)
    new_h, new_w = max(h, round(H * scale)), max(w, round(W * scale))
    return crop_video(resize_video(x, (new_h, new_w)), (h, w), mode=mode, generator=generator)


# --------------------------------------------------------------------------- helpers


def _as_frames_tensor(frames: Any, *, what: str) -> torch.Tensor:
    """Validate uint8 ``[T, H, W, 3]`` frames; numpy arrays are converted (no copy if possible)."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor or numpy array, got {type(frames).__name__}")
    if frames.dtype != torch.uint8:
        raise ValueError(
            f"{what} must be uint8, got {frames.dtype} (convert floats in [0, 1] with (x * 255).round().to(torch.uint8))"
        )
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{what} must have shape [T, H, W, 3], got {list(frames.shape)}")
    return frames


def _as_frames_array(frames: Any) -> np.ndarray:
    """Frames as a C-contiguous uint8 numpy array for the encoders."""
    x = _as_frames_tensor(frames, what="frames")
    return np.ascontiguousarray(x.detach().cpu().numpy())


def _check_fps(fps: Any, *, what: str) -> float:
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a positive number, got {fps!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number, got {fps!r}")
    return value


def _check_positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _pair(size: SizeLike, name: str) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        s = _check_positive(size, name)
        return s, s
    if isinstance(size, Sequence) and len(size) == 2:
        return _check_positive(size[0], name), _check_positive(size[1], name)
    raise ValueError(f"{name} must be an int or an (h, w) pair, got {size!r}")


def _crop_codec_padding(frames: torch.Tensor, height: Any, width: Any, side: Path) -> torch.Tensor:
    """Undo the one-pixel even-size padding of H.264 when the sidecar knows the real size."""
    if not isinstance(height, int) or not isinstance(width, int):
        return frames
    H, W = frames.shape[1], frames.shape[2]
    if (H, W) != (height, width) and 0 <= H - height <= 1 and 0 <= W - width <= 1:
        logger.debug("cropping codec padding %dx%d -> %dx%d (size from %s)", W, H, width, height, side)
        return frames[:, :height, :width].contiguous()
    return frames


def _remap_scenes(scenes: list[Scene], source_indices: list[int]) -> list[Scene]:
    """Scenes in source frame numbers -> scenes over the returned frames (which show
    ``source_indices``, non-decreasing); empty ones are dropped."""
    out = []
    for s in scenes:
        lo, hi = bisect.bisect_left(source_indices, s.start), bisect.bisect_left(source_indices, s.end)
        if hi > lo:
            out.append(Scene(s.prompt, lo, hi))
    return out


__all__ = [
    "DEFAULT_CRF",
    "DEFAULT_FOLDER_FPS",
    "IMAGE_SUFFIXES",
    "Scene",
    "Video",
    "VideoError",
    "VideoInfo",
    "VideoNotFoundError",
    "VideoWriteError",
    "WRITE_SUFFIXES",
    "crop_video",
    "probe_video",
    "read_video",
    "resize_and_crop",
    "resize_video",
    "sidecar_path",
    "write_video",
]


# ----------------------------------------------------------------------------- frames and model pixels


def frames_to_pixels(video: torch.Tensor) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float [B, 3, T, H, W] in [0, 1] (the models' input)."""
    return video.permute(0, 4, 1, 2, 3).float().div_(255.0)


def pixels_to_frames(pixels: torch.Tensor) -> torch.Tensor:
    """float [B, 3, T, H, W] in [0, 1] -> uint8 [B, T, H, W, 3]."""
    return pixels.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu()

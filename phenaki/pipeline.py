"""Phenaki: a story (a list of prompts) in, one video out.

`Phenaki.from_pretrained(dir)` loads the parts of a pipeline folder (layout:
`phenaki.checkpoint`) with its sampling defaults (`SamplingSettings`).

The story loop: scene 1 is generated from its prompt alone; every later scene is
generated from its own prompt with the last `context_frames` frames of the video so
far re-encoded as a fixed prime, so the object, its place and its motion carry across
the cut. A scene longer than one window is generated in several windows with the
same prompt. Only the current window lives on the device, so memory stays flat as a
story grows and time grows linearly with its length. Each window is drawn by
`phenaki.sampling.search.draw`: the decode loop, then the choice among draws.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .checkpoint import (
    PIPELINE_FILE,
    CheckpointError,
    pipeline_text_encoder,
    read_pipeline_settings,
    resolve_folder,
    write_pipeline_settings,
)
from .config import DECODER_ONLY_FIELDS, ConfigError, from_dict, same_token_ids, to_dict
from .integrity import record_folder, verify_folder
from .kernels import KernelChoice, resolve_kernels, tune_sampling, use_threads
from .models.cvivit import CViViT
from .models.maskgit import MaskGit
from .models.matcher import TextVideoMatcher
from .models.text import TextEncoder
from .sampling.search import WindowScore, draw, matcher_score
from .sampling.settings import SamplingSettings
from .story import StoryScene, parse_scene_line
from .utils.fileio import atomic_write_dir
from .utils.progress import progress_reporter
from .utils.torch_utils import resolve_device, resolve_dtype
from .video import (
    Scene,
    Video,
    frames_to_pixels,
    pixels_to_frames,
    read_video,
    resize_and_crop,
)

log = logging.getLogger(__name__)

Progress = Callable[[int, int, int, int], object]  # (steps done, steps in all, scene, scenes)


class PipelineError(ValueError):
    """A generation request cannot be met (bad lengths, missing checkpoint); the message says why."""


class UnreadablePromptError(PipelineError):
    """A prompt has no word the model's closed vocabulary knows: the model could only ignore it."""


class GenerationStopped(Exception):
    """A step callback asked to stop: `generate` returns nothing and nothing was written."""


@dataclass(frozen=True)
class StepInfo:
    """What a step callback sees after every decoding step: where the story stands and the token ids
    of the current window as they are now ([rows, T', H', W'], masked positions hold the mask id)."""

    scene: int
    scenes: int
    window: int
    windows: int
    step: int
    steps: int
    tokens: torch.Tensor


StepCallback = Callable[[StepInfo], object]  # returns True to stop the run


def seconds_to_frames(seconds: float, fps: float, temporal_patch: int) -> int:
    """A duration as new frames: the nearest whole number of tubelets (at least one)."""
    return max(1, round(seconds * fps / temporal_patch)) * temporal_patch


@dataclass
class SceneRequest:
    """One scene to generate: its prompt, its own new-frame count (None: the run's), its settings."""

    prompt: str
    frames: int | None
    settings: SamplingSettings

    def own_settings(self, run: SamplingSettings) -> dict[str, Any]:
        """What this scene sets differently from the run (its length included), as the sidecar records it."""
        own = {k: v for k, v in to_dict(self.settings).items() if v != getattr(run, k)}
        return own if self.frames is None else {"frames": self.frames, **own}

    @classmethod
    def from_story(cls, scene: StoryScene | str, run: SamplingSettings, temporal_patch: int) -> "SceneRequest":
        """A story line's request: its bracket settings applied over the run's."""
        if isinstance(scene, str):
            scene = parse_scene_line(scene)
        overrides = dict(scene.settings)
        frames = overrides.pop("frames", None)
        seconds = overrides.pop("seconds", None)
        if frames is None and seconds is not None:
            frames = seconds_to_frames(seconds, run.fps, temporal_patch)
        # explicit values, `none` included (it clears an optional setting for this scene), checked as a whole
        return cls(scene.prompt, frames, dataclasses.replace(run, **overrides) if overrides else run)


class Phenaki:
    """Tokenizer + transformer + text encoder + sampling defaults: the text-to-video model."""

    def __init__(self, tokenizer: CViViT, transformer: MaskGit, text_encoder: TextEncoder,
                 sampling: SamplingSettings | None = None, *, fps: float | None = None,
                 device: str | torch.device = "auto", dtype: str | torch.dtype | None = "auto",
                 source: str | None = None, info: dict[str, Any] | None = None,
                 matcher: TextVideoMatcher | None = None, kernels: str | None = None,
                 compile: bool = False) -> None:
        if transformer.codebook_size != tokenizer.codebook_size:
            raise PipelineError(
                f"transformer codebook {transformer.codebook_size} != tokenizer codebook {tokenizer.codebook_size}"
            )
        if tuple(transformer.token_grid) != tuple(tokenizer.token_grid):
            raise PipelineError(f"transformer grid {transformer.token_grid} != tokenizer grid {tokenizer.token_grid}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.tokenizer = tokenizer.to(self.device).eval()
        self.transformer = transformer.to(self.device).eval()
        self.text_encoder = text_encoder.to(self.device).eval()
        if matcher is not None:
            if matcher.config.text_dim != text_encoder.dim:
                raise PipelineError(f"matcher reads text of width {matcher.config.text_dim}, the text encoder gives "
                                    f"{text_encoder.dim}: it was trained for another pipeline")
            if tuple(matcher.config.image_size) != tuple(tokenizer.config.image_size):
                raise PipelineError(f"matcher frames {matcher.config.image_size} != tokenizer frames "
                                    f"{tokenizer.config.image_size}")
            matcher = matcher.to(self.device).eval()
        self.matcher = matcher
        self.sampling = (sampling or SamplingSettings()).replace(fps=fps or None)
        self.source = source
        self.info = info or {}
        self.kernels = resolve_kernels(kernels)  # phenaki.kernels: measured per machine on first use
        self.compiled = compile  # torch.compile the transformer and tokenizer, after the kernels are chosen
        self._compile_done = False

    @property
    def fps(self) -> float:
        """Frames per second of the videos this pipeline makes (`sampling.fps`)."""
        return self.sampling.fps

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, *, revision: str | None = None,
                        device: str | torch.device = "auto", dtype: str | torch.dtype | None = "auto",
                        kernels: str | None = None, compile: bool = False) -> "Phenaki":
        """Load a pipeline: a folder, a Hub repo id ("org/name", through the Hugging Face cache;
        `revision` picks a commit, branch or tag; HF_HUB_OFFLINE=1 uses the cache alone), or with no
        argument the demo model shipped with the package (offline). `kernels` (auto | sdpa | explicit |
        default; `PHENAKI_KERNELS`) and `compile` say how it runs on this machine (`phenaki.kernels`)."""
        try:
            root = resolve_folder(path, revision)
        except CheckpointError as exc:
            raise PipelineError(str(exc)) from None
        if not root.is_dir():
            raise PipelineError(f"{root} is not a Phenaki checkpoint directory: no such folder (the demo model "
                                "is missing from this installation)")
        checked = verify_folder(root) is not None  # the whole folder at once; parts then skip their own
        try:
            settings = read_pipeline_settings(root)
        except CheckpointError as exc:
            raise PipelineError(str(exc)) from None
        try:
            sampling = from_dict(SamplingSettings, settings.get("sampling", {}), "sampling")
            fps = settings.get("fps")
            if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float))):
                raise ConfigError(f"fps: expected a number, got {fps!r}")
        except ConfigError as exc:
            raise PipelineError(f"{root / PIPELINE_FILE}: {exc}") from None
        parts = {"verify": not checked}
        text = _load_part(root / "text_encoder", lambda: pipeline_text_encoder(root, settings, trainable=False,
                                                                               **parts))
        matcher = None
        if (root / "matcher").is_dir():
            matcher = _load_part(root / "matcher", lambda: TextVideoMatcher.from_pretrained(root / "matcher", **parts))
        tokenizer = _load_part(root / "tokenizer", lambda: CViViT.from_pretrained(root / "tokenizer", **parts))
        transformer = _load_part(root / "transformer", lambda: MaskGit.from_pretrained(root / "transformer", **parts))
        return cls(tokenizer, transformer, text, sampling, fps=fps, device=device, dtype=dtype, source=str(root),
                   info=settings, matcher=matcher, kernels=kernels, compile=compile)

    def save_pretrained(self, path: str | Path, *, dtype: torch.dtype | None = None,
                        text_dtype: torch.dtype | None | str = "same") -> Path:
        """Write the same layout `from_pretrained` reads (weights optionally cast, e.g. bf16;
        the text encoder as `dtype` too unless `text_dtype` says otherwise, None: as it is)."""
        text_cast = dtype if text_dtype == "same" else text_dtype

        def write(tmp: Path) -> None:
            self.tokenizer.save_pretrained(tmp / "tokenizer", dtype=dtype)
            self.transformer.save_pretrained(tmp / "transformer", dtype=dtype)
            self.text_encoder.save_pretrained(tmp / "text_encoder", dtype=text_cast)  # type: ignore[arg-type]
            if self.matcher is not None:
                self.matcher.save_pretrained(tmp / "matcher", dtype=dtype)
            settings = dict(self.info)
            settings.update({"text_encoder": "text_encoder", "sampling": to_dict(self.sampling), "fps": self.fps})
            write_pipeline_settings(tmp, settings)
            record_folder(tmp)

        return atomic_write_dir(path, write)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, commit_message: str = "Upload Phenaki model",
                    token: str | None = None, dtype: torch.dtype | None = None) -> str:
        """Save this pipeline and upload the folder to the Hugging Face Hub (needs huggingface_hub and a
        login); returns the commit's URL. `Phenaki.from_pretrained(repo_id)` loads it back."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "model", dtype=dtype)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
        return str(getattr(info, "commit_url", info))

    def with_transformer(self, transformer: MaskGit, **info: Any) -> "Phenaki":
        """This pipeline with another transformer over the same token ids (e.g. `without_blocks`).

        `info` entries are added to what `pipeline.json` records, so an export says how its
        transformer came about.
        """
        return self._with_parts(self.tokenizer, transformer, {**self.info, **info}, self.matcher)

    def _with_parts(self, tokenizer: CViViT, transformer: MaskGit, info: dict[str, Any],
                    matcher: TextVideoMatcher | None) -> "Phenaki":
        """A pipeline like this one around other parts (the constructor checks they fit)."""
        return Phenaki(tokenizer, transformer, self.text_encoder, self.sampling, fps=self.fps,
                       device=self.device, dtype=self.dtype, source=self.source, info=info, matcher=matcher,
                       kernels=self.kernels, compile=self.compiled)

    def with_matcher(self, matcher: TextVideoMatcher | None, **info: Any) -> "Phenaki":
        """This pipeline with `matcher` (trained for its text encoder; None: without one)."""
        return self._with_parts(self.tokenizer, self.transformer, {**self.info, **info}, matcher)

    def with_tokenizer_decoder(self, tokenizer: CViViT) -> "Phenaki":
        """This pipeline with `tokenizer` in place of its own, when only the decoder differs.

        A decoder-only fine-tune (`train_tokenizer.decoder_only`) keeps the encoder and the
        quantizer, so every id the transformer learned still means the same patch; any other
        tokenizer would silently scramble them, so it is refused.
        """
        ours = self.tokenizer
        if not same_token_ids(tokenizer.config, ours.config):
            theirs_cfg = to_dict(tokenizer.config)
            differ = sorted(k for k, v in to_dict(ours.config).items()
                            if theirs_cfg.get(k) != v and k not in DECODER_ONLY_FIELDS)
            raise PipelineError(f"the new tokenizer's settings differ from the pipeline's beyond the decoder "
                                f"({', '.join(differ)}); only the decoder may differ")
        theirs, mine = tokenizer.encoder_state_dict(), ours.encoder_state_dict()
        if theirs.keys() != mine.keys():
            changed = sorted(theirs.keys() ^ mine.keys())
        else:  # compared in the pipeline's dtype: a bf16 export of the same weights is the same encoder
            changed = [k for k, v in mine.items() if theirs[k].shape != v.shape or not torch.equal(theirs[k].to(v), v)]
        if changed:
            shown = ", ".join(changed[:3])
            raise PipelineError(
                f"the new tokenizer's encoder differs from the pipeline's ({shown}): its ids would not mean what "
                "the transformer learned. Only a decoder-only fine-tune of this pipeline's tokenizer "
                "(train_tokenizer.init_from + decoder_only) can replace it"
            )
        return self._with_parts(tokenizer, self.transformer, self.info, self.matcher)

    # ------------------------------------------------------------------ geometry
    @property
    def temporal_patch(self) -> int:
        return self.tokenizer.config.temporal_patch_size

    @property
    def max_window_frames(self) -> int:
        """Frames one transformer window covers (1 + pt * (max_token_frames - 1))."""
        return self.tokenizer.num_frames(self.transformer.config.max_token_frames)

    def _check_lengths(self, s: SamplingSettings) -> None:
        pt = self.temporal_patch
        if (s.context_frames - 1) % pt:
            raise PipelineError(
                f"context_frames must be 1 + {pt}*k so the prime fills whole token-frames; got {s.context_frames}"
            )
        if s.context_frames + pt > self.max_window_frames:
            raise PipelineError(
                f"context_frames {s.context_frames} leaves no room for new frames in a window of "
                f"{self.max_window_frames} frames"
            )

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        prompts: Sequence[str | StoryScene] | Sequence[Sequence[str | StoryScene]] | str,
        *,
        seed: int = 0,
        settings: SamplingSettings | None = None,
        prime: str | Path | Video | None = None,
        num_samples: int = 1,
        progress: bool | Progress = False,
        scene_seconds: float | None = None,
        generator: torch.Generator | None = None,
        callback: StepCallback | None = None,
        **overrides: Any,
    ) -> Video | list[Video]:
        """Generate one video for a story (or `num_samples` videos of it, batched).

        `prompts` is a list of scene prompts (a string is a one-scene story), or a list
        of such stories with the same number of scenes, generated together in one batch
        (a list of videos comes back, `num_samples` per story); a line may carry its own
        settings as in story files: `a red ball rises [frames=12 steps=8]`.

        Every sampling setting (`SamplingSettings`: steps, guidance, candidates, polish, ...,
        first_frames, scene_frames, context_frames, fps) is a keyword override of `settings`
        (default: the model's, `self.sampling`): `generate(prompts, steps=12, candidates=1)`.
        Scene 1 has `first_frames` frames, later scenes `scene_frames` new frames each (or
        `scene_seconds` * fps); 1 frame for a single scene is text-to-image. `prime` continues
        a user's video instead of starting afresh; its frames open the output and its scene is
        labelled "<prime>". `progress`: True for a tqdm bar on stderr (what `phenaki-sample`
        shows), or a callback `(done, total, scene, scenes)`; the library stays quiet by default.
        Without a matcher in the model, the defaults' `match_weight` is not used and an explicit
        one is an error. `negative_prompt` (or `[negative="..."]` on a story line) is the text
        guidance pushes away from instead of the empty text. A prompt with no word in the model's
        closed vocabulary raises `UnreadablePromptError`; unknown words in others are left out
        (`unknown_words` lists them). `generator` (a `torch.Generator` on the model's device)
        replaces `seed`. `callback(StepInfo)` is called after every decoding step; returning True
        stops the run with `GenerationStopped`, before anything is returned or written.
        """
        stories, several = _stories(prompts)
        if num_samples < 1:
            raise PipelineError(f"num_samples must be >= 1, got {num_samples}")
        run = self._run_settings(settings or self.sampling, overrides, scene_seconds)
        requests = [[SceneRequest.from_story(p, run, self.temporal_patch) for p in story] for story in stories]
        self.unknown_words([text for story in requests for r in story
                            for text in (r.prompt, r.settings.negative_prompt) if text])
        for story in requests[1:]:
            for a, b in zip(requests[0], story):
                if (a.frames, a.settings) != (b.frames, b.settings):
                    raise PipelineError(
                        f"stories generated together need the same per-scene settings: '{a.prompt}' vs '{b.prompt}'"
                    )
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        started = time.perf_counter()
        choice = self.tune_kernels(1, run)
        if self.compiled and not self._compile_done:
            self._compile()
        with use_threads(choice.threads):
            videos = self._run_story(requests, run, generator, prime, num_samples,
                                     _StepReporter(progress, callback, requests[0]))
        seconds = time.perf_counter() - started
        recorded_seed = seed if generator.initial_seed() == seed else None  # a caller's generator: its seed
        for index, video in enumerate(videos):
            video.metadata.update({
                "prompts": [r.prompt for r in requests[index // num_samples]],
                "settings": {"seed": recorded_seed, "generator_seed": generator.initial_seed(), **to_dict(run)},
                "scene_settings": [r.own_settings(run) for r in requests[index // num_samples]],
                "checkpoint": self.source,
                "device": str(self.device),
                "dtype": str(self.dtype).replace("torch.", ""),
                "kernels": {"attention": choice.attention or "default", "threads": choice.threads or None},
                "seconds": round(seconds, 3),
            })
        return videos[0] if len(videos) == 1 and not several else videos

    def unknown_words(self, prompts: Sequence[str]) -> dict[str, list[str]]:
        """The words of each prompt the model's text encoder does not know (it leaves them out); raises
        `UnreadablePromptError` naming them when a prompt has no word it knows."""
        found: dict[str, list[str]] = {}
        for prompt in dict.fromkeys(prompts):
            unknown, readable = self.text_encoder.unknown_words(prompt)
            if unknown and not readable:
                raise UnreadablePromptError(f"the model knows none of the words of {prompt!r} "
                                            f"({', '.join(unknown)}): it reads a closed vocabulary")
            if unknown:
                found[prompt] = unknown
        return found

    def _run_settings(self, base: SamplingSettings, overrides: dict[str, Any],
                      scene_seconds: float | None) -> SamplingSettings:
        """The run's settings: `base` with the caller's overrides, checked against this model's parts."""
        if scene_seconds is not None:
            if overrides.get("scene_frames") is not None:
                raise PipelineError("give scene_frames or scene_seconds, not both")
            fps = overrides.get("fps") or base.fps
            overrides = {**overrides, "scene_frames": seconds_to_frames(scene_seconds, fps, self.temporal_patch)}
        run = base.replace(**overrides)
        if run.match_weight > 0 and self.matcher is None:
            if overrides.get("match_weight") is not None:
                raise PipelineError("match_weight: this model has no matcher (no matcher/ in its directory)")
            log.info("no matcher in this model: the sampling settings' match_weight is not used")
            run = run.replace(match_weight=0.0)
        self._check_lengths(run)
        return run

    def tune_kernels(self, rows: int = 1, settings: SamplingSettings | None = None) -> KernelChoice:
        """The attention path and threads that sample fastest here (`phenaki.kernels`): timed once per
        machine, model and dtype on the transformer's guided forward and the tokenizer's decode at the
        shapes of `rows` videos drawn with `settings` (default: the model's), then read from the cache.
        `generate` measures at one video with its run's settings and keeps to that choice whatever
        its batch, so a video does not depend on what else was drawn beside it."""
        s = settings or self.sampling
        # a whole window, as the first scene and every continuation draw it (the run's own lengths are
        # checked later, with the story's plan)
        frames = min(self.tokenizer.num_token_frames(self.tokenizer.config.num_frames),
                     self.transformer.config.max_token_frames)
        return tune_sampling(self.transformer, self.tokenizer, rows=rows,
                             batch=rows * s.candidates * (2 if s.guidance != 1 else 1), token_frames=frames,
                             text_len=self.text_encoder.max_length, dtype=self.dtype, device=self.device,
                             mode=self.kernels)

    def _compile(self) -> None:
        """torch.compile the transformer's forward and the tokenizer's encode and decode, in place: the
        first windows then wait for compilation (BENCHMARKS.md has the cost and the gain per machine)."""
        self._compile_done = True
        self.transformer.compile()
        self.tokenizer.encode = torch.compile(self.tokenizer.encode)  # type: ignore[method-assign]
        self.tokenizer.decode = torch.compile(self.tokenizer.decode)  # type: ignore[method-assign]

    def _autocast(self):
        enabled = self.dtype != torch.float32
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled)

    def _prime_frames(self, prime: str | Path | Video, settings: SamplingSettings) -> torch.Tensor:
        """The user's video at the model's size and fps, as uint8 [T, H, W, 3]."""
        if isinstance(prime, Video):
            frames = prime.frames
        else:
            frames, _ = read_video(prime, fps=settings.fps)
        frames = resize_and_crop(frames, self.tokenizer.config.image_size)
        if frames.shape[0] < settings.context_frames:
            raise PipelineError(
                f"prime video has {frames.shape[0]} frames at {settings.fps:g} fps; at least "
                f"{settings.context_frames} (context_frames) are needed"
            )
        return frames

    def _run_story(self, stories: list[list[SceneRequest]], run: SamplingSettings, generator: torch.Generator,
                   prime: str | Path | Video | None, num_samples: int, report: "_StepReporter") -> list[Video]:
        rows = len(stories) * num_samples  # story i owns rows i*num_samples ... (i+1)*num_samples - 1
        history: torch.Tensor | None = None  # uint8 [rows, T, H, W, 3] on the CPU
        ranges: list[tuple[int, int]] = []
        if prime is not None:
            history = self._prime_frames(prime, run)[None].repeat(rows, 1, 1, 1, 1)
            ranges.append((0, history.shape[1]))
        plan = self._plan(stories[0], run, has_prime=prime is not None)
        report.start(plan)
        for index, (request, windows) in enumerate(plan):
            start = 0 if history is None else history.shape[1]
            text = self.text_encoder.encode([story[index].prompt for story in stories for _ in range(num_samples)])
            negative = request.settings.negative_prompt
            negative_text = None if negative is None else self.text_encoder.encode([negative] * rows)
            for window, new_frames in enumerate(windows):
                frames = self._window(text, negative_text, history, new_frames, request.settings, generator,
                                      report.window(index, window))
                history = frames if history is None else torch.cat([history, frames], dim=1)
            ranges.append((start, history.shape[1]))  # type: ignore[union-attr]
        report.close()
        assert history is not None
        videos = []
        for row in range(rows):
            story = stories[row // num_samples]
            names = (["<prime>"] if prime is not None else []) + [r.prompt for r in story]
            scenes = [Scene(name, a, b) for name, (a, b) in zip(names, ranges)]
            videos.append(Video(history[row].contiguous(), run.fps, scenes, {}))
        return videos

    def _window(self, text: tuple[torch.Tensor, torch.Tensor], negative: tuple[torch.Tensor, torch.Tensor] | None,
                history: torch.Tensor | None, new_frames: int, settings: SamplingSettings,
                generator: torch.Generator, progress: Callable[[int, int, torch.Tensor], object]) -> torch.Tensor:
        """`new_frames` frames of one window (uint8 [rows, new_frames, H, W, 3]), primed with the
        last `context_frames` of `history` when there is one."""
        if history is None:
            token_frames = self.tokenizer.num_token_frames(new_frames)
            prime_ids = None
        else:
            context = history[:, -settings.context_frames:]
            with torch.no_grad(), self._autocast():
                prime_ids = self.tokenizer.encode(frames_to_pixels(context).to(self.device))
            token_frames = prime_ids.shape[1] + new_frames // self.temporal_patch
        with torch.no_grad(), self._autocast():
            ids = draw(self.transformer, text, prime_ids, settings, generator, num_token_frames=token_frames,
                       window_score=self._window_score(text, new_frames, settings), progress=progress,
                       negative=negative)
            pixels = self.tokenizer.decode(ids)
        return pixels_to_frames(pixels)[:, -new_frames:]

    def _window_score(self, text: tuple[torch.Tensor, torch.Tensor], new_frames: int,
                      settings: SamplingSettings) -> WindowScore | None:
        """The matcher's say in the choice among candidates, when the model has one and it is asked for."""
        if self.matcher is None or settings.match_weight <= 0 or settings.candidates < 2:
            return None
        return matcher_score(self.matcher, self.tokenizer, text, new_frames, settings.match_weight,
                             settings.candidates)

    def _plan(self, requests: list[SceneRequest], s: SamplingSettings, has_prime: bool) -> list[tuple[SceneRequest, list[int]]]:
        """Split every scene into windows: how many new frames each window generates."""
        pt = self.temporal_patch
        window = self.max_window_frames
        step_new = window - s.context_frames  # new frames a primed window can add
        step_new -= step_new % pt
        plan = []
        for index, request in enumerate(requests):
            first_scene = index == 0 and not has_prime
            wanted = request.frames or (s.first_frames if first_scene else s.scene_frames)
            windows: list[int] = []
            if first_scene:
                head = min(wanted, window)
                if (head - 1) % pt:
                    raise PipelineError(
                        f"the first scene's frame count must be 1 + {pt}*k (e.g. {head - (head - 1) % pt} or "
                        f"{head + pt - (head - 1) % pt}); got {wanted}"
                    )
                windows.append(head)
                wanted -= head
            if wanted % pt:
                raise PipelineError(
                    f"scene {index + 1} ('{request.prompt}'): new frames come in groups of {pt}; "
                    f"got {request.frames or wanted} (use {wanted - wanted % pt or pt} or {wanted + pt - wanted % pt})"
                )
            while wanted > 0:
                take = min(wanted, step_new)
                windows.append(take)
                wanted -= take
            plan.append((request, windows))
        return plan


class _StepReporter:
    """After every decoding step: the progress bar or callback of steps done, and the step callback,
    which may stop the run."""

    def __init__(self, progress: bool | Progress, callback: StepCallback | None, requests: list[SceneRequest]) -> None:
        self.progress, self.callback = progress, callback
        self.done, self.total, self.windows = 0, 0, [1] * len(requests)
        self.report: Callable[..., None] = lambda *args, **kwargs: None
        self.steps = [r.settings.steps for r in requests]

    def start(self, plan: list[tuple[SceneRequest, list[int]]]) -> None:
        self.windows = [len(windows) for _, windows in plan]
        self.total = sum(n * steps for n, steps in zip(self.windows, self.steps))
        self.report = progress_reporter(self.progress, self.total, len(plan))

    def window(self, scene: int, window: int) -> Callable[[int, int, torch.Tensor], None]:
        """The decode loop's hook for one window (scene and window counted from 0)."""
        base = self.done
        self.done += self.steps[scene]

        def hook(step: int, steps: int, ids: torch.Tensor) -> None:
            self.report(base + step, scene + 1)
            if self.callback is not None:
                info = StepInfo(scene + 1, len(self.windows), window + 1, self.windows[scene], step, steps, ids)
                if self.callback(info) is True:
                    raise GenerationStopped(f"stopped by the step callback at scene {scene + 1}, step {step}")

        return hook

    def close(self) -> None:
        self.report(self.total, len(self.windows), close=True)


def _load_part(folder: Path, load: Callable[[], Any]) -> Any:
    """One part of a pipeline folder; whatever breaks while reading it becomes one line naming it."""
    try:
        return load()
    except (CheckpointError, PipelineError, ConfigError):
        raise
    except Exception as exc:  # noqa: BLE001 - third-party readers (transformers, tokenizers) raise their own types
        text = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{folder}: cannot be loaded ({type(exc).__name__}: {text})") from None


def _stories(prompts: Any) -> tuple[list[list[str | StoryScene]], bool]:
    """The stories a `generate` call asks for, and whether it asked for several."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise PipelineError("no prompts: a story needs at least one scene")
    several = not isinstance(prompts[0], (str, StoryScene))
    stories = [list(p) for p in prompts] if several else [list(prompts)]
    if any(len(story) != len(stories[0]) for story in stories):
        raise PipelineError("stories generated together must have the same number of scenes")
    return stories, several

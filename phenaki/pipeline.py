"""Phenaki: a story (a list of prompts) in, one video out.

`Phenaki.from_pretrained(dir)` loads the three parts of a checkpoint directory:

    dir/tokenizer/      CViViT (config.json + model.safetensors)
    dir/transformer/    MaskGit (config.json + model.safetensors)
    dir/text_encoder/   the text encoder (or pipeline.json names a pretrained one)
    dir/matcher/        optional: the text-video matcher that helps choose among candidates
    dir/pipeline.json   sampling defaults, fps, and how the model was trained

The story loop: scene 1 is generated from its prompt alone; every later scene is
generated from its own prompt with the last `context_frames` frames of the video so
far re-encoded as a fixed prime, so the object, its place and its motion carry across
the cut. A scene longer than one window is generated in several windows with the
same prompt. Only the current window lives on the device, so memory stays flat as a
story grows and time grows linearly with its length.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .config import DECODER_ONLY_FIELDS, SamplingConfig, from_dict, same_token_ids, to_dict
from .cvivit import CViViT
from .fileio import atomic_write_dir, atomic_write_text
from .maskgit import MaskGit
from .matcher import TextVideoMatcher, frames_to_matcher
from .sampling import sample
from .story import StoryScene, parse_scene_line
from .text import TextEncoder
from .torch_utils import resolve_device, resolve_dtype
from .training import frames_to_pixels, pixels_to_frames
from .video import Scene, Video, read_video, resize_and_crop, sidecar_path

log = logging.getLogger(__name__)

PIPELINE_FILE = "pipeline.json"
DEMO_NAME = "phenaki-shapes"


class PipelineError(ValueError):
    """A generation request cannot be met (bad lengths, missing checkpoint); the message says why."""


def demo_checkpoint() -> Path:
    """The demo model shipped in the repository's `assets/` folder."""
    return Path(__file__).resolve().parents[1] / "assets" / DEMO_NAME


def seconds_to_frames(seconds: float, fps: float, temporal_patch: int) -> int:
    """A duration as new frames: the nearest whole number of tubelets (at least one)."""
    return max(1, round(seconds * fps / temporal_patch)) * temporal_patch


@dataclass
class SceneRequest:
    """One scene to generate: its prompt and the settings that differ from the defaults."""

    prompt: str
    frames: int | None = None
    guidance: float | None = None
    temperature: float | None = None
    steps: int | None = None

    @classmethod
    def from_story(cls, scene: StoryScene | str, fps: float, temporal_patch: int) -> "SceneRequest":
        if isinstance(scene, str):
            scene = parse_scene_line(scene)
        s = scene.settings
        frames = s.get("frames")
        if frames is None and "seconds" in s:
            frames = seconds_to_frames(s["seconds"], fps, temporal_patch)
        return cls(scene.prompt, frames, s.get("guidance"), s.get("temperature"), s.get("steps"))


@dataclass
class GenerationSettings:
    """Everything that decides the frames of a run (recorded in the output's sidecar)."""

    seed: int
    steps: int
    guidance: float
    temperature: float
    first_frames: int
    scene_frames: int
    context_frames: int
    fps: float
    schedule: str
    top_k: int | None = None
    top_p: float | None = None
    guidance_ramp: bool = False
    choice_temperature: float | None = None
    temporal_bias: float = 0.0
    use_critic: bool = False
    critic_revise: bool = False
    candidates: int = 1
    polish: float = 0.0
    polish_passes: int = 1
    relevance_floor: float = 0.0
    match_weight: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def pipeline_text_encoder(root: Path, settings: dict[str, Any], **kwargs: Any) -> TextEncoder:
    """The text encoder a pipeline names: its own folder (copied in), or a hub name/path it references."""
    text_ref = settings.get("text_encoder", "text_encoder")
    text_dir = root / text_ref
    return TextEncoder.from_pretrained(text_dir if text_dir.is_dir() else text_ref, **kwargs)


class Phenaki:
    """Tokenizer + transformer + text encoder + sampling defaults: the text-to-video model."""

    def __init__(self, tokenizer: CViViT, transformer: MaskGit, text_encoder: TextEncoder,
                 sampling: SamplingConfig | None = None, *, fps: float | None = None,
                 device: str | torch.device = "auto", dtype: str | torch.dtype | None = "auto",
                 source: str | None = None, info: dict[str, Any] | None = None,
                 matcher: TextVideoMatcher | None = None) -> None:
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
        self.sampling = sampling or SamplingConfig()
        self.fps = float(fps or self.sampling.fps)
        self.source = source
        self.info = info or {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, *, device: str | torch.device = "auto",
                        dtype: str | torch.dtype | None = "auto") -> "Phenaki":
        """Load a pipeline directory; with no argument, the demo model in `assets/` (offline)."""
        root = Path(path) if path is not None else demo_checkpoint()
        if not (root / PIPELINE_FILE).is_file():
            hint = "" if path is not None else " (the demo model is not in this checkout)"
            raise PipelineError(f"{root} is not a Phenaki checkpoint directory: no {PIPELINE_FILE}{hint}")
        settings = json.loads((root / PIPELINE_FILE).read_text(encoding="utf-8"))
        sampling = from_dict(SamplingConfig, settings.get("sampling", {}), "sampling")
        text = pipeline_text_encoder(root, settings, trainable=False)
        matcher = TextVideoMatcher.from_pretrained(root / "matcher") if (root / "matcher").is_dir() else None
        return cls(
            CViViT.from_pretrained(root / "tokenizer"),
            MaskGit.from_pretrained(root / "transformer"),
            text,
            sampling,
            fps=settings.get("fps"),
            device=device,
            dtype=dtype,
            source=str(root),
            info=settings,
            matcher=matcher,
        )

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
            atomic_write_text(tmp / PIPELINE_FILE, json.dumps(settings, indent=2, sort_keys=True) + "\n")

        return atomic_write_dir(path, write)

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
                       device=self.device, dtype=self.dtype, source=self.source, info=info, matcher=matcher)

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

    def _check_lengths(self, s: GenerationSettings) -> None:
        pt = self.temporal_patch
        if s.context_frames < 1 or (s.context_frames - 1) % pt:
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
        steps: int | None = None,
        guidance: float | None = None,
        temperature: float | None = None,
        temporal_bias: float | None = None,
        use_critic: bool | None = None,
        critic_revise: bool | None = None,
        candidates: int | None = None,
        polish: float | None = None,
        polish_passes: int | None = None,
        relevance_floor: float | None = None,
        match_weight: float | None = None,
        scene_frames: int | None = None,
        scene_seconds: float | None = None,
        first_frames: int | None = None,
        context_frames: int | None = None,
        prime: str | Path | Video | None = None,
        num_samples: int = 1,
        progress: bool | Callable[[int, int, int, int], object] = False,
    ) -> Video | list[Video]:
        """Generate one video for a story (or `num_samples` videos of it, batched).

        `prompts` is a list of scene prompts (a string is a one-scene story), or a list
        of such stories with the same number of scenes, generated together in one batch
        (a list of videos comes back, `num_samples` per story); a line may
        carry per-scene settings as in story files: `a red ball rises [frames=12]`.
        Scene 1 has `first_frames` frames, later scenes `scene_frames` new frames each
        (or `scene_seconds` * fps). A request of 1 frame for a single scene is
        text-to-image. `temporal_bias` overrides the sampling settings' (larger: earlier
        token-frames are revealed first); `use_critic` ranks tokens by the transformer's token
        critic, and `critic_revise` lets it re-mask tokens revealed earlier. `candidates` K
        draws every window K times and keeps the draw the transformer finds most likely
        (see `sampling`; about K times the sampling time); `polish` p then replaces every drawn
        token the transformer finds less likely than p, given all the others, by its likeliest
        token there (0: off), `polish_passes` times; `relevance_floor` r passes over candidates
        whose relevance to the text (likelihood given it minus given the null text) is below r times the best
        candidate's, so an empty window cannot win on likelihood alone (0: off); `match_weight` w
        adds w x the cosine similarity of each candidate's new frames and its prompt, as the
        pipeline's matcher sees them, to the candidate's likelihood (0: off; without a matcher,
        the sampling settings' weight is ignored and an explicit one is an error). `prime`
        continues a user's video instead of starting afresh; its
        frames open the output and its scene is labelled "<prime>". `progress`: True for a
        tqdm bar on stderr (what `phenaki-sample` shows), or a callback
        `(done, total, scene, scenes)`; the library itself stays quiet by default.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise PipelineError("no prompts: a story needs at least one scene")
        several = not isinstance(prompts[0], (str, StoryScene))
        stories = [list(p) for p in prompts] if several else [list(prompts)]  # type: ignore[arg-type]
        if any(len(story) != len(stories[0]) for story in stories):
            raise PipelineError("stories generated together must have the same number of scenes")
        if num_samples < 1:
            raise PipelineError(f"num_samples must be >= 1, got {num_samples}")
        s = self.sampling
        if scene_frames is not None and scene_seconds is not None:
            raise PipelineError("give scene_frames or scene_seconds, not both")
        if scene_seconds is not None:
            scene_frames = seconds_to_frames(scene_seconds, self.fps, self.temporal_patch)
        settings = GenerationSettings(
            seed=seed,
            steps=steps or s.steps,
            guidance=s.guidance if guidance is None else guidance,
            temperature=s.temperature if temperature is None else temperature,
            first_frames=first_frames or s.first_frames,
            scene_frames=scene_frames or s.scene_frames,
            context_frames=context_frames or s.context_frames,
            fps=self.fps,
            schedule=s.schedule,
            top_k=s.top_k,
            top_p=s.top_p,
            guidance_ramp=s.guidance_ramp,
            choice_temperature=s.choice_temperature,
            temporal_bias=s.temporal_bias if temporal_bias is None else temporal_bias,
            use_critic=s.use_critic if use_critic is None else use_critic,
            critic_revise=s.critic_revise if critic_revise is None else critic_revise,
            candidates=s.candidates if candidates is None else candidates,
            polish=s.polish if polish is None else polish,
            polish_passes=s.polish_passes if polish_passes is None else polish_passes,
            relevance_floor=s.relevance_floor if relevance_floor is None else relevance_floor,
            match_weight=s.match_weight if match_weight is None else match_weight,
        )
        if settings.candidates < 1:
            raise PipelineError(f"candidates must be >= 1, got {settings.candidates}")
        if not 0.0 <= settings.polish < 1.0:
            raise PipelineError(f"polish must be in [0, 1), got {settings.polish}")
        if settings.polish_passes < 1:
            raise PipelineError(f"polish_passes must be >= 1, got {settings.polish_passes}")
        if not 0.0 <= settings.relevance_floor <= 1.0:
            raise PipelineError(f"relevance_floor must be in [0, 1], got {settings.relevance_floor}")
        if not 0.0 <= settings.match_weight < float("inf"):
            raise PipelineError(f"match_weight must be finite and >= 0, got {settings.match_weight}")
        if settings.match_weight > 0 and self.matcher is None:
            if match_weight is not None:
                raise PipelineError("match_weight: this model has no matcher (no matcher/ in its directory)")
            log.info("no matcher in this model: the sampling settings' match_weight is not used")
            settings.match_weight = 0.0
        if (settings.use_critic or settings.critic_revise) and not self.transformer.has_critic:
            raise PipelineError("use_critic / critic_revise: this model's transformer has no token critic")
        if settings.critic_revise and not settings.use_critic:
            raise PipelineError("critic_revise needs use_critic: only the critic can judge revealed tokens")
        self._check_lengths(settings)
        requests = [[SceneRequest.from_story(p, self.fps, self.temporal_patch) for p in story] for story in stories]
        for story in requests[1:]:
            for a, b in zip(requests[0], story):
                if (a.frames, a.guidance, a.temperature, a.steps) != (b.frames, b.guidance, b.temperature, b.steps):
                    raise PipelineError(
                        f"stories generated together need the same per-scene settings: '{a.prompt}' vs '{b.prompt}'"
                    )
        started = time.perf_counter()
        videos = self._run_story(requests, settings, prime, num_samples, progress)
        seconds = time.perf_counter() - started
        for index, video in enumerate(videos):
            video.metadata.update({
                "prompts": [r.prompt for r in requests[index // num_samples]],
                "settings": {k: v for k, v in vars(settings).items() if k != "extra"},
                "checkpoint": self.source,
                "device": str(self.device),
                "dtype": str(self.dtype).replace("torch.", ""),
                "seconds": round(seconds, 3),
            })
        return videos[0] if len(videos) == 1 and not several else videos

    def _autocast(self):
        enabled = self.dtype != torch.float32
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled)

    def _prime_frames(self, prime: str | Path | Video, settings: GenerationSettings) -> torch.Tensor:
        """The user's video at the model's size and fps, as uint8 [T, H, W, 3]."""
        if isinstance(prime, Video):
            frames = prime.frames
        else:
            frames, _ = read_video(prime, fps=self.fps)
        frames = resize_and_crop(frames, self.tokenizer.config.image_size)
        if frames.shape[0] < settings.context_frames:
            raise PipelineError(
                f"prime video has {frames.shape[0]} frames at {self.fps:g} fps; at least "
                f"{settings.context_frames} (context_frames) are needed"
            )
        return frames

    def _run_story(self, stories: list[list[SceneRequest]], settings: GenerationSettings,
                   prime: str | Path | Video | None, num_samples: int,
                   progress: bool | Callable[[int, int, int, int], object]) -> list[Video]:
        pt = self.temporal_patch
        generator = torch.Generator(device=self.device).manual_seed(settings.seed)
        rows = len(stories) * num_samples  # story i owns rows i*num_samples ... (i+1)*num_samples - 1
        history: torch.Tensor | None = None  # uint8 [rows, T, H, W, 3] on the CPU
        ranges: list[tuple[int, int]] = []
        if prime is not None:
            history = self._prime_frames(prime, settings)[None].repeat(rows, 1, 1, 1, 1)
            ranges.append((0, history.shape[1]))
        requests = stories[0]
        plan = self._plan(requests, settings, has_prime=prime is not None)
        total_steps = sum(len(windows) for _, windows in plan) * settings.steps
        bar = _progress_bar(progress, total_steps, len(requests))
        done = 0
        for index, (request, windows) in enumerate(plan):
            start = 0 if history is None else history.shape[1]
            text_emb, text_mask = self.text_encoder.encode(
                [story[index].prompt for story in stories for _ in range(num_samples)]
            )
            for new_frames in windows:
                steps = request.steps or settings.steps
                if history is None:
                    token_frames = self.tokenizer.num_token_frames(new_frames)
                    prime_ids = None
                else:
                    context = history[:, -settings.context_frames:]
                    with torch.no_grad(), self._autocast():
                        prime_ids = self.tokenizer.encode(frames_to_pixels(context).to(self.device))
                    token_frames = prime_ids.shape[1] + new_frames // pt

                def report(step: int, total: int, _i: int = index) -> None:
                    bar(done + step, total_steps, _i + 1, len(requests))

                with torch.no_grad(), self._autocast():
                    ids = sample(
                        self.transformer, text_emb, text_mask, num_token_frames=token_frames, prime=prime_ids,
                        steps=steps,
                        guidance=settings.guidance if request.guidance is None else request.guidance,
                        guidance_ramp=settings.guidance_ramp,
                        temperature=settings.temperature if request.temperature is None else request.temperature,
                        schedule=settings.schedule, top_k=settings.top_k, top_p=settings.top_p,
                        choice_temperature=settings.choice_temperature, temporal_bias=settings.temporal_bias,
                        use_critic=settings.use_critic, critic_revise=settings.critic_revise,
                        candidates=settings.candidates, polish=settings.polish,
                        polish_passes=settings.polish_passes,
                        relevance_floor=settings.relevance_floor, generator=generator,
                        progress=report, window_score=self._window_score(text_emb, text_mask, new_frames, settings),
                    )
                    pixels = self.tokenizer.decode(ids)
                done += steps
                frames = pixels_to_frames(pixels)[:, -new_frames:]
                history = frames if history is None else torch.cat([history, frames], dim=1)
            ranges.append((start, history.shape[1]))  # type: ignore[union-attr]
        bar(total_steps, total_steps, len(requests), len(requests), close=True)
        assert history is not None
        videos = []
        for row in range(rows):
            story = stories[row // num_samples]
            names = (["<prime>"] if prime is not None else []) + [r.prompt for r in story]
            scenes = [Scene(name, a, b) for name, (a, b) in zip(names, ranges)]
            videos.append(Video(history[row].contiguous(), self.fps, scenes, {}))
        return videos

    def _window_score(self, text_emb: torch.Tensor, text_mask: torch.Tensor, new_frames: int,
                      settings: GenerationSettings) -> Callable[[torch.Tensor, int], torch.Tensor] | None:
        """The matcher's say in the choice among candidates: `match_weight` x the cosine similarity
        of each candidate's new frames, decoded as they would be shown, and its row's prompt."""
        if self.matcher is None or settings.match_weight <= 0 or settings.candidates < 2:
            return None
        matcher, weight, candidates = self.matcher, settings.match_weight, settings.candidates
        prompts = matcher.embed_text(text_emb, text_mask).repeat_interleave(candidates, dim=0)

        def score(ids: torch.Tensor, fixed: int) -> torch.Tensor:
            frames = pixels_to_frames(self.tokenizer.decode(ids))[:, -new_frames:]
            video = matcher.embed_video(frames_to_matcher(frames).to(self.device))
            return weight * (video * prompts).sum(dim=-1)

        return score

    def _plan(self, requests: list[SceneRequest], s: GenerationSettings, has_prime: bool) -> list[tuple[SceneRequest, list[int]]]:
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


def _progress_bar(progress: bool | Callable[..., object], total: int, scenes: int) -> Callable[..., None]:
    """A tqdm bar (progress=True), a user callback, or nothing."""
    if callable(progress):
        def call(done: int, total_: int, scene: int, scenes_: int, close: bool = False) -> None:
            if not close:
                progress(done, total_, scene, scenes_)  # type: ignore[operator]
        return call
    if not progress:
        return lambda *a, **k: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc="generate", unit="step", dynamic_ncols=True)

    def update(done: int, total_: int, scene: int, scenes_: int, close: bool = False) -> None:
        bar.set_description(f"scene {scene}/{scenes_}")
        bar.update(done - bar.n)
        if close:
            bar.close()

    return update


def run_cli_sample(scenes: list[StoryScene], **options: Any) -> None:
    """`phenaki-sample`: load, generate, save, and report (called by the CLI after validation)."""
    import click

    started = time.perf_counter()
    pipe = Phenaki.from_pretrained(options["checkpoint"], device=options["device"], dtype=options["dtype"])
    kwargs = {
        "seed": options["seed"], "steps": options["steps"], "guidance": options["guidance"],
        "temperature": options["temperature"], "temporal_bias": options["temporal_bias"],
        "use_critic": options["use_critic"], "critic_revise": options["critic_revise"],
        "candidates": options["candidates"], "polish": options["polish"],
        "polish_passes": options["polish_passes"],
        "relevance_floor": options["relevance_floor"], "match_weight": options["match_weight"],
        "scene_frames": options["scene_frames"],
        "scene_seconds": options["scene_seconds"], "context_frames": options["context_frames"],
        "first_frames": options["first_frames"],
        "prime": options["prime"], "num_samples": options["num_samples"], "progress": True,
    }
    if options["fps"] is not None:
        pipe.fps = float(options["fps"])
    result = pipe.generate(scenes, **kwargs)
    videos = result if isinstance(result, list) else [result]
    out = Path(options["out"])
    for i, video in enumerate(videos):
        target = out if len(videos) == 1 else out.with_name(f"{out.stem}-{i}{out.suffix}")
        video.metadata["command"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()
                                     if k not in ("verbose",)}
        video.metadata["sample_index"] = i
        video.save(target)
        click.echo(f"wrote {target} ({video.num_frames} frames, {video.num_frames / video.fps:.2f} s at "
                   f"{video.fps:g} fps) and {sidecar_path(target)}")
    click.echo(f"{len(scenes)} scene(s) in {time.perf_counter() - started:.1f} s")

"""Evaluation of trained models, shared by `phenaki-eval` and the benchmarks."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from ..models.cvivit import CViViT
from ..training.base import collate_clips
from ..video import frames_to_pixels, pixels_to_frames
from .metrics import bits_per_pixel, code_histogram, perplexity_from_counts, psnr, ssim

log = logging.getLogger(__name__)


@dataclass
class TokenizerReport:
    """What `phenaki-eval tokenizer` prints: quality, code use, compression and speed."""

    clips: int
    frames_per_clip: int
    psnr: float
    ssim: float
    codebook_usage: float
    codebook_perplexity: float
    codebook_size: int
    tokens_per_clip: int
    bits_per_pixel: float
    compression_ratio: float  # raw 24-bit RGB bits / token bits
    encode_fps: float
    decode_fps: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def table(self) -> str:
        rows = [
            ("clips", f"{self.clips} x {self.frames_per_clip} frames"),
            ("PSNR", f"{self.psnr:.2f} dB"),
            ("SSIM", f"{self.ssim:.4f}"),
            ("codebook usage", f"{100 * self.codebook_usage:.1f}% of {self.codebook_size}"),
            ("codebook perplexity", f"{self.codebook_perplexity:.1f}"),
            ("tokens per clip", str(self.tokens_per_clip)),
            ("bits per pixel", f"{self.bits_per_pixel:.4f}"),
            ("compression ratio", f"{self.compression_ratio:.0f}x vs 24-bit RGB"),
            ("encode", f"{self.encode_fps:.1f} frames/s"),
            ("decode", f"{self.decode_fps:.1f} frames/s"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


@torch.no_grad()
def evaluate_tokenizer(
    model: CViViT,
    dataset: Dataset,
    *,
    num_clips: int = 64,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    autocast: torch.dtype | None = None,
    progress: Callable[[int], object] | None = None,
) -> TokenizerReport:
    """Encode and decode `num_clips` clips of `dataset`; PSNR/SSIM over all of them.

    Only full-length clips count (images in a mixed dataset are skipped), so every
    figure refers to one clip length. Timings cover encode and decode alone.
    """
    model = model.to(device).eval()
    n = min(num_clips, len(dataset))  # type: ignore[arg-type]
    items = [dataset[i] for i in range(n)]
    frames = max(int(it["video"].shape[0]) for it in items)
    items = [it for it in items if it["video"].shape[0] == frames]
    counts = torch.zeros(model.codebook_size, dtype=torch.long)
    psnrs, ssims = [], []
    encode_s = decode_s = 0.0
    ctx = torch.autocast(torch.device(device).type, dtype=autocast) if autocast else torch.autocast("cpu", enabled=False)
    for start in range(0, len(items), batch_size):
        group = collate_clips(items[start : start + batch_size])[0]
        pixels = frames_to_pixels(group["video"]).to(device)
        with ctx:
            t0 = time.perf_counter()
            ids = model.encode(pixels)
            t1 = time.perf_counter()
            recon = model.decode(ids).float()
            t2 = time.perf_counter()
        encode_s, decode_s = encode_s + t1 - t0, decode_s + t2 - t1
        counts += code_histogram(ids.cpu(), model.codebook_size)
        psnrs.append(psnr(recon, pixels, reduction="none").cpu())
        ssims.append(ssim(recon, pixels, reduction="none").cpu())
        if progress is not None:
            progress(len(pixels))
    clips = len(items)
    _, _, height, width, _ = group["video"].shape
    tokens = model.num_token_frames(frames) * model.token_grid[0] * model.token_grid[1]
    bpp = bits_per_pixel(tokens, model.codebook_size, frames * height * width)
    return TokenizerReport(
        clips=clips,
        frames_per_clip=frames,
        psnr=float(torch.cat(psnrs).clamp(max=100).mean()),
        ssim=float(torch.cat(ssims).mean()),
        codebook_usage=float((counts > 0).float().mean()),
        codebook_perplexity=float(perplexity_from_counts(counts)),
        codebook_size=model.codebook_size,
        tokens_per_clip=tokens,
        bits_per_pixel=bpp,
        compression_ratio=24.0 / bpp,
        encode_fps=clips * frames / max(encode_s, 1e-9),
        decode_fps=clips * frames / max(decode_s, 1e-9),
    )


@dataclass
class _Story:
    frames: torch.Tensor  # uint8 [T, H, W, 3]
    scenes: list


class TokenizerCeiling:
    """Stands in for a pipeline in `judge.evaluate_shapes`: each story's ground-truth render,
    passed through the tokenizer the way the pipeline draws it.

    The first scene is one clip (encode, then decode); every later scene is the last
    `context_frames` frames drawn so far followed by the scene's true new frames, encoded
    and decoded as one window, of which the new frames are kept: exactly what the story
    loop decodes if the generator predicted every token of the true render. Whatever the
    judge rejects here, the tokenizer cannot draw, so these rates are the most any
    generator on this tokenizer can score. Scene lengths follow the pipeline's defaults.
    """

    def __init__(self, tokenizer: CViViT, *, first_frames: int = 11, scene_frames: int = 6,
                 context_frames: int = 5, autocast: torch.dtype | None = None) -> None:
        self.tokenizer = tokenizer.eval()
        self.first_frames, self.scene_frames, self.context_frames = first_frames, scene_frames, context_frames
        self.autocast = autocast

    def _round_trip(self, pixels: torch.Tensor) -> torch.Tensor:
        device = self.tokenizer.first_head.weight.device
        with torch.autocast(device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            return self.tokenizer.decode(self.tokenizer.encode(pixels.to(device))).float()

    def _render(self, prompts: list[str], seed: int) -> Any:
        """The true story (v1's renderer; a v2 ceiling draws with v2's)."""
        from ..data.shapes import render_story

        return render_story(tuple(prompts), seed=seed, first_frames=self.first_frames, scene_frames=self.scene_frames)

    @torch.no_grad()
    def generate(self, prompts: list[str], seed: int = 0, **_: object) -> _Story:
        story = self._render(prompts, seed)
        pixels = frames_to_pixels(story.frames[None])
        first = story.scenes[0]
        drawn = self._round_trip(pixels[:, :, first.start:first.end])
        for scene in story.scenes[1:]:
            window = torch.cat([drawn[:, :, -self.context_frames:].to(pixels.device),
                                pixels[:, :, scene.start:scene.end]], dim=2)
            new = self._round_trip(window)[:, :, -(scene.end - scene.start):]
            drawn = torch.cat([drawn, new], dim=2)
        return _Story(frames=pixels_to_frames(drawn)[0], scenes=list(story.scenes))

"""The text-video matcher: which of several drawn windows shows what its prompt says.

Drawing every window several times and keeping the one the transformer finds likeliest
(`sampling.candidates`) picks well on the whole, but the transformer's own likelihood
cannot see what it gets wrong: a square drawn with rounded corners is as likely to it as
a sharp one. The matcher is a second opinion from pixels, in the manner of CLIP reranking:
a small video encoder (a per-frame convolution stack, then a temporal transformer over
the frames) and a projection of the pipeline's own text embeddings are trained
contrastively on real captioned clips, so that a clip lies close to its caption in a
shared space. The sampler adds `match_weight` x the cosine similarity of each candidate's
new frames and its prompt to the candidate's likelihood.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import PretrainedMixin
from ..config import MatcherConfig
from ..video import frames_to_pixels


class TextVideoMatcher(nn.Module, PretrainedMixin):
    """Clips (float [B, T, C, H, W] in [0, 1]) and prompt embeddings ([B, L, D] + mask) into one
    unit-length embedding space; `similarity` is their cosine."""

    config_class = MatcherConfig

    def __init__(self, config: MatcherConfig) -> None:
        super().__init__()
        config.__post_init__()  # resolved sizes may have changed since the config was built
        self.config = config
        layers: list[nn.Module] = []
        width = config.channels
        for out in config.conv_channels:
            layers += [nn.Conv2d(width, out, 4, stride=2, padding=1), nn.GELU()]
            width = out
        self.frame_encoder = nn.Sequential(*layers)
        factor = 2 ** len(config.conv_channels)
        cells = (config.image_size[0] // factor) * (config.image_size[1] // factor)
        self.frame_proj = nn.Linear(width * cells, config.dim)
        self.time_pos = nn.Parameter(torch.randn(config.max_frames, config.dim) * 0.02)
        block = nn.TransformerEncoderLayer(config.dim, config.heads, 4 * config.dim, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.temporal = nn.TransformerEncoder(block, config.depth, enable_nested_tensor=False)
        self.video_head = nn.Sequential(nn.LayerNorm(config.dim), nn.Linear(config.dim, config.embed_dim))
        self.text_head = nn.Sequential(nn.LayerNorm(config.text_dim), nn.Linear(config.text_dim, config.dim),
                                       nn.GELU(), nn.Linear(config.dim, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed_video(self, frames: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Unit embeddings [B, E] of clips; frames at or after `lengths` (per clip) are padding."""
        b, t, c, h, w = frames.shape
        cfg = self.config
        if (c, h, w) != (cfg.channels, *cfg.image_size):
            raise ValueError(f"matcher expects frames of {cfg.channels}x{cfg.image_size[0]}x{cfg.image_size[1]}, "
                             f"got {c}x{h}x{w}")
        if not 1 <= t <= cfg.max_frames:
            raise ValueError(f"matcher takes 1..{cfg.max_frames} frames, got {t}")
        x = self.frame_encoder(frames.reshape(b * t, c, h, w) * 2 - 1).reshape(b, t, -1)
        x = self.frame_proj(x) + self.time_pos[:t]
        if lengths is None:
            x = self.temporal(x).mean(dim=1)
        else:
            pad = torch.arange(t, device=frames.device)[None] >= lengths.to(frames.device)[:, None]
            x = self.temporal(x, src_key_padding_mask=pad)
            keep = (~pad).to(x.dtype)[..., None]
            x = (x * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1)
        return F.normalize(self.video_head(x).float(), dim=-1)

    def embed_text(self, text_emb: Tensor, text_mask: Tensor) -> Tensor:
        """Unit embeddings [B, E] of prompts from the text encoder's output (mean over real tokens)."""
        keep = text_mask.to(text_emb.dtype)[..., None]
        x = (text_emb * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1)
        return F.normalize(self.text_head(x.to(self.text_head[0].weight.dtype)).float(), dim=-1)

    def forward(self, frames: Tensor, lengths: Tensor | None, text_emb: Tensor, text_mask: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
        """(clip embeddings, prompt embeddings, log of the logit scale): one call, so a DDP
        wrapper sees every parameter used in its one forward per step."""
        return self.embed_video(frames, lengths), self.embed_text(text_emb, text_mask), self.logit_scale

    def similarity(self, frames: Tensor, text_emb: Tensor, text_mask: Tensor) -> Tensor:
        """Cosine similarity [B] of each clip with its prompt (row by row)."""
        video, text, _ = self(frames, None, text_emb, text_mask)
        return (video * text).sum(dim=-1)


def contrastive_loss(video: Tensor, text: Tensor, captions: list[str], logit_scale: Tensor
                     ) -> tuple[Tensor, dict[str, Tensor]]:
    """Symmetric InfoNCE over a batch, where every clip whose caption is the same string counts
    as a match: a batch of a closed vocabulary repeats captions, and pushing a clip away from
    its own caption's twin would teach the encoders noise."""
    if len(captions) != len(video) or len(video) != len(text):
        raise ValueError(f"{len(video)} clips, {len(text)} prompts and {len(captions)} captions do not pair up")
    index = {c: k for k, c in enumerate(dict.fromkeys(captions))}
    ids = torch.tensor([index[c] for c in captions], device=video.device)
    same = (ids[:, None] == ids[None, :]).float()
    logits = logit_scale.exp().clamp(max=100) * video @ text.T
    to_text = -(same / same.sum(dim=1, keepdim=True) * logits.log_softmax(dim=1)).sum(dim=1).mean()
    to_video = -(same / same.sum(dim=0, keepdim=True) * logits.log_softmax(dim=0)).sum(dim=0).mean()
    loss = 0.5 * (to_text + to_video)
    with torch.no_grad():
        rows = torch.arange(len(ids), device=video.device)
        accuracy = same[rows, logits.argmax(dim=1)].mean()
    return loss, {"loss": loss.detach(), "match_acc": accuracy, "logit_scale": logit_scale.detach().exp()}


def frames_to_matcher(frames: Tensor) -> Tensor:
    """uint8 [B, T, H, W, C] -> float [B, T, C, H, W] in [0, 1] (the matcher's input: frames
    first, since it encodes each frame alone before it looks across them)."""
    return frames_to_pixels(frames).transpose(1, 2)

"""Training the text-video matcher on real captioned clips, beside a trained pipeline.

The matcher reads the pipeline's own (frozen) text embeddings, so it is trained for one
pipeline and shipped inside it (`dir/matcher/`). Each clip is cut to the frames its
caption describes, as the sampler will show it candidates: a clip that straddles a scene
change loses its context frames, and a share of one-scene clips is cut to a random run
of `sampling.scene_frames` frames, the length of a continuation scene.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from ..checkpoint import (
    CheckpointError,
    pipeline_text_encoder,
    read_pipeline_settings,
    write_json,
)
from ..config import Config, to_dict
from ..models.cvivit import CViViT
from ..models.matcher import TextVideoMatcher, contrastive_loss, frames_to_matcher
from .base import Trainer

log = logging.getLogger(__name__)


def scene_clips(batch: list[dict[str, Any]], crop_prob: float, crop_frames: int,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The frames each caption describes, padded into one batch: (uint8 [N, T, H, W, C], lengths [N], captions).

    Stand-in groups (see `training.stand_in_group`) carry no real samples and are left out.
    """
    clips: list[torch.Tensor] = []
    captions: list[str] = []
    for group in batch:
        if group.get("stand_in"):
            continue
        contexts = group.get("context_frames")
        for k, video in enumerate(group["video"]):
            context = int(contexts[k]) if contexts is not None else 0
            if context > 0:
                video = video[context:]
            elif video.shape[0] > crop_frames and float(torch.rand((), generator=generator)) < crop_prob:
                start = int(torch.randint(0, video.shape[0] - crop_frames + 1, (), generator=generator))
                video = video[start:start + crop_frames]
            clips.append(video)
            captions.append(group["caption"][k])
    if not clips:
        raise ValueError("a matcher batch without a single real clip")
    lengths = torch.tensor([c.shape[0] for c in clips])
    return pad_sequence(clips, batch_first=True), lengths, captions


class MatcherTrainer(Trainer):
    """Trains a `TextVideoMatcher` against the text encoder of `pipeline_dir`; exports the matcher."""

    name = "matcher"

    def __init__(self, config: Config, pipeline_dir: str | Path, **kwargs: Any) -> None:
        super().__init__(config, config.train_matcher, **kwargs)
        root = Path(pipeline_dir)
        try:
            settings = read_pipeline_settings(root, "a pipeline directory")
        except CheckpointError as exc:
            raise ValueError(f"{exc}: the matcher is trained for a trained pipeline, whose text encoder it "
                             "reads") from None
        self.pipeline_dir = root
        self.text = pipeline_text_encoder(root, settings, trainable=False).to(self.device)
        config.tokenizer = CViViT.load_config(root / "tokenizer")
        config.resolve(text_dim=self.text.dim)
        config.matcher.text_dim = self.text.dim
        cfg = self.train_cfg
        if cfg.init_from:
            model = TextVideoMatcher.from_pretrained(cfg.init_from)
            if model.config.text_dim != self.text.dim:
                raise ValueError(f"train_matcher.init_from: {cfg.init_from} reads text of width "
                                 f"{model.config.text_dim}, the pipeline's text encoder gives {self.text.dim}")
            log.info("fine-tuning the matcher of %s", cfg.init_from)
            config.matcher = model.config
        else:
            model = TextVideoMatcher(config.matcher)
        optimizer = self.make_optimizer(list(model.parameters()), cfg.lr)
        model, self.ema_model = self.register_model(model, optimizer)

    def training_step(self, batch: list[dict[str, Any]], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        frames, lengths, captions = scene_clips(batch, self.train_cfg.scene_crop_prob,
                                                self.config.sampling.scene_frames)
        text_emb, text_mask = self.text.encode_cached(captions)
        video, text, log_scale = self.modules[self.name](frames_to_matcher(frames).to(self.device),
                                                         lengths.to(self.device), text_emb, text_mask)
        loss, metrics = contrastive_loss(video, text, captions, log_scale)
        return loss, {k: float(v) for k, v in metrics.items()}

    def export(self, path: Path) -> Path:
        """The EMA matcher as a checkpoint directory (config.json + model.safetensors + training.json)."""
        self.ema.copy_to(self.ema_model)  # type: ignore[union-attr]
        out = self.ema_model.save_pretrained(path)
        write_json(out / "training.json", {"steps": self.step, "pipeline": str(self.pipeline_dir),
                                           "config": to_dict(self.train_cfg), "data": to_dict(self.config.data)})
        return out


def train_matcher(config: Config, pipeline_dir: str | Path, *, resume: str | None = None,
                  stop_at: int | None = None, export_to: str | Path | None = None, **kwargs: Any) -> Path:
    """Matcher training on `config.data` for the pipeline in `pipeline_dir`; returns the matcher directory."""
    from ..data import build_dataset

    if kwargs.get("output_dir"):
        config.train_matcher.output_dir = str(kwargs["output_dir"])
    trainer = MatcherTrainer(config, pipeline_dir, **kwargs)
    return trainer.fit(build_dataset(config.data, "train"), resume=resume, stop_at=stop_at, export_to=export_to)

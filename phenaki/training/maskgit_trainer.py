"""Training the text-conditioned MaskGIT on token ids from a frozen tokenizer.

A step runs only the transformer (and a small text encoder when it is trained from
scratch): the dataset is tokenised once into a token cache, and a frozen pretrained
text encoder's embeddings are cached per distinct caption.

Per sample, the clean prefix ("prime") is:
- the context token-frames of a clip that straddles a scene change (always: the new
  prompt describes only the new frames, which is exactly the story-extension task);
- otherwise, with probability `continuation_prob`, a random number of leading
  token-frames (prime-video continuation), else none (generation from scratch).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import (
    CheckpointError,
    pipeline_text_encoder,
    read_pipeline_settings,
    write_pipeline_settings,
)
from ..config import Config, from_dict, same_token_ids, to_dict
from ..integrity import record_folder
from ..models.cvivit import CViViT
from ..models.maskgit import MaskGit
from ..models.masking import continuation_prime, maskgit_loss
from ..models.text import TextEncoder
from ..utils.fileio import atomic_write_dir
from .base import Trainer, group_shares

log = logging.getLogger(__name__)


class MaskGitObjective(nn.Module):
    """MaskGit plus (when trained jointly) its text encoder: one module, one DDP wrapper."""

    def __init__(self, maskgit: MaskGit, text: TextEncoder | None, config: Config) -> None:
        super().__init__()
        self.maskgit = maskgit
        self.text = text
        self.train_cfg = config.train_maskgit

    def forward(self, ids: torch.Tensor, prime: torch.Tensor, captions: list[str],
                text_emb: torch.Tensor | None = None, text_mask: torch.Tensor | None = None):
        if self.text is not None:
            text_emb, text_mask = self.text(captions)
        cfg = self.train_cfg
        return maskgit_loss(
            self.maskgit, ids, text_emb, text_mask,
            schedule=cfg.mask_schedule, cond_drop_prob=cfg.cond_drop_prob,
            label_smoothing=cfg.label_smoothing, prime_frames=prime, critic_weight=cfg.critic_weight,
            temporal_mask_prob=cfg.temporal_mask_prob, temporal_mask_spread=cfg.temporal_mask_spread,
            critic_only=cfg.critic_only,
        )


def training_captions(dataset: Any, limit: int = 20000) -> list[str]:
    """Captions for building a scratch text tokenizer (from a token cache or any dataset)."""
    if hasattr(dataset, "captions"):
        return list(dataset.captions[:limit])
    return [dataset[i]["caption"] for i in range(min(limit, len(dataset)))]


class MaskGitTrainer(Trainer):
    """Trains MaskGit (+ scratch text encoder) on a `TokenDataset`; exports a pipeline directory."""

    name = "maskgit"
    kernel_tuning = True  # training_step only computes the loss of a batch

    def __init__(self, config: Config, tokenizer_dir: str | Path, captions: list[str], **kwargs: Any) -> None:
        super().__init__(config, config.train_maskgit, **kwargs)
        cfg = self.train_cfg
        self.tokenizer_dir = Path(tokenizer_dir)
        tokenizer_cfg = CViViT.load_config(self.tokenizer_dir)
        config.tokenizer = tokenizer_cfg
        maskgit, text = self._initial_models(config, captions)
        self.trainable_text = text.trainable
        self.frozen_text = None if text.trainable else text.to(self.device)
        objective = MaskGitObjective(maskgit, text if text.trainable else None, config)
        if cfg.critic_only:  # the generator and its text encoder stay exactly as trained
            objective.requires_grad_(False)
            for part in (maskgit.critic, maskgit.to_critic):
                part.requires_grad_(True)  # type: ignore[union-attr]
        optimizer = self.make_optimizer([p for p in objective.parameters() if p.requires_grad], cfg.lr)
        objective, self.ema_objective = self.register_model(objective, optimizer)
        self._tokenizer: CViViT | None = None

    @staticmethod
    def _initial_models(config: Config, captions: list[str]) -> tuple[MaskGit, TextEncoder]:
        """Fresh models, or (`init_from`, a pipeline directory) trained ones to fine-tune further.

        Fine-tuning starts new optimiser and schedule state from the pipeline's weights, so a
        run whose full checkpoint is gone (only the exported model is left) can still go on;
        the pipeline's architecture and text vocabulary replace the config's (a scratch
        vocabulary grows by the training captions' new words).
        """
        init_from = config.train_maskgit.init_from
        if config.train_maskgit.critic_only and init_from is None:
            raise ValueError("train_maskgit.critic_only needs train_maskgit.init_from: the trained pipeline whose "
                             "generator the critic learns to judge")
        if init_from is None:
            text = TextEncoder.from_config(config.text, captions)
            config.resolve(text_dim=text.dim)
            return MaskGit(config.transformer), text
        root = Path(init_from)
        try:
            settings = read_pipeline_settings(root, "a pipeline directory")
        except CheckpointError as exc:
            raise ValueError(f"train_maskgit.init_from: {exc}") from None
        if not same_token_ids(CViViT.load_config(root / "tokenizer"), config.tokenizer):
            raise ValueError(f"train_maskgit.init_from: {root} was trained on the ids of another tokenizer than "
                             "the one given to this run; pass its own tokenizer (--tokenizer "
                             f"{root / 'tokenizer'})")
        trainable = config.text.kind == "scratch" or config.text.trainable
        text = pipeline_text_encoder(root, settings, trainable=trainable, cache_dir=config.text.cache_dir)
        if text.kind == "scratch" and trainable:
            text.extend_vocabulary(captions)  # a larger world brings new words; known ones keep their ids
        maskgit = MaskGit.from_pretrained(root / "transformer")
        if config.train_maskgit.critic_only and not maskgit.has_critic:
            log.info("critic_only: adding a fresh token critic to the generator of %s", root)
            maskgit = maskgit.with_critic()
        if maskgit.config != config.transformer:
            log.info("transformer architecture taken from %s (init_from), not from the config", root)
            config.transformer = maskgit.config
        longest = max(config.text.max_length, text.max_length)  # a fine-tune may read longer prompts
        if settings.get("text"):
            config.text = from_dict(type(config.text), settings["text"], "text")
        text.max_length = config.text.max_length = longest
        log.info("fine-tuning from %s (trained %s steps)", root, settings.get("training", {}).get("steps", "?"))
        return maskgit, text

    def training_step(self, batch: list[dict[str, Any]], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        objective = self.modules[self.name]
        loss = torch.zeros((), device=self.device)
        metrics: dict[str, float] = {}
        for group, share in zip(batch, group_shares(batch)):
            ids = group["ids"].to(self.device, non_blocking=True)
            b, t = ids.shape[:2]
            context = group["prime_frames"].to(self.device)
            prime = torch.where(
                context > 0, context, continuation_prime(b, t, self.train_cfg.continuation_prob, device=self.device)
            )
            text_emb = text_mask = None
            if self.frozen_text is not None:
                text_emb, text_mask = self.frozen_text.encode_cached(group["caption"])
            part, terms = objective(ids, prime, group["caption"], text_emb, text_mask)
            loss = loss + part * share
            for key, value in terms.items():
                metrics[key] = metrics.get(key, 0.0) + float(value) * share
        return loss, metrics

    # ------------------------------------------------------------------ output
    def _ema_modules(self) -> MaskGitObjective:
        self.ema.copy_to(self.ema_objective)  # type: ignore[union-attr]
        return self.ema_objective

    def _text_encoder(self, objective: MaskGitObjective) -> TextEncoder:
        return objective.text if objective.text is not None else self.frozen_text  # type: ignore[return-value]

    def tokenizer(self) -> CViViT:
        if self._tokenizer is None:
            self._tokenizer = CViViT.from_pretrained(self.tokenizer_dir).eval()
        return self._tokenizer

    @torch.no_grad()
    def preview(self) -> None:
        """Sample the preview prompts with the EMA weights and write them as one GIF."""
        from ..sampling.search import draw
        from ..sampling.settings import SamplingSettings
        from ..video import pixels_to_frames, write_video

        prompts = self.train_cfg.preview_prompts
        if not prompts:
            return
        objective = self._ema_modules().to(self.device)
        text_emb, text_mask = self._text_encoder(objective).encode(prompts)
        s = self.config.sampling
        frames = s.first_frames
        token_frames = self.config.tokenizer.token_frames(frames)
        settings = SamplingSettings(steps=s.steps, guidance=s.guidance, temperature=s.temperature, schedule=s.schedule)
        ids = draw(objective.maskgit, (text_emb, text_mask), None, settings,
                   torch.Generator(device=self.device).manual_seed(0), num_token_frames=token_frames)
        video = pixels_to_frames(self.tokenizer().to(self.device).decode(ids))
        grid = torch.cat(list(video), dim=2)  # prompts side by side
        path = self.output_dir / "previews" / f"step-{self.step:07d}.gif"
        write_video(path, grid, self.config.data.fps)
        self.log_preview(path, grid)
        log.info("preview %s (%s)", path, " | ".join(prompts))

    def export(self, path: Path) -> Path:
        """A complete pipeline directory: tokenizer/, transformer/, text_encoder/, pipeline.json."""
        objective = self._ema_modules()
        text = self._text_encoder(objective)

        def write(tmp: Path) -> None:
            shutil.copytree(self.tokenizer_dir, tmp / "tokenizer")
            objective.maskgit.save_pretrained(tmp / "transformer")
            text_ref: str = "text_encoder"
            if self.trainable_text or Path(text.name).is_dir():
                text.save_pretrained(tmp / "text_encoder")
            else:
                text_ref = text.name  # a large frozen encoder is referenced, not copied
            settings = {
                "text_encoder": text_ref,
                "text": to_dict(self.config.text),
                "sampling": to_dict(self.config.sampling),
                "fps": self.config.data.fps,
                "training": {"steps": self.step, "config": to_dict(self.train_cfg)},
            }
            write_pipeline_settings(tmp, settings)
            record_folder(tmp)

        return atomic_write_dir(path, write)


def ensure_token_cache(config: Config, tokenizer_dir: Path, *, device: str = "cpu") -> Path:
    """Tokenise the training data once (resumable); later runs reuse the cache."""
    from tqdm import tqdm

    from ..data import build_dataset
    from .token_cache import MANIFEST, tokenize_dataset

    cfg = config.train_maskgit
    path = Path(cfg.tokens_cache or Path(cfg.output_dir) / "tokens")
    tokenizer = CViViT.from_pretrained(tokenizer_dir)
    wanted = cfg.cache_items or config.data.num_samples
    have = 0
    if (path / MANIFEST).is_file():
        manifest = json.loads((path / MANIFEST).read_text())
        made_with = manifest.get("tokenizer")
        if made_with is not None and not same_token_ids(made_with, tokenizer.config):
            raise ValueError(f"the token cache {path} was made with a different tokenizer than {tokenizer_dir}: "
                             "delete it (or set train_maskgit.tokens_cache elsewhere) to tokenise again")
        have = manifest.get("items", 0)
        if config.data.kind == "shards" or have >= wanted:
            return path
    autocast = torch.bfloat16 if cfg.mixed_precision == "bf16" else None
    if config.data.kind == "shards":
        from .token_cache import tokenize_shards

        with tqdm(desc="tokenise", unit="sample") as bar:
            return tokenize_shards(tokenizer, config.data.path, path, num_frames=config.data.num_frames,
                                   fps=config.data.fps, device=device, autocast=autocast, progress=bar.update)
    dataset = build_dataset(config.data, "train")
    items = min(wanted, len(dataset))
    if have >= items:
        return path
    if have:
        log.info("token cache %s holds %d items, %d wanted: encoding the rest", path, have, items)
    with tqdm(total=items, desc="tokenise", unit="clip") as bar:
        tokenize_dataset(tokenizer, dataset, path, num_items=items, device=device, autocast=autocast,
                         progress=bar.update)
    return path


def train_maskgit(config: Config, tokenizer_dir: str | Path | None = None, *, resume: str | None = None,
                  stop_at: int | None = None, export_to: str | Path | None = None, **kwargs: Any) -> Path:
    """Token cache (built on first use), then MaskGIT training; returns the pipeline directory."""
    from accelerate import PartialState

    from .base import cpu_only
    from .token_cache import TokenDataset

    tokenizer_dir = Path(tokenizer_dir or Path(config.train_tokenizer.output_dir) / "final")
    if not (tokenizer_dir / "config.json").is_file():
        raise FileNotFoundError(f"no trained tokenizer at {tokenizer_dir}: train one first or pass --tokenizer")
    if kwargs.get("output_dir"):
        config.train_maskgit.output_dir = str(kwargs["output_dir"])
    state = PartialState(cpu=cpu_only())
    with state.main_process_first():
        cache = ensure_token_cache(config, tokenizer_dir, device=str(state.device))
    dataset = TokenDataset(cache, codebook_size=CViViT.load_config(tokenizer_dir).codebook_size)
    trainer = MaskGitTrainer(config, tokenizer_dir, training_captions(dataset), **kwargs)
    return trainer.fit(dataset, resume=resume, stop_at=stop_at, export_to=export_to)

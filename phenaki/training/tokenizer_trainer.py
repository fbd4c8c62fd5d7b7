"""Training the C-ViViT tokenizer: reconstruction + quantizer (+ optional GAN/perceptual).

The loop, checkpoints, EMA and resume come from `phenaki.training.base.Trainer`; this
module only says what one step computes, what a preview shows and what is exported.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset

from ..config import Config, TokenizerConfig
from ..data import build_dataset
from ..evaluation.metrics import codebook_perplexity, codebook_usage, psnr, ssim
from ..models.cvivit import CViViT
from ..video import frames_to_pixels, pixels_to_frames
from .base import EMA_FILE, STATE_FILE, Trainer, collate_clips, group_shares
from .losses import TokenizerLoss, build_discriminator, vgg16_perceptual

log = logging.getLogger(__name__)

PREVIEW_CLIPS = 8


def _load_initial(path: str | Path) -> CViViT:
    """A tokenizer directory, or a training checkpoint (`checkpoints/step-N`) as its EMA weights.

    A checkpoint lets a second stage start from any saved step of a run (e.g. one stopped
    early with `--stop-at`), not only from its exported `final`.
    """
    import json

    from ..checkpoint import load_state_dict
    from ..config import from_dict
    from ..integrity import verify_folder

    root = Path(path)
    if not (root / STATE_FILE).is_file():
        return CViViT.from_pretrained(root)
    if not (root / EMA_FILE).is_file():
        raise FileNotFoundError(f"train_tokenizer.init_from: the checkpoint {root} has no {EMA_FILE}")
    verify_folder(root)  # damage is named (IntegrityError) before anything is built from it
    state = json.loads((root / STATE_FILE).read_text(encoding="utf-8"))
    model = CViViT(from_dict(TokenizerConfig, state["config"]["tokenizer"], "tokenizer"))
    model.load_state_dict(load_state_dict(root / EMA_FILE))
    log.info("initial tokenizer: the EMA weights of %s (step %s)", root, state.get("step", "?"))
    return model


def _with_decoder_settings(model: CViViT, config: TokenizerConfig) -> CViViT:
    """`model` with the config's decoder window and (when it has none) refiner, every trained weight kept.

    These settings shape no encoder weight, so a `decoder_only` fine-tune keeps the ids'
    meaning while the decoder learns to draw each patch from its neighbours' codes (a
    wider window) or to reconcile patch borders (a refiner, added as the identity). A
    config without a refiner (`refine_channels: 0`) keeps the trained tokenizer's own.
    """
    changes: dict[str, int] = {}
    window = config.decoder_spatial_window
    if window is not None and window != model.config.decoder_window:
        changes["decoder_spatial_window"] = window
    wanted = (config.refine_channels, config.refine_features)
    if config.refine_channels:
        if model.refiner is None:
            changes.update(refine_channels=wanted[0], refine_features=wanted[1])
        elif wanted != (model.config.refine_channels, model.config.refine_features):
            raise ValueError(f"train_tokenizer.init_from already has a refiner ({model.config.refine_channels} "
                             f"channels, {model.config.refine_features} features); it cannot be resized to "
                             f"{wanted[0]} channels, {wanted[1]} features")
    if not changes:
        return model
    log.info("decoder settings of the initial tokenizer changed: %s", changes)
    changed = CViViT(dataclasses.replace(model.config, **changes))
    missing, unexpected = changed.load_state_dict(model.state_dict(), strict=False)
    new = [k for k in missing if not k.startswith("refiner.")]
    if new or unexpected:
        raise RuntimeError(f"decoder settings {changes} changed trained weights: missing {new}, unexpected {unexpected}")
    return changed


class TokenizerTrainer(Trainer):
    """Trains `CViViT` on the config's dataset; exports EMA weights to `<output_dir>/final`."""

    name = "tokenizer"

    def __init__(self, config: Config, **kwargs: Any) -> None:
        super().__init__(config, config.train_tokenizer, **kwargs)
        cfg = self.train_cfg
        model = self._initial_model(config)
        if cfg.decoder_only:
            for module in model.encoder_modules():
                module.requires_grad_(False)
        optimizer = self.make_optimizer([p for p in model.parameters() if p.requires_grad], cfg.lr)
        discriminator = None
        if cfg.adversarial_weight > 0:
            discriminator = build_discriminator("frame", channels=config.tokenizer.channels)
        perceptual = vgg16_perceptual(cfg.perceptual_net) if cfg.perceptual_weight > 0 else None
        if perceptual is not None:
            perceptual.to(self.device)
        self.loss = TokenizerLoss.from_config(cfg, discriminator=discriminator, perceptual=perceptual)
        model, self.ema_model = self.register_model(model, optimizer)
        if discriminator is not None:
            d_opt = torch.optim.AdamW(discriminator.parameters(), lr=cfg.discriminator_lr, betas=(0.5, 0.9))
            discriminator, d_opt = self.accelerator.prepare(discriminator, d_opt)
            self.loss.discriminator = discriminator
            self.modules["discriminator"] = discriminator
            self.optimizers["discriminator"] = d_opt
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        self._preview_pixels: torch.Tensor | None = None

    @staticmethod
    def _initial_model(config: Config) -> CViViT:
        """A fresh tokenizer, or (`init_from`) a trained one whose architecture becomes the config's.

        The config may still change the decoder's window and add a refiner (`_with_decoder_settings`).
        """
        init_from = config.train_tokenizer.init_from
        if init_from is None:
            if config.train_tokenizer.decoder_only:
                raise ValueError("train_tokenizer.decoder_only needs train_tokenizer.init_from: "
                                 "a trained tokenizer whose encoder stays frozen")
            return CViViT(config.tokenizer)
        model = _with_decoder_settings(_load_initial(init_from), config.tokenizer)
        if model.config != config.tokenizer:
            log.info("tokenizer architecture taken from %s (init_from), not from the config", init_from)
            config.tokenizer = model.config
        return model

    @property
    def unwrapped(self) -> CViViT:
        return self.accelerator.unwrap_model(self.modules[self.name])

    def training_step(self, batch: list[dict[str, Any]], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Frames of different lengths (images and clips) come as groups; weight by size."""
        model = self.modules[self.name]
        loss = torch.zeros((), device=self.device)
        metrics: dict[str, float] = {}
        for group, share in zip(batch, group_shares(batch)):
            pixels = frames_to_pixels(group["video"]).to(self.device, non_blocking=True)
            out = model(pixels, frozen_encoder=self.train_cfg.decoder_only)
            terms = self.loss.generator_loss(
                out.recon, pixels, out.quantizer_loss, step, last_layer=self.unwrapped.last_layer_weights
            )
            loss = loss + terms["loss"] * share
            with torch.no_grad():
                terms["psnr"] = psnr(out.recon.detach().float().clamp(0, 1), pixels)
                terms["usage"] = out.codebook_usage
            for key, value in terms.items():
                metrics[key] = metrics.get(key, 0.0) + float(value.detach()) * share
            if share > 0:  # a stand-in group (multi-process alignment) never trains the discriminator
                self._last = (out.recon.detach(), pixels)
        return loss, metrics

    def after_optimizer_step(self) -> None:
        """One discriminator update on the last reconstructions (after its warm-up)."""
        if "discriminator" not in self.modules or self._last is None:
            return
        if not self.loss.adversarial_active(self.step):
            return
        recon, target = self._last
        d_opt = self.optimizers["discriminator"]
        terms = self.loss.discriminator_loss(recon, target, self.step)
        self.accelerator.backward(terms["loss"])
        d_opt.step()
        d_opt.zero_grad(set_to_none=True)

    def _preview_batch(self) -> torch.Tensor:
        """Fixed held-out clips (the same every preview, so numbers compare across steps)."""
        if self._preview_pixels is None:
            dataset = build_dataset(self.config.data, "heldout", num_samples=PREVIEW_CLIPS, seed_offset=9973)
            if isinstance(dataset, IterableDataset):  # streamed shards: the first clips of the stream
                items = [item for item, _ in zip(dataset, range(PREVIEW_CLIPS))]
            else:
                items = [dataset[i] for i in range(min(PREVIEW_CLIPS, len(dataset)))]
            groups = collate_clips(items)
            self._preview_pixels = frames_to_pixels(groups[0]["video"])
        return self._preview_pixels

    @torch.no_grad()
    def evaluate(self) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        """Reconstruction metrics of the EMA model on the preview clips (+ the clips)."""
        self.ema.copy_to(self.ema_model)  # type: ignore[union-attr]
        model = self.ema_model.to(self.device)
        pixels = self._preview_batch().to(self.device)
        ids = model.encode(pixels)
        recon = model.decode(ids)
        return {
            "val_psnr": float(psnr(recon, pixels)),
            "val_ssim": float(ssim(recon, pixels)),
            "val_usage": float(codebook_usage(ids, model.codebook_size)),
            "val_perplexity": float(codebook_perplexity(ids, model.codebook_size)),
        }, pixels, recon

    def preview(self) -> None:
        """Log held-out metrics and write original | reconstruction side by side."""
        from ..video import write_video

        metrics, pixels, recon = self.evaluate()
        self.log_metrics(metrics)
        side_by_side = torch.cat([pixels_to_frames(pixels), pixels_to_frames(recon)], dim=3)  # [B, T, H, 2W, 3]
        grid = torch.cat(list(side_by_side[:4]), dim=1)  # clips stacked vertically
        path = self.output_dir / "previews" / f"step-{self.step:07d}.gif"
        write_video(path, grid, self.config.data.fps)
        self.log_preview(path, grid)
        log.info("preview %s", path)

    def export(self, path: Path) -> Path:
        self.ema.copy_to(self.ema_model)  # type: ignore[union-attr]
        return self.ema_model.save_pretrained(path)


def train_tokenizer(config: Config, *, resume: str | None = None, stop_at: int | None = None,
                    export_to: str | Path | None = None, **kwargs: Any) -> Path:
    """Build the dataset and trainer from `config` and train; returns the final model dir."""
    trainer = TokenizerTrainer(config, **kwargs)
    dataset = build_dataset(config.data, "train")
    return trainer.fit(dataset, resume=resume, stop_at=stop_at, export_to=export_to)

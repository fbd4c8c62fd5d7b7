"""C-ViViT: Phenaki's causal video tokenizer (video <-> grid of discrete token ids).

Layout. The first frame is cut into p x p patches on its own, every later group of
`pt` frames into pt x p x p tubelets, each with its own linear embedding, giving a
token grid [B, T', H', W', D] with T' = 1 + (T - 1) // pt. So an image is a one-frame
video with one token-frame, and a clip's first token-frame is an image code.

Encoder: a spatial transformer (full attention inside each token-frame, 2-D positions)
then a temporal transformer (attention along T' at each spatial position, causal mask,
rotary positions). Decoder: the mirror (temporal, spatial, then a linear head for the
first frame and one for tubelets; optionally a refiner, 3x3 convolutions within each
frame). Nothing attends to a later token-frame, so a
prefix of a video always encodes to a prefix of its tokens, and decoding a prefix of
tokens gives a prefix of the frames. Rotary positions (no absolute table in time)
let the model encode clips longer than it was trained on.

The quantizer comes from vector-quantize-pytorch (`vq`, `fsq` or `lfq`) and always
runs in float32, also under bf16 autocast: code assignment is an argmax and should not
depend on the precision of the surrounding network.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..checkpoint import PretrainedMixin
from ..config import ConfigError, TokenizerConfig
from ..evaluation.metrics import (
    code_histogram,
    perplexity_from_counts,
    usage_from_counts,
)
from ..utils.torch_utils import eval_mode
from .attention import attend

log = logging.getLogger(__name__)

__all__ = ["CViViT", "CViViTOutput", "CodebookQuantizer"]


class CViViTOutput(NamedTuple):
    """Training forward result; `recon` is in pixel scale [0, 1] but not clamped."""

    recon: Tensor  # [B, C, T, H, W]
    ids: Tensor  # [B, T', H', W'] long
    quantizer_loss: Tensor  # scalar (commitment / entropy terms, already weighted)
    codebook_usage: Tensor  # fraction of codes used in this batch (detached)
    codebook_perplexity: Tensor  # effective number of codes used in this batch (detached)


# ----------------------------------------------------------------------------- helpers


def _round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def sincos_2d(height: int, width: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D sine/cosine table [height * width, dim] (used to initialise positions)."""
    quarter = dim // 4
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(quarter) / max(quarter - 1, 1))
    y = ys.reshape(-1, 1).float() * omega
    x = xs.reshape(-1, 1).float() * omega
    table = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)
    return F.pad(table, (0, dim - table.shape[1]))


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate query/key features by position (RoPE); `cos`/`sin` are [seq, dim_head]."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + _rotate_half(x) * sin


def _nearest_valid(num_frames: int, pt: int) -> list[int]:
    if num_frames < 1:
        return [1]
    below = 1 + ((num_frames - 1) // pt) * pt
    return [below, below + pt]


def frame_count_error(num_frames: int, pt: int, configured: int) -> ValueError:
    """The error for a frame count that is not 1 + pt*k, naming the counts that would fit."""
    valid = " and ".join(str(n) for n in _nearest_valid(num_frames, pt))
    plural = "counts are" if num_frames >= 1 else "count is"
    return ValueError(
        f"frame count must be 1 + {pt}*k (k >= 0; e.g. {configured} as configured): "
        f"got {num_frames}; nearest valid {plural} {valid}"
    )


# ----------------------------------------------------------------------------- transformer


class Rotary(nn.Module):
    """Rotary position tables, computed for any length on the fly (no maximum length)."""

    def __init__(self, dim_head: int, theta: float = 10000.0) -> None:
        super().__init__()
        if dim_head % 2:
            raise ConfigError(f"tokenizer.dim_head must be even for rotary positions, got {dim_head}")
        inv_freq = 1.0 / theta ** (torch.arange(0, dim_head, 2).float() / dim_head)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        # elementwise product (not a matmul), so position t gets the same angles at any length
        positions = torch.arange(length, device=device, dtype=self.inv_freq.dtype)
        freqs = positions[:, None] * self.inv_freq[None, :]
        freqs = torch.cat([freqs, freqs], dim=-1)
        return freqs.cos(), freqs.sin()


class Attention(nn.Module):
    """Multi-head self-attention (`attend`), optionally causal and rotary."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.heads, self.causal, self.dropout = heads, causal, dropout
        self.attention_path: str | None = None  # attend's kernel on a CPU (phenaki.kernels chooses it)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None, mask: Tensor | None = None) -> Tensor:
        q, k, v = rearrange(self.to_qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        out = attend(q, k, v, mask=mask, causal=self.causal, dropout=self.dropout if self.training else 0.0,
                     path=self.attention_path)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class SwiGLU(nn.Module):
    """Gated MLP; hidden width 2/3 * mult * dim keeps the parameter count of a GELU MLP."""

    def __init__(self, dim: int, mult: float, dropout: float) -> None:
        super().__init__()
        hidden = _round_up(dim * mult * 2 / 3, 8)
        self.proj_in = nn.Linear(dim, 2 * hidden, bias=False)
        self.proj_out = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(self.dropout(F.silu(gate) * value))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, dim_head: int, mult: float, dropout: float, causal: bool) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head, dropout, causal)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = SwiGLU(dim, mult, dropout)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.attn_norm(x), rope, mask)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """A stack of blocks over [batch, seq, dim] with a final norm."""

    def __init__(self, config: TokenizerConfig, depth: int, causal: bool) -> None:
        super().__init__()
        c = config
        self.layers = nn.ModuleList(
            Block(c.dim, c.heads, c.dim_head, c.mlp_mult, c.dropout, causal) for _ in range(depth)
        )
        self.rotary = Rotary(c.dim_head) if causal else None
        self.norm = nn.LayerNorm(c.dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        rope = self.rotary(x.shape[1], x.device) if self.rotary is not None else None
        for layer in self.layers:
            x = layer(x, rope, mask)
        return self.norm(x)


def spatial_window_mask(grid_h: int, grid_w: int, radius: int) -> Tensor:
    """Bool [N, N] (N = grid_h * grid_w, row-major): True where two tokens are within `radius` rows and columns."""
    rows = torch.arange(grid_h).repeat_interleave(grid_w)
    cols = torch.arange(grid_w).repeat(grid_h)
    near_rows = (rows[:, None] - rows[None, :]).abs() <= radius
    near_cols = (cols[:, None] - cols[None, :]).abs() <= radius
    return near_rows & near_cols


class SpatioTemporal(nn.Module):
    """Spatial and causal temporal transformers over a token grid [B, T', H', W', D].

    Spatial positions are a learned table initialised with 2-D sine/cosine; temporal
    positions are rotary (relative), so there is no maximum number of token-frames.
    With `spatial_window` r > 0 a token attends only to tokens at most r rows and r
    columns away, so a code describes its own neighbourhood: a patch of background far
    from the object gets the same code wherever the object is, which is what keeps the
    token distribution simple for the generator.
    """

    def __init__(self, config: TokenizerConfig, spatial_first: bool, spatial_window: int) -> None:
        super().__init__()
        grid_h, grid_w = config.token_grid
        self.spatial_first = spatial_first
        self.spatial_pos = nn.Parameter(sincos_2d(grid_h, grid_w, config.dim))
        self.spatial = Transformer(config, config.spatial_depth, causal=False)
        self.temporal = Transformer(config, config.temporal_depth, causal=True)
        window = spatial_window_mask(grid_h, grid_w, spatial_window) if spatial_window else None
        self.register_buffer("window", window, persistent=False)

    def _spatial(self, x: Tensor) -> Tensor:
        b, h = x.shape[0], x.shape[2]
        x = rearrange(x, "b t h w d -> (b t) (h w) d") + self.spatial_pos.to(x.dtype)
        return rearrange(self.spatial(x, self.window), "(b t) (h w) d -> b t h w d", b=b, h=h)

    def _temporal(self, x: Tensor) -> Tensor:
        b, h = x.shape[0], x.shape[2]
        x = rearrange(x, "b t h w d -> (b h w) t d")
        return rearrange(self.temporal(x), "(b h w) t d -> b t h w d", b=b, h=h)

    def forward(self, x: Tensor) -> Tensor:
        if self.spatial_first:
            return self._temporal(self._spatial(x))
        return self._spatial(self._temporal(x))


# ----------------------------------------------------------------------------- decoder output


def unpatchify(first: Tensor, rest: Tensor, patch_size: int, temporal_patch_size: int) -> Tensor:
    """Per-token patch values -> pixels: first [B, 1, H', W', c*p*p], rest [B, T'-1, H', W', c*pt*p*p]
    -> [B, c, 1 + pt*(T'-1), H, W]."""
    p, pt = patch_size, temporal_patch_size
    first = rearrange(first, "b t h w (c p1 p2) -> b c t (h p1) (w p2)", p1=p, p2=p)
    rest = rearrange(rest, "b t h w (c pt p1 p2) -> b c (t pt) (h p1) (w p2)", pt=pt, p1=p, p2=p)
    return torch.cat([first, rest], dim=2)


class PixelRefiner(nn.Module):
    """3x3 convolutions over each decoded frame, fed its colours and per-pixel token features.

    Each patch head draws its patch from its own token, so two neighbouring patches can
    disagree on where an edge crosses their border (a one-pixel step along a square's
    side); convolutions see both sides. Every frame is refined on its own, so the
    decoder stays causal. The output convolution starts at zero: a refiner added to a
    trained tokenizer starts as the identity and can only be trained up from there.
    """

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        c, p, pt, f, width = (config.channels, config.patch_size, config.temporal_patch_size,
                              config.refine_features, config.refine_channels)
        self.patch = (p, pt)
        self.first_features = nn.Linear(config.dim, f * p * p) if f else None
        self.tubelet_features = nn.Linear(config.dim, f * pt * p * p) if f else None
        self.net = nn.Sequential(
            nn.Conv2d(c + f, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, c, 3, padding=1),
        )
        for module in (self.first_features, self.tubelet_features):
            if module is not None:
                module.apply(_init_weights)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    @property
    def out_weight(self) -> Tensor:
        return self.net[-1].weight

    def forward(self, tokens: Tensor, pixels: Tensor) -> Tensor:
        """tokens [B, T', H', W', D], pixels [B, c, T, H, W] on the [-1, 1] scale -> refined pixels."""
        x = pixels
        if self.first_features is not None:
            feats = unpatchify(self.first_features(tokens[:, :1]), self.tubelet_features(tokens[:, 1:]),
                               *self.patch)
            x = torch.cat([x, feats.to(x.dtype)], dim=1)
        b, t = x.shape[0], x.shape[2]
        x = rearrange(x, "b c t h w -> (b t) c h w").contiguous(memory_format=torch.channels_last)
        delta = rearrange(self.net(x), "(b t) c h w -> b c t h w", b=b, t=t)
        return pixels + delta.to(pixels.dtype)


# ----------------------------------------------------------------------------- quantizer


class CodebookQuantizer(nn.Module):
    """One interface over vector-quantize-pytorch's VQ / FSQ / LFQ, always in float32.

    `forward(z [B, N, D]) -> (quantized [B, N, D], ids [B, N] long, loss scalar)`;
    `latents_from_ids(ids [B, N]) -> [B, N, D]`.
    """

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.kind = config.quantizer
        self.codebook_size = int(config.codebook_size)
        self.inner = self._build(config)

    def _build(self, c: TokenizerConfig) -> nn.Module:
        if self.kind == "vq":
            from vector_quantize_pytorch import VectorQuantize

            return VectorQuantize(
                dim=c.dim,
                codebook_size=c.codebook_size,
                codebook_dim=c.codebook_dim,
                use_cosine_sim=c.use_cosine_sim,
                decay=c.ema_decay,
                commitment_weight=c.commitment_weight,
                threshold_ema_dead_code=c.threshold_ema_dead_code,
                kmeans_init=c.kmeans_init,
            )
        if self.kind == "fsq":
            from vector_quantize_pytorch import FSQ

            if any(level < 3 for level in c.fsq_levels):
                raise ConfigError(f"tokenizer.fsq_levels must all be >= 3, got {c.fsq_levels}")
            # FSQ computes its implicit codebook when built, which a meta-device build
            # (parameter estimates, phenaki.training.footprint) cannot do: build that one on the CPU
            on_meta = torch.empty(0).device.type == "meta"
            with torch.device("cpu") if on_meta else contextlib.nullcontext():
                return FSQ(levels=list(c.fsq_levels), dim=c.dim)
        if self.kind == "lfq":
            from vector_quantize_pytorch import LFQ

            return LFQ(
                dim=c.dim,
                codebook_size=c.codebook_size,
                entropy_loss_weight=c.lfq_entropy_weight,
                commitment_loss_weight=c.commitment_weight,
            )
        raise ConfigError(f"tokenizer.quantizer must be 'vq', 'fsq' or 'lfq', got {self.kind!r}")

    def _dtype(self) -> torch.dtype:
        """float32 unless the whole model was cast to float64 (then stay in float64)."""
        for tensor in list(self.inner.parameters()) + list(self.inner.buffers()):
            if tensor.dtype == torch.float64:
                return torch.float64
        return torch.float32

    @property
    def needs_init(self) -> bool:
        """True for a k-means-initialised VQ that has not yet seen training data."""
        codebook = getattr(self.inner, "_codebook", None)
        return codebook is not None and not bool(codebook.initted)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.to(self._dtype())
            if self.kind == "vq":
                quantized, ids, loss = self.inner(z)
            elif self.kind == "fsq":
                quantized, ids = self.inner(z)
                loss = z.new_zeros(())
            else:
                quantized, ids, loss = self.inner(z)
        return quantized, ids.long(), loss.reshape(())

    def latents_from_ids(self, ids: Tensor) -> Tensor:
        with torch.autocast(device_type=ids.device.type, enabled=False):
            if self.kind == "vq":
                return self.inner.get_output_from_indices(ids)
            if self.kind == "fsq":  # table lookup keeps the model's dtype (float64 too)
                return self.inner.project_out(self.inner.implicit_codebook[ids].to(self._dtype()))
            return self.inner.indices_to_codes(ids)


# ----------------------------------------------------------------------------- tokenizer


class CViViT(nn.Module, PretrainedMixin):
    """The causal video tokenizer: `encode` pixels to ids, `decode` ids to pixels."""

    config_class = TokenizerConfig

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        _check_config(config)
        self.config = config
        c, p, pt = config.channels, config.patch_size, config.temporal_patch_size
        self.first_embed = nn.Linear(c * p * p, config.dim)
        self.tubelet_embed = nn.Linear(c * pt * p * p, config.dim)
        self.encoder = SpatioTemporal(config, spatial_first=True, spatial_window=config.spatial_window)
        self.quantizer = CodebookQuantizer(config)
        self.decoder = SpatioTemporal(config, spatial_first=False, spatial_window=config.decoder_window)
        self.first_head = nn.Linear(config.dim, c * p * p)
        self.tubelet_head = nn.Linear(config.dim, c * pt * p * p)
        self.refiner = PixelRefiner(config) if config.refine_channels else None
        for module in (self.first_embed, self.tubelet_embed, self.encoder, self.decoder, self.first_head, self.tubelet_head):
            module.apply(_init_weights)  # the quantizer keeps its library's own init

    # -- sizes ---------------------------------------------------------------

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def token_grid(self) -> tuple[int, int]:
        return self.config.token_grid

    def num_token_frames(self, num_frames: int) -> int:
        """T' for a clip of `num_frames` frames (which must be 1 + pt*k)."""
        self._check_frame_count(num_frames)
        return self.config.token_frames(num_frames)

    def num_frames(self, num_token_frames: int) -> int:
        """Frames decoded from `num_token_frames` token-frames."""
        if num_token_frames < 1:
            raise ValueError(f"need at least one token-frame, got {num_token_frames}")
        return self.config.frames_for(num_token_frames)

    @property
    def last_layer_weights(self) -> list[Tensor]:
        """The decoder's output weights (for VQGAN's adaptive adversarial weight)."""
        if self.refiner is not None:
            return [self.refiner.out_weight]
        return [self.first_head.weight, self.tubelet_head.weight]

    # -- validation ----------------------------------------------------------

    def _check_frame_count(self, num_frames: int) -> None:
        pt = self.config.temporal_patch_size
        if num_frames < 1 or (num_frames - 1) % pt:
            raise frame_count_error(num_frames, pt, self.config.num_frames)

    def _check_pixels(self, pixels: Tensor) -> None:
        cfg = self.config
        if not isinstance(pixels, Tensor) or pixels.ndim != 5:
            shape = tuple(pixels.shape) if isinstance(pixels, Tensor) else type(pixels).__name__
            raise ValueError(
                f"expected pixels [B, C, T, H, W] (an image is T=1: use x.unsqueeze(2)); got {shape}"
            )
        if not pixels.is_floating_point():
            raise TypeError(f"expected float pixels in [0, 1], got {pixels.dtype} (divide uint8 by 255)")
        if pixels.shape[1] != cfg.channels:
            raise ValueError(
                f"expected {cfg.channels} channels (tokenizer.channels) in dim 1 of [B, C, T, H, W]; "
                f"got {pixels.shape[1]} (shape {tuple(pixels.shape)})"
            )
        height, width = pixels.shape[-2:]
        if (height, width) != tuple(cfg.image_size):
            raise ValueError(
                f"expected frames of {cfg.image_size[0]}x{cfg.image_size[1]} "
                f"(tokenizer.image_size); got {height}x{width}"
            )
        self._check_frame_count(pixels.shape[2])

    def _check_ids(self, ids: Tensor) -> None:
        if not isinstance(ids, Tensor) or ids.ndim != 4:
            shape = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
            raise ValueError(f"expected ids [B, T', H', W']; got {shape}")
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise TypeError(f"ids must be an integer tensor, got {ids.dtype}")
        if tuple(ids.shape[-2:]) != self.token_grid:
            raise ValueError(
                f"expected a token grid of {self.token_grid[0]}x{self.token_grid[1]}; "
                f"got {ids.shape[-2]}x{ids.shape[-1]}"
            )
        if ids.shape[1] < 1:
            raise ValueError("ids have no token-frames; need T' >= 1")
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self.codebook_size:
            raise ValueError(f"ids must lie in [0, {self.codebook_size}): found min {low}, max {high}")

    # -- building blocks -----------------------------------------------------

    def _embed(self, pixels: Tensor) -> Tensor:
        """Pixels [B, C, T, H, W] in [0, 1] -> token grid [B, T', H', W', D]."""
        p, pt = self.config.patch_size, self.config.temporal_patch_size
        x = pixels * 2 - 1
        first = rearrange(x[:, :, :1], "b c t (h p1) (w p2) -> b t h w (c p1 p2)", p1=p, p2=p)
        rest = rearrange(
            x[:, :, 1:], "b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)", pt=pt, p1=p, p2=p
        )
        return torch.cat([self.first_embed(first), self.tubelet_embed(rest)], dim=1)

    def _unembed(self, x: Tensor) -> Tensor:
        """Token grid [B, T', H', W', D] -> pixels [B, C, T, H, W] (unclamped, [0, 1] scale)."""
        pixels = unpatchify(self.first_head(x[:, :1]), self.tubelet_head(x[:, 1:]),
                            self.config.patch_size, self.config.temporal_patch_size)
        if self.refiner is not None:
            pixels = self.refiner(x, pixels)
        return (pixels + 1) / 2

    def _quantize(self, latents: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t, h = latents.shape[1], latents.shape[2]
        flat = rearrange(latents, "b t h w d -> b (t h w) d")
        quantized, ids, loss = self.quantizer(flat)
        quantized = rearrange(quantized, "b (t h w) d -> b t h w d", t=t, h=h)
        ids = rearrange(ids, "b (t h w) -> b t h w", t=t, h=h)
        return quantized, ids, loss

    def _latents(self, ids: Tensor) -> Tensor:
        """ids [B, T', H', W'] -> quantized latents [B, T', H', W', D] in the decoder's dtype."""
        t, h = ids.shape[1], ids.shape[2]
        flat = self.quantizer.latents_from_ids(rearrange(ids.long(), "b t h w -> b (t h w)"))
        return rearrange(flat, "b (t h w) d -> b t h w d", t=t, h=h).to(self.first_head.weight.dtype)

    ENCODER_PARTS = ("first_embed", "tubelet_embed", "encoder", "quantizer")

    def encoder_modules(self) -> list[nn.Module]:
        """Everything that decides the ids: freeze these to fine-tune only the decoder."""
        return [getattr(self, name) for name in self.ENCODER_PARTS]

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The state of `encoder_modules`: two tokenizers with equal ones give the same ids."""
        return {k: v for k, v in self.state_dict().items() if k.split(".", 1)[0] in self.ENCODER_PARTS}

    def _decode_latents(self, quantized: Tensor) -> Tensor:
        return self._unembed(self.decoder(quantized))

    # -- public API ----------------------------------------------------------

    def forward(self, pixels: Tensor, frozen_encoder: bool = False) -> CViViTOutput:
        """Training pass: reconstruction, ids and quantizer loss (VQ codebooks update in train mode).

        `frozen_encoder`: the ids come from `encode` (no gradient, codebook untouched) and only
        the decoder learns, so ids cached or generated for this tokenizer keep their meaning.
        """
        self._check_pixels(pixels)
        if frozen_encoder:
            ids = self.encode(pixels)
            recon = self._decode_latents(self._latents(ids))
            loss = recon.new_zeros((), dtype=torch.float32)
        else:
            quantized, ids, loss = self._quantize(self.encoder(self._embed(pixels)))
            recon = self._decode_latents(quantized)
        with torch.no_grad():  # no host sync: the ids come from the quantizer, so in range
            counts = code_histogram(ids, self.codebook_size, validate=False)
        return CViViTOutput(recon, ids, loss, usage_from_counts(counts), perplexity_from_counts(counts))

    @torch.no_grad()
    def encode(self, pixels: Tensor) -> Tensor:
        """Pixels [B, C, T, H, W] in [0, 1] -> ids [B, T', H', W'] (deterministic, no codebook update)."""
        self._check_pixels(pixels)
        if self.quantizer.needs_init:
            raise RuntimeError(
                "the k-means-initialised codebook has not seen training data yet; run a training "
                "forward first (encode never initialises or updates the codebook)"
            )
        with eval_mode(self):
            _, ids, _ = self._quantize(self.encoder(self._embed(pixels)))
        return ids

    @torch.no_grad()
    def decode(self, ids: Tensor) -> Tensor:
        """ids [B, T', H', W'] -> pixels [B, C, 1 + pt*(T'-1), H, W] clamped to [0, 1]."""
        self._check_ids(ids)
        with eval_mode(self):
            recon = self._decode_latents(self._latents(ids))
        # float32 out even under bf16 autocast: callers write videos and compute metrics
        return recon.to(self.first_head.weight.dtype).clamp(0, 1)

    def code_histogram(self, ids: Tensor) -> Tensor:
        """Counts of each code in `ids` (length `codebook_size`), for usage reports."""
        return code_histogram(ids, self.codebook_size)


def _check_config(config: TokenizerConfig) -> None:
    """Catch settings the dataclass cannot (they would otherwise fail deep inside torch)."""
    if not isinstance(config, TokenizerConfig):
        raise TypeError(f"CViViT expects a TokenizerConfig, got {type(config).__name__}")
    for name in ("dim", "heads", "dim_head", "channels", "patch_size", "temporal_patch_size"):
        if getattr(config, name) < 1:
            raise ConfigError(f"tokenizer.{name} must be positive, got {getattr(config, name)}")
    for name in ("spatial_depth", "temporal_depth"):
        if getattr(config, name) < 0:
            raise ConfigError(f"tokenizer.{name} must be >= 0, got {getattr(config, name)}")


def _init_weights(module: nn.Module) -> None:
    """ViT-style init: small normal linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)

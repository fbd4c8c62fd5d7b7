"""How big a training run is before it runs: parameters, tokens, memory per device.

`footprint(config, which)` builds the model on the meta device (shapes only, no
memory), counts parameters and tokens per sample, and estimates memory per device
for data-parallel (DDP: everything replicated) and fully sharded (FSDP full shard:
parameters, gradients and optimiser state divided by the number of processes)
training at the configured batch size. The train scripts print it with `--dry-run`.

Estimate (bytes): mixed-precision AdamW keeps fp32 parameters (4), fp32 gradients
(4), two fp32 moments (8) and the fp32 EMA copy (4) per parameter; FSDP shards all
of them, the EMA included (each process averages its own shard). A frozen pretrained text encoder is
counted in half precision, as it is loaded on a GPU. Activations per
transformer layer follow Korthikanti et al. (2022), without recomputation:
s * b * h * (34 + 5 * a * s / h) bytes for 16-bit activations (s tokens, b batch,
h width, a heads); cross-attention adds its own s * b * h * (16 + 5 * a * L / h)
term for text length L. It is an estimate for planning (what fits, which
strategy), not a promise: allocator slack and temporary buffers come on top.

Compute per training sample (`flops_per_sample`) follows the usual MFU convention:
6 x trainable parameters x tokens (forward and backward of every weight) plus the
attention products, 12 x layers x tokens x (tokens + text length) x attention width;
a frozen text encoder whose embeddings are cached costs nothing per step. With a
measured or assumed model-FLOP utilisation, `train_seconds` turns it into time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ..config import Config

GIB = 2**30
BYTES_PER_PARAM_TRAINED = 4 + 4 + 8 + 4  # fp32 master + grad + Adam moments + EMA
EMA_BYTES_PER_PARAM = 4  # the EMA copy (sharded like the rest under FSDP)


@dataclass
class Footprint:
    """What one training run of `which` needs; memory figures are per device, in bytes."""

    which: str
    params: int
    frozen_params: int
    tokens_per_sample: int
    batch_per_device: int
    world_size: int
    state_bytes: int  # params + grads + optimiser + EMA, unsharded
    frozen_bytes: int  # frozen modules (bf16), e.g. a frozen text encoder
    activation_bytes: int
    notes: list[str] = field(default_factory=list)
    flops_per_sample: float = 0.0  # model FLOPs of one training sample (forward + backward)

    def per_device(self, strategy: Literal["ddp", "fsdp"]) -> int:
        """Estimated bytes on each device under DDP or FSDP full shard."""
        state = self.state_bytes if strategy == "ddp" else self.state_bytes // max(1, self.world_size)
        return state + self.frozen_bytes + self.activation_bytes

    def train_seconds(self, samples: float, devices: int, peak_tflops: float, mfu: float) -> float:
        """Wall-clock seconds to train on `samples` clips with `devices` accelerators of `peak_tflops`
        (dense bf16) each running at model-FLOP utilisation `mfu` (an estimate: the MFU is the input
        that decides it, best taken from a measured step; bench/gpu_check.sh reports one)."""
        if not (0 < mfu <= 1) or devices < 1 or peak_tflops <= 0:
            raise ValueError(f"need 0 < mfu <= 1, devices >= 1, peak > 0 (got {mfu}, {devices}, {peak_tflops})")
        return samples * self.flops_per_sample / (devices * peak_tflops * 1e12 * mfu)

    def lines(self) -> list[str]:
        """Human-readable report (what `--dry-run` prints)."""
        out = [
            f"{self.which}: {self.params / 1e6:,.1f} M trainable parameters"
            + (f", {self.frozen_params / 1e6:,.1f} M frozen" if self.frozen_params else ""),
            f"  tokens per sample: {self.tokens_per_sample:,}; batch per device: {self.batch_per_device}; "
            f"processes: {self.world_size}",
            f"  weights+grads+AdamW+EMA (fp32): {self.state_bytes / GIB:,.2f} GiB unsharded",
            f"  activations at batch {self.batch_per_device} (bf16, no recomputation): "
            f"{self.activation_bytes / GIB:,.2f} GiB",
            f"  per device, DDP: {self.per_device('ddp') / GIB:,.2f} GiB; "
            f"FSDP full shard over {self.world_size}: {self.per_device('fsdp') / GIB:,.2f} GiB",
        ]
        if self.flops_per_sample:
            out.append(f"  compute: {self.flops_per_sample / 1e12:,.2f} TFLOP per training sample "
                       f"(6 x parameters x tokens + attention)")
        out += [f"  note: {n}" for n in self.notes]
        return out


def _layer_activation_bytes(tokens: int, batch: int, width: int, heads: int, text_len: int = 0) -> int:
    """Korthikanti et al. activation bytes for one pre-norm block (plus cross-attention)."""
    s, b, h, a = tokens, batch, width, heads
    total = s * b * h * (34 + 5 * a * s / h)
    if text_len:
        total += s * b * h * (16 + 5 * a * text_len / h)
    return int(total)


def _meta_params(build) -> tuple[int, torch.nn.Module]:
    with torch.device("meta"):
        module = build()
    return sum(p.numel() for p in module.parameters()), module


def footprint(config: Config, which: Literal["tokenizer", "maskgit", "matcher"], world_size: int = 1) -> Footprint:
    """Parameter, token and memory estimate for training `which` with `config` (nothing allocated)."""
    from ..models.cvivit import CViViT

    tok = config.tokenizer
    token_frames = tok.token_frames(tok.num_frames)
    grid = tok.token_grid
    tokens = token_frames * grid[0] * grid[1]
    notes: list[str] = []
    if which == "tokenizer":
        cfg = config.train_tokenizer
        params, _ = _meta_params(lambda: CViViT(tok))
        frame_tokens = grid[0] * grid[1]
        layers = 2 * (tok.spatial_depth + tok.temporal_depth)  # encoder + decoder
        # spatial layers see T' sequences of H'W' tokens; temporal ones H'W' sequences of T'
        act = (tok.spatial_depth * 2) * _layer_activation_bytes(frame_tokens, cfg.batch_size * token_frames,
                                                                 tok.dim, tok.heads)
        act += (tok.temporal_depth * 2) * _layer_activation_bytes(token_frames, cfg.batch_size * frame_tokens,
                                                                  tok.dim, tok.heads)
        pixels = cfg.batch_size * 3 * tok.num_frames * tok.image_size[0] * tok.image_size[1]
        act += pixels * 4 * 6  # input, output, losses (fp32)
        notes.append(f"{layers} transformer layers; discriminators and perceptual nets not counted")
        return Footprint("tokenizer", params, 0, tokens, cfg.batch_size, world_size,
                         params * BYTES_PER_PARAM_TRAINED, 0, act, notes)  # FLOPs: convolutions not modelled

    if which == "matcher":
        return _matcher_footprint(config, world_size)
    from ..models.maskgit import MaskGit

    cfg = config.train_maskgit
    tr = config.transformer
    frozen = trainable_text = 0
    if config.text.kind == "scratch":
        text_dim = config.text.dim
        trainable_text = _text_params(_scratch_t5_config(config))
    else:
        t5 = _pretrained_t5_config(config.text.name_or_path)
        if t5 is None:
            text_dim = tr.text_dim or 768
            notes.append(f"text encoder {config.text.name_or_path!r}: config not available offline, not counted; "
                         f"text width taken as {text_dim}")
        else:
            text_dim = t5.d_model
            frozen = _text_params(t5)
        if config.text.trainable:
            trainable_text, frozen = frozen, 0
        else:
            notes.append("the frozen text encoder can stay off the training devices when its embeddings are cached")
    config.resolve(text_dim=text_dim)
    params, _ = _meta_params(lambda: MaskGit(config.transformer))
    act = tr.depth * _layer_activation_bytes(tokens, cfg.batch_size, tr.dim, tr.heads, config.text.max_length)
    act += tokens * cfg.batch_size * tr.codebook_size * (2 + 4)  # bf16 logits + fp32 for the loss
    if tr.critic:
        notes.append("token critic included in the parameters; its activations are not")
    total = params + trainable_text
    attention = 12 * tr.depth * tokens * (tokens + config.text.max_length) * tr.heads * tr.dim_head
    return Footprint("maskgit", total, frozen, tokens, cfg.batch_size, world_size,
                     total * BYTES_PER_PARAM_TRAINED, frozen * 2, act, notes,
                     flops_per_sample=6.0 * params * tokens + attention)


# T5 v1.1 encoders (Raffel et al. 2020; the 1.1 checkpoints): width, heads, layers, feed-forward
T5_V1_1 = {
    "small": (512, 6, 8, 1024), "base": (768, 12, 12, 2048), "large": (1024, 16, 24, 2816),
    "xl": (2048, 32, 24, 5120), "xxl": (4096, 64, 24, 10240),
}


def _scratch_t5_config(config: Config):
    """The small T5 encoder trained from scratch on a closed vocabulary."""
    from transformers import T5Config

    t = config.text
    return T5Config(vocab_size=t.vocab_size, d_model=t.dim, d_kv=t.dim // t.heads, d_ff=t.ff_dim,
                    num_layers=t.depth, num_heads=t.heads)


def _pretrained_t5_config(name: str | None):
    """A pretrained encoder's config: from the local cache/folder, else the T5 v1.1 family table."""
    if not name:
        return None
    from transformers import AutoConfig, T5Config

    try:
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - not available offline: fall back to the known family
        pass
    size = name.rsplit("-", 1)[-1].lower()
    if "t5-v1_1" in name and size in T5_V1_1:
        d, heads, layers, ff = T5_V1_1[size]
        return T5Config(vocab_size=32128, d_model=d, d_kv=64, d_ff=ff, num_layers=layers, num_heads=heads,
                        feed_forward_proj="gated-gelu")
    return None


def _text_params(t5_config) -> int:
    """Parameters of the encoder built (on the meta device) from its config."""
    from transformers import AutoModel, T5Config, T5EncoderModel

    with torch.device("meta"):
        model = T5EncoderModel(t5_config) if isinstance(t5_config, T5Config) else AutoModel.from_config(t5_config)
    return sum(p.numel() for p in model.parameters())


def _matcher_footprint(config: Config, world_size: int) -> Footprint:
    """The matcher: its convolutions' outputs per frame dominate the activations."""
    from ..models.matcher import TextVideoMatcher

    cfg, m = config.train_matcher, config.matcher
    config.resolve(text_dim=config.text.dim if config.text.kind == "scratch" else None)
    params, _ = _meta_params(lambda: TextVideoMatcher(m))
    frames = cfg.batch_size * config.data.num_frames
    h, w = m.image_size
    act = 0
    for i, channels in enumerate(m.conv_channels, start=1):
        act += frames * channels * (h >> i) * (w >> i) * 2 * 2  # bf16 output and its GELU
    act += m.depth * _layer_activation_bytes(config.data.num_frames, cfg.batch_size, m.dim, m.heads)
    notes = ["a matcher's tokens are frames (one per frame, in its temporal transformer)",
             "the pipeline's frozen text encoder is not counted (its embeddings are cached per caption)"]
    return Footprint("matcher", params, 0, config.data.num_frames, cfg.batch_size, world_size,
                     params * BYTES_PER_PARAM_TRAINED, 0, act, notes)

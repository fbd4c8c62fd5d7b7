"""Typed configuration: YAML files are loaded into dataclasses, strictly.

Configs are data. Every section is a dataclass with defaults; a YAML file only
overrides what it names. An unknown or misspelt key is an error that names the key
and its section (with the closest known key as a hint), because a silently ignored
typo in a training config wastes a training run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .sampling.settings import SamplingSettings
from .utils.typed import ConfigError, from_dict, to_dict

KERNELS = ("auto", "sdpa", "explicit", "default")
"""How models pick their attention kernel and threads on a CPU (phenaki.kernels)."""

__all__ = [
    "ConfigError",
    "TokenizerConfig",
    "TransformerConfig",
    "TextConfig",
    "DataConfig",
    "TrainConfig",
    "SamplingSettings",
    "MatcherConfig",
    "Config",
    "load_config",
    "from_dict",
    "to_dict",
    "same_token_ids",
    "DECODER_ONLY_FIELDS",
]

@dataclass
class TokenizerConfig:
    """C-ViViT: first frame patched alone, later frames in tubelets of `temporal_patch_size`."""

    image_size: tuple[int, int] = (64, 64)
    channels: int = 3
    patch_size: int = 8
    temporal_patch_size: int = 2
    num_frames: int = 11  # frames per training clip (1 + temporal_patch_size * k)
    dim: int = 256
    spatial_depth: int = 4
    temporal_depth: int = 4
    heads: int = 8
    dim_head: int = 32
    mlp_mult: float = 4.0
    dropout: float = 0.0
    spatial_window: int = 0  # > 0: spatial attention only within this many rows/columns (0 = whole frame)
    decoder_spatial_window: int | None = None  # the decoder's own window (None = spatial_window): a wider one lets it
    # draw a patch from its neighbours' codes while each code still describes only its own patch
    refine_channels: int = 0  # > 0: per-frame 3x3 convolutions of this width after the patch heads (0 = none): they
    # reconcile neighbouring patches that disagree on where an edge lies
    refine_features: int = 16  # per-pixel features the refiner gets from the tokens, beside the drawn colours
    quantizer: Literal["vq", "fsq", "lfq"] = "vq"
    codebook_size: int = 1024
    codebook_dim: int = 32  # vq: projected lookup dim (factorised codes)
    use_cosine_sim: bool = True  # vq: l2-normalised codes
    ema_decay: float = 0.99  # vq: codebook EMA
    commitment_weight: float = 0.25
    threshold_ema_dead_code: float = 2.0  # vq: replace codes used less than this
    kmeans_init: bool = False  # vq: initialise the codebook by k-means on the first batch
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])  # fsq: prod = size
    lfq_entropy_weight: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.image_size, int):
            self.image_size = (self.image_size, self.image_size)
        self.image_size = tuple(int(s) for s in self.image_size)  # type: ignore[assignment]
        h, w = self.image_size
        if h % self.patch_size or w % self.patch_size:
            raise ConfigError(
                f"tokenizer.image_size {self.image_size} is not divisible by "
                f"tokenizer.patch_size {self.patch_size}"
            )
        if (self.num_frames - 1) % self.temporal_patch_size:
            raise ConfigError(
                f"tokenizer.num_frames {self.num_frames} must be 1 + "
                f"{self.temporal_patch_size} * k"
            )
        if self.spatial_window < 0:
            raise ConfigError(f"tokenizer.spatial_window must be >= 0 (0 = whole frame), got {self.spatial_window}")
        if self.decoder_spatial_window is not None and self.decoder_spatial_window < 0:
            raise ConfigError("tokenizer.decoder_spatial_window must be >= 0 (0 = whole frame) or null (the "
                              f"encoder's spatial_window), got {self.decoder_spatial_window}")
        if self.refine_channels < 0 or self.refine_features < 0:
            raise ConfigError("tokenizer.refine_channels and tokenizer.refine_features must be >= 0, got "
                              f"{self.refine_channels} and {self.refine_features}")
        if self.quantizer == "fsq":
            size = 1
            for level in self.fsq_levels:
                size *= level
            self.codebook_size = size
        if self.quantizer == "lfq" and self.codebook_size & (self.codebook_size - 1):
            raise ConfigError(
                f"tokenizer.codebook_size {self.codebook_size} must be a power of 2 for lfq"
            )

    @property
    def decoder_window(self) -> int:
        """The decoder's spatial attention window in effect (0 = whole frame)."""
        return self.spatial_window if self.decoder_spatial_window is None else self.decoder_spatial_window

    @property
    def token_grid(self) -> tuple[int, int]:
        """Spatial token grid (H', W') of one token-frame."""
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    def token_frames(self, num_frames: int) -> int:
        """Token-frames for a clip of `num_frames` frames (1 for the first, then tubelets)."""
        return 1 + (num_frames - 1) // self.temporal_patch_size

    def frames_for(self, token_frames: int) -> int:
        """Video frames decoded from `token_frames` token-frames."""
        return 1 + (token_frames - 1) * self.temporal_patch_size


@dataclass
class TransformerConfig:
    """The bidirectional MaskGIT transformer over the token grid."""

    dim: int = 512
    depth: int = 8
    heads: int = 8
    dim_head: int = 64
    mlp_mult: float = 4.0
    dropout: float = 0.0
    max_token_frames: int = 6  # largest T' the position tables cover
    cross_attend: bool = True
    critic: bool = False  # optional token critic (off by default)
    # filled from the tokenizer and text encoder when a model is built (see `resolve`)
    codebook_size: int = 1024
    token_grid: tuple[int, int] = (8, 8)
    text_dim: int = 256


@dataclass
class TextConfig:
    """Text encoder: a pretrained Hugging Face encoder, or a small T5 trained from scratch."""

    kind: Literal["pretrained", "scratch"] = "pretrained"
    name_or_path: str = "google/t5-v1_1-base"
    max_length: int = 64
    trainable: bool = False
    # scratch encoder (closed vocabularies such as Shapes)
    dim: int = 256
    depth: int = 2
    heads: int = 4
    ff_dim: int = 512
    vocab_size: int = 256
    cache_dir: str | None = None  # optional on-disk embedding cache


@dataclass
class DataConfig:
    """Where clips come from and how they are shaped."""

    kind: Literal["shapes", "folder", "shards"] = "shapes"
    path: str | None = None  # folder root (captions.jsonl / captions.csv) or shard glob
    num_frames: int = 11
    fps: float = 8.0
    image_size: tuple[int, int] = (64, 64)
    crop: Literal["center", "random"] = "center"
    num_samples: int = 100_000  # epoch size for generated data (shapes)
    context_frames: int = 5
    straddle_prob: float = 0.5
    image_prob: float = 0.0
    shapes_version: int = 1  # 1: one object (docs/shapes.md); 2: two objects and events (docs/shapes2.md)
    holdout_combinations: list[list[str]] = field(default_factory=list)  # [colour, shape, verb]
    holdout_pairings: list[list[str]] = field(default_factory=list)  # v2: [verb, verb] never in one scene
    holdout_phrasings: list[str] = field(default_factory=list)
    max_scenes: int = 4  # v2: a straddling clip ends a story of 2..max_scenes scenes
    one_object_prob: float = 0.25  # v2: share of v1 stories (one object that moves and changes colour)
    two_clause_prob: float = 0.5  # v2: share of scenes with two clauses, where two fit
    num_workers: int = 0
    shuffle_buffer: int = 1000  # samples shuffled together when streaming shards
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.image_size, int):
            self.image_size = (self.image_size, self.image_size)
        self.image_size = tuple(int(s) for s in self.image_size)  # type: ignore[assignment]
        for combo in self.holdout_combinations:
            if len(combo) != 3:
                raise ConfigError(
                    f"data.holdout_combinations entry {combo!r} must be [colour, shape, direction or verb]"
                )
        if self.shapes_version not in (1, 2):
            raise ConfigError(f"data.shapes_version must be 1 or 2, got {self.shapes_version!r}")
        if self.shapes_version == 1 and self.holdout_pairings:
            raise ConfigError("data.holdout_pairings needs data.shapes_version: 2 (v1 scenes have one clause)")
        if self.max_scenes < 2:
            raise ConfigError(f"data.max_scenes must be >= 2, got {self.max_scenes}")
        for name in ("one_object_prob", "two_clause_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"data.{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class MatcherConfig:
    """The text-video matcher: a CLIP-style pair of encoders that scores a whole window's frames
    against its prompt, so the sampler can choose among candidate windows by what they show."""

    image_size: tuple[int, int] = (64, 64)  # resolved from the tokenizer
    channels: int = 3
    conv_channels: tuple[int, ...] = (32, 64, 128, 128)  # each a 4x4 stride-2 convolution: frame size / 2
    dim: int = 256  # width of the temporal transformer over per-frame features
    depth: int = 2
    heads: int = 4
    max_frames: int = 16
    embed_dim: int = 128  # the shared embedding space of clips and prompts
    text_dim: int = 256  # resolved from the text encoder

    def __post_init__(self) -> None:
        if isinstance(self.image_size, int):
            self.image_size = (self.image_size, self.image_size)
        self.image_size = tuple(int(v) for v in self.image_size)  # type: ignore[assignment]
        self.conv_channels = tuple(int(v) for v in self.conv_channels)
        if not self.conv_channels:
            raise ConfigError("matcher.conv_channels: at least one convolution is needed")
        factor = 2 ** len(self.conv_channels)
        if any(v % factor for v in self.image_size):
            raise ConfigError(f"matcher: image_size {self.image_size} must be divisible by {factor} "
                              f"(2 ** len(conv_channels))")
        if self.dim % self.heads:
            raise ConfigError(f"matcher: dim {self.dim} must be divisible by heads {self.heads}")
        for name in ("channels", "dim", "depth", "heads", "max_frames", "embed_dim", "text_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"matcher.{name} must be >= 1, got {getattr(self, name)}")


TRACKERS = ("tensorboard", "wandb", "mlflow")
"""Experiment trackers a training run can report to (through accelerate's `log_with`)."""


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping for one trainer."""

    output_dir: str = "runs/default"
    steps: int = 10_000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"
    save_every: int = 1000
    keep_checkpoints: int = 2
    preview_every: int = 1000
    log_every: int = 50
    seed: int = 0
    kernels: str | None = None  # attention path and threads on a CPU (phenaki.kernels): auto (time them on the
    # first batch, single process, MaskGIT), sdpa, explicit, default; None = PHENAKI_KERNELS, else auto
    compile: bool = False  # torch.compile the trained model in place (~10% faster MaskGIT steps on CPU, after
    # a one-off compile of about a minute); inductor in torch 2.13 fails on the tokenizer's vq quantizer: fsq/lfq only
    # tokenizer losses
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    hard_weight: float = 0.0  # tokenizer: weight of the squared error of each clip's worst pixels (hard_fraction
    hard_fraction: float = 0.01  # of them): the few that decide an object's outline (losses.reconstruction_loss)
    perceptual_weight: float = 0.0
    perceptual_net: str | None = None  # path to local torchvision VGG16 weights
    adversarial_weight: float = 0.0
    adversarial_start: int = 2000
    discriminator_lr: float = 1e-4
    gradient_penalty_weight: float = 10.0
    adversarial_frames: int = 0  # > 0: the discriminator scores a random run of this many frames per clip (0 = all)
    init_from: str | None = None  # tokenizer: a trained tokenizer, or a run's checkpoint (its EMA weights);
    # maskgit: a pipeline directory (fine-tune it with fresh optimiser state). Its architecture replaces the config's.
    decoder_only: bool = False  # freeze the encoder and quantizer: ids keep their meaning, the decoder improves
    # maskgit
    mask_schedule: str = "cosine"
    cond_drop_prob: float = 0.1
    continuation_prob: float = 0.3
    temporal_mask_prob: float = 0.0  # share of samples masked later token-frames first (see masking.random_mask)
    temporal_mask_spread: float = 1.0  # width of their masked/given frontier, in token-frames
    label_smoothing: float = 0.0
    critic_weight: float = 1.0
    scene_crop_prob: float = 0.5  # matcher: share of one-scene clips cut to a random run of sampling.scene_frames
    # frames, the length of the continuation scenes it scores (clips that straddle a cut always lose their context)
    critic_only: bool = False  # train only a token critic onto the init_from pipeline's frozen generator and
    # text encoder (a fresh critic is added when it has none); the generator's samples stay as they were
    preview_prompts: list[str] = field(default_factory=list)
    log_with: list[str] = field(default_factory=list)  # experiment trackers through accelerate, besides
    # metrics.jsonl: tensorboard, wandb, mlflow, or all (each needs its package; files go under output_dir)
    tokens_cache: str | None = None  # token cache folder (default <output_dir>/tokens)
    cache_items: int | None = None  # clips to tokenise (default data.num_samples)

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        if not 0.0 < self.hard_fraction <= 1.0:
            raise ConfigError(f"hard_fraction must be in (0, 1], got {self.hard_fraction}")
        if self.kernels is not None and self.kernels not in KERNELS:
            raise ConfigError(f"kernels: unknown kernel mode {self.kernels!r}; choose from {', '.join(KERNELS)}")
        if isinstance(self.log_with, str):
            self.log_with = [t for t in self.log_with.replace(",", " ").split() if t]
        unknown = sorted(set(self.log_with) - set(TRACKERS) - {"all"})
        if unknown:
            raise ConfigError(f"log_with: unknown tracker(s) {', '.join(unknown)}; choose from "
                              f"{', '.join(TRACKERS)} or all")
        if "all" in self.log_with:
            self.log_with = list(TRACKERS)


@dataclass
class Config:
    """Everything one run needs: models, data, the trainers, sampling."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    text: TextConfig = field(default_factory=TextConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train_tokenizer: TrainConfig = field(default_factory=TrainConfig)
    train_maskgit: TrainConfig = field(default_factory=TrainConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    train_matcher: TrainConfig = field(default_factory=TrainConfig)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)

    def __post_init__(self) -> None:
        self.resolve()

    def resolve(self, text_dim: int | None = None) -> None:
        """Copy what the transformer must agree on from the tokenizer (and text encoder)."""
        self.transformer.codebook_size = self.tokenizer.codebook_size
        self.transformer.token_grid = self.tokenizer.token_grid
        self.matcher.image_size = self.tokenizer.image_size
        self.matcher.channels = self.tokenizer.channels
        if text_dim is not None:
            self.transformer.text_dim = text_dim
        elif self.text.kind == "scratch":
            self.transformer.text_dim = self.text.dim


DECODER_ONLY_FIELDS = ("decoder_spatial_window", "refine_channels", "refine_features")
"""Tokenizer settings of the decoder alone: they change how ids become pixels, never which ids a clip gets."""


def same_token_ids(a: TokenizerConfig | dict[str, Any], b: TokenizerConfig | dict[str, Any]) -> bool:
    """Whether two tokenizer configs give clips the same ids' meaning (decoder-only settings aside).

    A plain dict (as stored beside a token cache) is read with today's defaults for keys it
    lacks, so a cache written before a decoder option existed stays usable. A dict that
    is not a valid config compares unequal.
    """
    def encoder_view(cfg: TokenizerConfig | dict[str, Any]) -> dict[str, Any] | None:
        if isinstance(cfg, dict):
            try:
                cfg = from_dict(TokenizerConfig, {k: v for k, v in cfg.items() if k != "class"})
            except ConfigError:
                return None
        return {k: v for k, v in to_dict(cfg).items() if k not in DECODER_ONLY_FIELDS}

    view_a, view_b = encoder_view(a), encoder_view(b)
    return view_a is not None and view_a == view_b


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML (or JSON) config file into a `Config`; `overrides` use dotted keys."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML/JSON: {exc}") from exc
    data = data or {}
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return from_dict(Config, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc

"""Tokenizer training losses: reconstruction, optional perceptual, optional adversarial.

Everything returns a dict of named terms so the trainer can log each one; the key
"loss" is the weighted total to back-propagate.

The adversarial part follows VQGAN: a hinge-loss discriminator (over frames with 2-D
convolutions, or over clips with 3-D ones), an adaptive generator weight (ratio of the
reconstruction and GAN gradient norms at the decoder's last layer), an R1 penalty on
real inputs, and no adversarial term before `adversarial_start`. The discriminator is
its own module with its own optimiser: nothing here registers it inside the tokenizer.

The perceptual loss wraps any frozen feature network; `vgg16_perceptual` builds the
usual VGG16 one from a local weights file (torchvision is an optional dependency).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClipDiscriminator",
    "FrameDiscriminator",
    "PerceptualLoss",
    "TokenizerLoss",
    "adaptive_weight",
    "adversarial_factor",
    "build_discriminator",
    "discriminator_parameters",
    "frozen",
    "hinge_d_loss",
    "hinge_g_loss",
    "r1_penalty",
    "reconstruction_loss",
    "vgg16_perceptual",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _frames(x: Tensor) -> Tensor:
    """[B, C, T, H, W] videos -> [(B T), C, H, W] frames; images pass through."""
    if x.ndim == 5:
        return rearrange(x, "b c t h w -> (b t) c h w")
    if x.ndim == 4:
        return x
    raise ValueError(f"expected videos [B, C, T, H, W] or images [B, C, H, W]; got {tuple(x.shape)}")


# ----------------------------------------------------------------------------- reconstruction


def reconstruction_loss(
    recon: Tensor, target: Tensor, l1_weight: float = 1.0, l2_weight: float = 1.0,
    hard_weight: float = 0.0, hard_fraction: float = 0.01,
) -> dict[str, Tensor]:
    """Weighted L1 + L2 pixel loss (computed in float32): {"l1", "l2", "recon"}, and with
    `hard_weight` > 0 "hard": the mean squared error (summed over channels) of each clip's
    `hard_fraction` worst pixels.

    The hard term is for what a mean over all pixels barely sees: a corner drawn round
    costs a few pixels of a clip whose other pixels are nearly right, so its share of the
    mean is tiny, but those few pixels are what tells a square from a circle.
    """
    if recon.shape != target.shape:
        raise ValueError(f"recon {tuple(recon.shape)} and target {tuple(target.shape)} differ in shape")
    if not 0.0 < hard_fraction <= 1.0:
        raise ValueError(f"hard_fraction must be in (0, 1], got {hard_fraction}")
    diff = recon.float() - target.float()
    squared = diff.pow(2)
    l1, l2 = diff.abs().mean(), squared.mean()
    terms = {"l1": l1.detach(), "l2": l2.detach(), "recon": l1_weight * l1 + l2_weight * l2}
    if hard_weight > 0:
        per_pixel = squared.sum(dim=1).reshape(len(diff), -1)  # [B, pixels]
        k = max(1, round(hard_fraction * per_pixel.shape[1]))
        hard = per_pixel.topk(k, dim=1).values.mean()
        terms["hard"] = hard.detach()
        terms["recon"] = terms["recon"] + hard_weight * hard
    return terms


# ----------------------------------------------------------------------------- discriminators


def _group_norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: batch statistics fight with R1 and small batches
    return nn.GroupNorm(math.gcd(channels, 32), channels)


class FrameDiscriminator(nn.Module):
    """PatchGAN over single frames: a grid of real/fake logits per frame.

    Takes videos [B, C, T, H, W] (scored frame by frame) or images [B, C, H, W], in [0, 1].
    """

    def __init__(self, channels: int = 3, base_channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, base_channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = base_channels
        for i in range(1, num_layers + 1):
            out = base_channels * min(2**i, 8)
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(width, out, 4, stride, 1, bias=False), _group_norm(out), nn.LeakyReLU(0.2)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(_frames(x) * 2 - 1)


class ClipDiscriminator(nn.Module):
    """3-D PatchGAN over whole clips [B, C, T, H, W] in [0, 1]: judges motion as well."""

    def __init__(self, channels: int = 3, base_channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv3d(channels, base_channels, (3, 4, 4), (1, 2, 2), (1, 1, 1)),
            nn.LeakyReLU(0.2),
        ]
        width = base_channels
        for i in range(1, num_layers + 1):
            out = base_channels * min(2**i, 8)
            stride = (1, 2, 2) if i < num_layers else (1, 1, 1)
            layers += [
                nn.Conv3d(width, out, (3, 4, 4), stride, (1, 1, 1), bias=False),
                _group_norm(out),
                nn.LeakyReLU(0.2),
            ]
            width = out
        layers.append(nn.Conv3d(width, 1, (3, 4, 4), 1, (1, 1, 1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5:
            raise ValueError(f"ClipDiscriminator expects videos [B, C, T, H, W]; got {tuple(x.shape)}")
        return self.net(x * 2 - 1)


def build_discriminator(
    kind: Literal["frame", "clip"] = "frame", channels: int = 3, base_channels: int = 64, num_layers: int = 3
) -> nn.Module:
    """A fresh discriminator; the trainer gives it its own optimiser.

    Frames must be at least 2**(num_layers + 1) * 2 pixels on a side (32 for 3 layers).
    """
    if kind == "frame":
        return FrameDiscriminator(channels, base_channels, num_layers)
    if kind == "clip":
        return ClipDiscriminator(channels, base_channels, num_layers)
    raise ValueError(f"discriminator kind must be 'frame' or 'clip', got {kind!r}")


def discriminator_parameters(discriminator: nn.Module) -> list[nn.Parameter]:
    """The parameters the discriminator optimiser owns (and the generator's must not)."""
    return [p for p in discriminator.parameters() if p.requires_grad]


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator hinge loss: push real logits above +1 and fake below -1."""
    return 0.5 * (F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean())


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """Generator hinge loss: raise the discriminator's logits on reconstructions."""
    return -fake_logits.float().mean()


def _grad_norm(loss: Tensor, params: Sequence[Tensor]) -> Tensor:
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
    squares = [g.float().pow(2).sum() for g in grads if g is not None]
    return torch.stack(squares).sum().sqrt() if squares else loss.new_zeros(())


def adaptive_weight(
    recon_loss: Tensor,
    gan_loss: Tensor,
    last_layer: Tensor | Sequence[Tensor],
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> Tensor:
    """VQGAN's balance: ||d recon/d W|| / ||d gan/d W|| at the decoder's last layer W, clamped.

    Keeps the adversarial gradient on the same scale as the reconstruction gradient
    whatever the loss magnitudes; detached, so it is a weight and not a loss term.
    `last_layer` may be several tensors (C-ViViT has a first-frame and a tubelet head).
    """
    params = [last_layer] if isinstance(last_layer, Tensor) else list(last_layer)
    recon_norm = _grad_norm(recon_loss, params)
    gan_norm = _grad_norm(gan_loss, params)
    return (recon_norm / (gan_norm + eps)).clamp(0.0, max_weight).detach()


def r1_penalty(discriminator: nn.Module, real: Tensor) -> Tensor:
    """Mean squared gradient norm of D's logits w.r.t. real inputs (Mescheder et al. 2018)."""
    real = real.detach().requires_grad_(True)
    logits = discriminator(real)
    (grad,) = torch.autograd.grad(logits.float().sum(), real, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(dim=1).mean()


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Run `module` without recording gradients for its parameters (inputs still get them).

    Used for the generator's pass through the discriminator: the discriminator's
    gradients would be wasted work and would pollute its own optimiser's .grad.
    """
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def adversarial_factor(step: int, start_step: int, weight: float) -> float:
    """Adversarial weight at `step`: 0 during the warm-up, `weight` afterwards."""
    return 0.0 if step < start_step else float(weight)


# ----------------------------------------------------------------------------- perceptual


class PerceptualLoss(nn.Module):
    """Distance between frozen-network features of reconstruction and target, frame by frame.

    Inputs in [0, 1] are normalised with the network's mean/std (ImageNet by default).
    Features of each layer are unit-normalised over channels (as in LPIPS, without its
    learned weights) before their squared (or absolute) difference is taken, summed over
    channels, averaged over positions, frames and the batch, and summed over layers.

    The network never trains: its parameters have requires_grad=False and it stays in
    eval mode even when the surrounding module is put in train mode, while gradients
    still flow to the inputs.

    `layers` names submodules of `feature_net` (e.g. "3", "8" for an nn.Sequential) whose
    outputs are compared; None compares the network's final output.
    """

    def __init__(
        self,
        feature_net: nn.Module,
        layers: Sequence[str] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        distance: Literal["l2", "l1"] = "l2",
    ) -> None:
        super().__init__()
        if distance not in ("l2", "l1"):
            raise ValueError(f"distance must be 'l2' or 'l1', got {distance!r}")
        self.feature_net = feature_net
        self.distance = distance
        self.layers = list(layers) if layers is not None else []
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self._captured: dict[str, Tensor] = {}
        self._hook_layers()
        for param in self.feature_net.parameters():
            param.requires_grad_(False)
        for module in self.feature_net.modules():
            if getattr(module, "inplace", False):
                module.inplace = False  # in-place activations would overwrite captured features
        self.feature_net.eval()

    def _hook_layers(self) -> None:
        modules = dict(self.feature_net.named_modules())
        unknown = [name for name in self.layers if name not in modules]
        if unknown:
            known = ", ".join(n for n in modules if n) or "(none)"
            raise ValueError(f"feature_net has no layer(s) {unknown}; known layers: {known}")
        for name in self.layers:
            modules[name].register_forward_hook(self._capture(name))

    def _capture(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            self._captured[name] = output

        return hook

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Switch this wrapper's mode but keep the feature network in eval mode."""
        super().train(mode)
        self.feature_net.eval()
        return self

    def normalize(self, x: Tensor) -> Tensor:
        """[0, 1] frames -> the network's expected input statistics."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def features(self, frames: Tensor) -> list[Tensor]:
        """Features of the chosen layers for frames [N, C, H, W] in [0, 1]."""
        self._captured = {}
        output = self.feature_net(self.normalize(frames))
        feats = [self._captured[name] for name in self.layers] if self.layers else [output]
        self._captured = {}
        return feats

    def forward(self, recon: Tensor, target: Tensor) -> Tensor:
        if recon.shape != target.shape:
            raise ValueError(f"recon {tuple(recon.shape)} and target {tuple(target.shape)} differ in shape")
        frames = torch.cat([_frames(recon), _frames(target.detach())], dim=0)
        total = recon.new_zeros((), dtype=torch.float32)
        for feat in self.features(frames):
            feat = F.normalize(feat.float(), dim=1, eps=1e-10) if feat.ndim >= 3 else feat.float()
            a, b = feat.chunk(2, dim=0)
            diff = (a - b).pow(2) if self.distance == "l2" else (a - b).abs()
            total = total + diff.sum(dim=1).mean()
        return total


def vgg16_perceptual(
    weights_path: str | Path,
    layers: Sequence[str] = ("3", "8", "15", "22"),
    distance: Literal["l2", "l1"] = "l2",
) -> PerceptualLoss:
    """VGG16 perceptual loss from a local torchvision weights file (never downloads).

    `weights_path` holds a state dict (torch `.pth` or `.safetensors`) of the whole
    `torchvision.models.vgg16` or of its `.features`. The default layers are
    relu1_2, relu2_2, relu3_3 and relu4_3; the network is truncated after the last one.
    """
    try:
        from torchvision.models import vgg16  # lazy: torchvision is optional
    except ImportError as exc:
        raise ImportError(
            "the VGG16 perceptual loss needs torchvision: pip install phenaki[vision]"
        ) from exc
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"VGG16 weights not found at {path} (a local file is required; nothing is downloaded)")
    state = _load_weights(path)
    model = vgg16(weights=None)
    if any(key.startswith("features.") for key in state):
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    model.features.load_state_dict(state)
    last = max(int(name) for name in layers)
    features = model.features[: last + 1]
    log.info("loaded VGG16 perceptual features from %s (layers %s)", path, ", ".join(layers))
    return PerceptualLoss(features, layers=layers, distance=distance)


def _load_weights(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


# ----------------------------------------------------------------------------- combined


class TokenizerLoss:
    """The tokenizer objective: generator terms and discriminator terms, per step.

    Holds references to the (optional) discriminator and perceptual network but is not
    an nn.Module, so neither ends up among anyone's parameters by accident.
    """

    def __init__(  # one keyword per loss term and its schedule, each a `TrainConfig` field passed through
        self,
        l1_weight: float = 1.0,
        l2_weight: float = 1.0,
        hard_weight: float = 0.0,
        hard_fraction: float = 0.01,
        quantizer_weight: float = 1.0,
        perceptual: PerceptualLoss | None = None,
        perceptual_weight: float = 0.0,
        discriminator: nn.Module | None = None,
        adversarial_weight: float = 0.0,
        adversarial_start: int = 0,
        gradient_penalty_weight: float = 10.0,
        max_adaptive_weight: float = 1e4,
        adversarial_frames: int = 0,
    ) -> None:
        if perceptual_weight > 0 and perceptual is None:
            raise ValueError("perceptual_weight > 0 needs a PerceptualLoss (e.g. vgg16_perceptual(path))")
        if adversarial_weight > 0 and discriminator is None:
            raise ValueError("adversarial_weight > 0 needs a discriminator (build_discriminator(...))")
        self.l1_weight, self.l2_weight = l1_weight, l2_weight
        self.hard_weight, self.hard_fraction = hard_weight, hard_fraction
        self.quantizer_weight = quantizer_weight
        self.perceptual, self.perceptual_weight = perceptual, perceptual_weight
        self.discriminator = discriminator
        self.adversarial_weight, self.adversarial_start = adversarial_weight, adversarial_start
        self.gradient_penalty_weight = gradient_penalty_weight
        self.max_adaptive_weight = max_adaptive_weight
        if adversarial_frames < 0:
            raise ValueError(f"adversarial_frames must be >= 0 (0 = every frame), got {adversarial_frames}")
        self.adversarial_frames = adversarial_frames

    @classmethod
    def from_config(
        cls,
        train: object,
        discriminator: nn.Module | None = None,
        perceptual: PerceptualLoss | None = None,
    ) -> TokenizerLoss:
        """Weights from a `TrainConfig` (l1/l2/hard/perceptual/adversarial/gradient_penalty)."""
        return cls(
            l1_weight=train.l1_weight,  # type: ignore[attr-defined]
            l2_weight=train.l2_weight,  # type: ignore[attr-defined]
            hard_weight=train.hard_weight,  # type: ignore[attr-defined]
            hard_fraction=train.hard_fraction,  # type: ignore[attr-defined]
            perceptual=perceptual,
            perceptual_weight=train.perceptual_weight,  # type: ignore[attr-defined]
            discriminator=discriminator,
            adversarial_weight=train.adversarial_weight,  # type: ignore[attr-defined]
            adversarial_start=train.adversarial_start,  # type: ignore[attr-defined]
            gradient_penalty_weight=train.gradient_penalty_weight,  # type: ignore[attr-defined]
            adversarial_frames=train.adversarial_frames,  # type: ignore[attr-defined]
        )

    def _window(self, *videos: Tensor) -> tuple[Tensor, ...]:
        """The same random run of `adversarial_frames` frames from each video (all of them when 0 or
        when a clip is that short): the discriminator's cost grows with every frame it scores."""
        k = self.adversarial_frames
        if k == 0 or videos[0].ndim != 5 or videos[0].shape[2] <= k:
            return videos
        start = int(torch.randint(0, videos[0].shape[2] - k + 1, ()))
        return tuple(v[:, :, start:start + k] for v in videos)

    def adversarial_active(self, step: int) -> bool:
        return self.discriminator is not None and adversarial_factor(
            step, self.adversarial_start, self.adversarial_weight
        ) > 0

    def generator_loss(
        self,
        recon: Tensor,
        target: Tensor,
        quantizer_loss: Tensor,
        step: int,
        last_layer: Tensor | Sequence[Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Terms for the tokenizer's update: "loss" to back-propagate, the rest detached for logs."""
        terms = reconstruction_loss(recon, target, self.l1_weight, self.l2_weight, self.hard_weight,
                                    self.hard_fraction)
        terms["quantizer"] = quantizer_loss.float()
        nll = terms["recon"]
        if self.perceptual is not None and self.perceptual_weight > 0:
            terms["perceptual"] = self.perceptual(recon, target)
            nll = nll + self.perceptual_weight * terms["perceptual"]
        total = nll + self.quantizer_weight * terms["quantizer"]
        if self.adversarial_active(step):
            if last_layer is None:
                raise ValueError("the adaptive adversarial weight needs the decoder's last layer weight(s)")
            assert self.discriminator is not None
            with frozen(self.discriminator):
                gan = hinge_g_loss(self.discriminator(*self._window(recon)))
            weight = adaptive_weight(nll, gan, last_layer, self.max_adaptive_weight)
            terms["gan"], terms["adaptive_weight"] = gan, weight
            total = total + self.adversarial_weight * weight * gan
        logs = {name: value.detach() for name, value in terms.items()}
        logs["loss"] = total
        return logs

    def discriminator_loss(self, recon: Tensor, target: Tensor, step: int) -> dict[str, Tensor]:
        """Terms for the discriminator's update (hinge + R1); zero before the warm-up ends."""
        if not self.adversarial_active(step):
            return {"loss": recon.new_zeros((), dtype=torch.float32)}
        assert self.discriminator is not None
        recon, target = self._window(recon, target)
        d_loss = hinge_d_loss(self.discriminator(target.detach()), self.discriminator(recon.detach()))
        terms = {"hinge": d_loss.detach()}
        total = d_loss
        if self.gradient_penalty_weight > 0:
            penalty = r1_penalty(self.discriminator, target)
            terms["r1"] = penalty.detach()
            total = total + self.gradient_penalty_weight * penalty
        terms["loss"] = total
        return terms

"""Tokenizer losses: reconstruction, adversarial pieces and wiring, perceptual wrapper."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from phenaki.config import TokenizerConfig, TrainConfig
from phenaki.models.cvivit import CViViT
from phenaki.training.losses import (
    PerceptualLoss,
    TokenizerLoss,
    adaptive_weight,
    adversarial_factor,
    build_discriminator,
    discriminator_parameters,
    hinge_d_loss,
    hinge_g_loss,
    r1_penalty,
    reconstruction_loss,
    vgg16_perceptual,
)


def tiny_tokenizer() -> CViViT:
    torch.manual_seed(0)
    return CViViT(
        TokenizerConfig(
            image_size=(16, 16), patch_size=4, num_frames=5, dim=32, spatial_depth=1,
            temporal_depth=1, heads=2, dim_head=16, codebook_size=64, codebook_dim=8,
        )
    )


def clips(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, 5, 16, 16, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- reconstruction


def test_reconstruction_loss_terms() -> None:
    target = clips()
    terms = reconstruction_loss(target + 0.1, target, l1_weight=2.0, l2_weight=3.0)
    assert float(terms["l1"]) == pytest.approx(0.1, rel=1e-5)
    assert float(terms["l2"]) == pytest.approx(0.01, rel=1e-4)
    assert float(terms["recon"]) == pytest.approx(2 * 0.1 + 3 * 0.01, rel=1e-4)
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_loss(target, target[:, :, :3])


def test_hard_term_weighs_the_few_worst_pixels_of_each_clip() -> None:
    target = torch.zeros(2, 3, 2, 10, 10)  # 200 pixels per clip
    recon = target.clone()
    recon[0, :, 0, 0, :2] = 0.5  # clip 0: two pixels off by 0.5 in each of 3 channels (a rounded corner)
    recon[1] += 0.1  # clip 1: every pixel a little off
    terms = reconstruction_loss(recon, target, hard_weight=2.0, hard_fraction=0.01)
    # worst 2 of 200 pixels: clip 0 -> 3 * 0.25 each, clip 1 -> 3 * 0.01 each
    assert float(terms["hard"]) == pytest.approx((0.75 + 0.03) / 2, rel=1e-5)
    plain = reconstruction_loss(recon, target)
    assert "hard" not in plain
    assert float(terms["recon"]) == pytest.approx(float(plain["recon"]) + 2.0 * 0.39, rel=1e-5)
    corner = reconstruction_loss(recon[:1], target[:1], hard_weight=1.0, hard_fraction=0.01)
    assert float(corner["l2"]) < 0.01 * float(corner["hard"])  # the mean barely notices the corner; this term does
    with pytest.raises(ValueError, match="hard_fraction"):
        reconstruction_loss(recon, target, hard_weight=1.0, hard_fraction=0.0)
    with pytest.raises(ValueError, match="hard_fraction must be in"):
        TrainConfig(hard_fraction=1.5)  # a config names the problem before any training starts


# ----------------------------------------------------------------------------- adversarial


@pytest.mark.parametrize("kind", ["frame", "clip"])
def test_discriminator_is_separate_from_the_generator(kind: str) -> None:
    tokenizer = tiny_tokenizer()
    disc = build_discriminator(kind, base_channels=8, num_layers=1)
    logits = disc(clips())
    assert logits.ndim == (4 if kind == "frame" else 5) and logits.shape[1] == 1
    d_ids = {id(p) for p in discriminator_parameters(disc)}
    g_ids = {id(p) for p in tokenizer.parameters()}
    assert d_ids and not d_ids & g_ids
    assert all(id(p) not in g_ids for p in disc.parameters())
    assert all(id(p) not in d_ids for p in tokenizer.parameters())


def test_build_discriminator_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="'frame' or 'clip'"):
        build_discriminator("video")  # type: ignore[arg-type]


def test_hinge_losses() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # relu(1 - real) = [0, 0.5] -> 0.25 ; relu(1 + fake) = [0, 1] -> 0.5 ; halved sum
    assert float(hinge_d_loss(real, fake)) == pytest.approx(0.5 * (0.25 + 0.5))
    assert float(hinge_g_loss(fake)) == pytest.approx(1.0)


def test_adaptive_weight_is_the_clamped_gradient_norm_ratio() -> None:
    layer = nn.Linear(4, 2)
    out = layer(torch.ones(1, 4))
    recon, gan = (out**2).sum(), 3.0 * out.sum()
    g_recon = torch.autograd.grad(recon, layer.weight, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan, layer.weight, retain_graph=True)[0]
    expected = g_recon.norm() / (g_gan.norm() + 1e-4)
    weight = adaptive_weight(recon, gan, layer.weight)
    assert float(weight) == pytest.approx(float(expected), rel=1e-5)
    assert not weight.requires_grad
    assert float(adaptive_weight(recon, gan * 1e-9, [layer.weight, layer.bias], max_weight=7.0)) == 7.0


def test_r1_penalty_of_a_linear_discriminator_is_its_weight_norm() -> None:
    disc = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
    real = torch.rand(5, 3, 2, 2)
    penalty = r1_penalty(disc, real)
    assert float(penalty.detach()) == pytest.approx(float(disc[1].weight.detach().pow(2).sum()), rel=1e-5)
    penalty.backward()
    assert disc[1].weight.grad is not None  # the penalty trains the discriminator


def test_adversarial_warm_up() -> None:
    assert adversarial_factor(0, 100, 0.5) == 0.0
    assert adversarial_factor(99, 100, 0.5) == 0.0
    assert adversarial_factor(100, 100, 0.5) == 0.5


def test_tokenizer_loss_steps_wire_generator_and_discriminator() -> None:
    tokenizer = tiny_tokenizer()
    disc = build_discriminator("frame", base_channels=8, num_layers=1)
    train = TrainConfig(adversarial_weight=0.1, adversarial_start=10, gradient_penalty_weight=10.0)
    objective = TokenizerLoss.from_config(train, discriminator=disc)
    target = clips()

    # warm-up: no adversarial term at all, and the discriminator does not train
    out = tokenizer(target)
    terms = objective.generator_loss(out.recon, target, out.quantizer_loss, step=0, last_layer=tokenizer.last_layer_weights)
    assert "gan" not in terms
    assert float(terms["loss"].detach()) == pytest.approx(float(terms["recon"] + terms["quantizer"]), rel=1e-6)
    assert not terms["recon"].requires_grad and terms["loss"].requires_grad
    assert float(objective.discriminator_loss(out.recon, target, step=0)["loss"]) == 0.0

    # after warm-up: the generator's loss includes the weighted GAN term ...
    out = tokenizer(target)
    terms = objective.generator_loss(out.recon, target, out.quantizer_loss, step=10, last_layer=tokenizer.last_layer_weights)
    assert {"gan", "adaptive_weight"} <= set(terms)
    terms["loss"].backward()
    assert tokenizer.tubelet_head.weight.grad is not None
    assert all(p.grad is None for p in disc.parameters()), "generator step must not touch D's grads"
    assert all(p.requires_grad for p in disc.parameters())

    # ... and the discriminator's loss trains only the discriminator
    tokenizer.zero_grad(set_to_none=True)
    d_terms = objective.discriminator_loss(out.recon, target, step=10)
    assert {"hinge", "r1", "loss"} <= set(d_terms)
    d_terms["loss"].backward()
    assert all(p.grad is not None for p in disc.parameters())
    assert all(p.grad is None for p in tokenizer.parameters())


def test_adversarial_frames_show_the_discriminator_one_run_of_frames() -> None:
    """`adversarial_frames: k`: every discriminator call (generator term, hinge, R1) scores k
    consecutive frames of each clip, the same ones for reconstruction and target; 0 scores all."""
    disc = build_discriminator("frame", base_channels=8, num_layers=1)
    seen: list[torch.Tensor] = []
    disc.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    tokenizer = tiny_tokenizer()
    target = clips()
    for frames, expected in ((2, 2), (0, 5), (9, 5)):  # a clip shorter than k is scored whole
        objective = TokenizerLoss(discriminator=disc, adversarial_weight=0.1, adversarial_frames=frames)
        out = tokenizer(target)
        seen.clear()
        objective.generator_loss(out.recon, target, out.quantizer_loss, step=0, last_layer=tokenizer.last_layer_weights)
        assert [x.shape[2] for x in seen] == [expected]
        seen.clear()
        objective.discriminator_loss(out.recon, target, step=0)
        assert [x.shape[2] for x in seen] == [expected] * 3  # real, fake, R1 on the real frames
        real, fake = seen[0], seen[1]
        starts = [t for t in range(5 - expected + 1) if torch.equal(target[:, :, t:t + expected], real)]
        assert starts and torch.equal(out.recon.detach()[:, :, starts[0]:starts[0] + expected], fake)
    with pytest.raises(ValueError, match="adversarial_frames"):
        TokenizerLoss(discriminator=disc, adversarial_weight=0.1, adversarial_frames=-1)


def test_tokenizer_loss_requires_its_modules() -> None:
    with pytest.raises(ValueError, match="needs a discriminator"):
        TokenizerLoss(adversarial_weight=0.1)
    with pytest.raises(ValueError, match="needs a PerceptualLoss"):
        TokenizerLoss(perceptual_weight=1.0)


# ----------------------------------------------------------------------------- perceptual


def small_feature_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()
    )


def test_perceptual_loss_is_frozen_and_stays_in_eval() -> None:
    loss = PerceptualLoss(small_feature_net(), layers=["1", "3"])
    assert all(not p.requires_grad for p in loss.parameters())
    loss.train()
    assert loss.training and not loss.feature_net.training
    assert all(not m.training for m in loss.feature_net.modules())


def test_perceptual_loss_gradients_reach_inputs_only() -> None:
    loss = PerceptualLoss(small_feature_net(), layers=["1", "3"], distance="l1")
    target = clips()
    recon = (target + 0.1 * torch.randn_like(target)).requires_grad_(True)
    value = loss(recon, target)
    assert value.ndim == 0 and float(value.detach()) > 0
    value.backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())
    assert float(loss(target, target)) == pytest.approx(0.0, abs=1e-6)


def test_perceptual_loss_normalises_inputs() -> None:
    net = small_feature_net()
    seen: list[torch.Tensor] = []
    net[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    loss = PerceptualLoss(net, mean=mean, std=std)  # default: compare final outputs
    frames = torch.rand(1, 3, 2, 8, 8)
    loss(frames, frames)
    expected = (frames[0].transpose(0, 1) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0][:2], expected)  # recon frames come first, as [(B T), C, H, W]


def test_perceptual_loss_rejects_unknown_layers() -> None:
    with pytest.raises(ValueError, match=r"no layer\(s\) \['9'\]"):
        PerceptualLoss(small_feature_net(), layers=["9"])


def test_vgg16_without_torchvision_says_what_to_install(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(ImportError, match=r"pip install phenaki\[vision\]"):
        vgg16_perceptual(tmp_path / "vgg16.pth")


class _FakeVGG(nn.Module):
    """Stands in for torchvision's vgg16 (same attribute layout, tiny)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1),
        )
        self.classifier = nn.Linear(4, 2)


def test_vgg16_builder_loads_local_weights(monkeypatch, tmp_path) -> None:
    import types

    package, models = types.ModuleType("torchvision"), types.ModuleType("torchvision.models")
    models.vgg16 = lambda weights=None: _FakeVGG()  # type: ignore[attr-defined]
    package.models = models  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        vgg16_perceptual(tmp_path / "missing.pth")

    torch.manual_seed(3)
    reference = _FakeVGG()
    torch.save(reference.state_dict(), tmp_path / "vgg16.pth")
    loss = vgg16_perceptual(tmp_path / "vgg16.pth", layers=("1", "3"))
    assert len(loss.feature_net) == 4  # truncated after the deepest requested layer
    torch.testing.assert_close(loss.feature_net[2].weight, reference.features[2].weight)
    assert not any(getattr(m, "inplace", False) for m in loss.feature_net.modules())
    assert all(not p.requires_grad for p in loss.parameters())
    x = torch.rand(1, 3, 2, 8, 8)
    assert float(loss(x, x)) == pytest.approx(0.0, abs=1e-6)

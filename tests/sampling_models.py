"""Tiny models, texts and spies shared by the decode-loop and search tests."""

from __future__ import annotations

from typing import Self

import torch

from phenaki.config import TransformerConfig
from phenaki.models.maskgit import MaskGit
from phenaki.sampling.settings import SamplingSettings

TEXT_DIM = 32



def tiny_model(seed: int = 0, **overrides) -> MaskGit:
    torch.manual_seed(seed)
    base = {
        "dim": 64, "depth": 2, "heads": 4, "dim_head": 16, "max_token_frames": 3,
        "codebook_size": 16, "token_grid": (4, 4), "text_dim": TEXT_DIM,
    }
    base.update(overrides)
    return MaskGit(TransformerConfig(**base)).eval()


def text(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, 4, dtype=torch.bool)
    mask[0, 2:] = False
    return torch.randn(batch, 4, TEXT_DIM, generator=g), mask


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class ForwardSpy:
    """Records the input ids of every MaskGit forward (via a pre-hook)."""

    def __init__(self, model: MaskGit) -> None:
        self.inputs: list[torch.Tensor] = []
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        self.inputs.append(args[0].clone())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def settings(**values) -> SamplingSettings:
    return SamplingSettings(**values)

"""The tokenizers under test (ours and the peer's) at one config, with encode/decode callables."""

from __future__ import annotations

from typing import Any, Callable

import torch

from .common import import_peer, load


def build(impl: str, config: str, peer: str | None) -> tuple[Any, Callable, Callable, torch.nn.Module]:
    """(tokenizer config, encode(pixels) -> ids, decode(ids) -> pixels, the module)."""
    tok = load(config).tokenizer
    torch.manual_seed(0)
    if impl == "ours":
        from phenaki.cvivit import CViViT

        model = CViViT(tok).eval()
        return tok, model.encode, model.decode, model
    import_peer(peer)  # type: ignore[arg-type]
    from phenaki_pytorch.cvivit import CViViT as PeerCViViT

    peer_model = PeerCViViT(
        dim=tok.dim, codebook_size=tok.codebook_size, image_size=tok.image_size, patch_size=tok.patch_size,
        temporal_patch_size=tok.temporal_patch_size, spatial_depth=tok.spatial_depth,
        temporal_depth=tok.temporal_depth, dim_head=tok.dim_head, heads=tok.heads, use_vgg_and_gan=False,
        lookup_free_quantization=False,
    ).eval()

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return peer_model(pixels, return_only_codebook_ids=True)

    def decode(ids: torch.Tensor) -> torch.Tensor:
        return peer_model.decode_from_codebook_indices(ids)

    return tok, encode, decode, peer_model

import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def kernel_cache(tmp_path_factory):
    """The suite runs the built-in attention kernels (PHENAKI_KERNELS=default): a choice measured per
    process could differ between the processes a test compares. tests/test_kernels.py measures, into
    a file of this run (subprocesses inherit both), never the user's cache."""
    path = tmp_path_factory.mktemp("kernels") / "kernels.json"
    saved = {key: os.environ.get(key) for key in ("PHENAKI_KERNEL_CACHE", "PHENAKI_KERNELS")}
    os.environ.update(PHENAKI_KERNEL_CACHE=str(path), PHENAKI_KERNELS="default")
    yield path
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and OpenMP threads on a busy 2-core box stall badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_TOKENIZER = {"dim": 32, "spatial_depth": 1, "temporal_depth": 1, "heads": 2, "dim_head": 16,
                  "quantizer": "fsq", "fsq_levels": [5, 5, 5], "num_frames": 5}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A saved tiny random tokenizer (FSQ, 5-frame clips)."""
    from phenaki.config import TokenizerConfig
    from phenaki.models.cvivit import CViViT

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tok") / "final"
    CViViT(TokenizerConfig(**TINY_TOKENIZER)).save_pretrained(path)
    return path


def make_tiny_pipeline(path, *, dim: int = 32, seed: int = 0):
    """A complete pipeline directory with tiny random models (64x64, 11 + 6 frames, 2 steps)."""
    from phenaki.config import (
        SamplingSettings,
        TextConfig,
        TokenizerConfig,
        TransformerConfig,
    )
    from phenaki.models.cvivit import CViViT
    from phenaki.models.maskgit import MaskGit
    from phenaki.models.text import TextEncoder
    from phenaki.pipeline import Phenaki

    torch.manual_seed(seed)
    tok_cfg = TokenizerConfig(dim=dim, spatial_depth=1, temporal_depth=1, heads=2, dim_head=16,
                              quantizer="fsq", fsq_levels=[5, 5, 5])
    text = TextEncoder.scratch(["a red ball moves right", "the blue box rises", "a green disc falls"],
                               TextConfig(kind="scratch", dim=dim // 2, depth=1, heads=2, ff_dim=dim,
                                          max_length=12))
    transformer = MaskGit(TransformerConfig(dim=dim, depth=1, heads=2, dim_head=16, max_token_frames=6,
                                            codebook_size=125, token_grid=(8, 8), text_dim=dim // 2))
    pipe = Phenaki(CViViT(tok_cfg), transformer, text, SamplingSettings(steps=2), device="cpu", dtype="float32")
    return pipe.save_pretrained(path)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A complete pipeline directory with tiny random models (64x64, 11 + 6 frames, 2 steps)."""
    return make_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "model")

"""Phenaki: token-based text-to-video (C-ViViT tokenizer + T5-conditioned MaskGIT).

Public names are imported lazily so that `import phenaki` stays cheap and a user who
only needs video I/O does not pay for transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Video": "phenaki.video",
    "Scene": "phenaki.video",
    "read_video": "phenaki.video",
    "write_video": "phenaki.video",
    "CViViT": "phenaki.models.cvivit",
    "MaskGit": "phenaki.models.maskgit",
    "TextEncoder": "phenaki.models.text",
    "Phenaki": "phenaki.pipeline",
    "SamplingSettings": "phenaki.sampling.settings",
    "Config": "phenaki.config",
    "load_config": "phenaki.config",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'phenaki' has no attribute {name!r}")

"""Atomic writes: outputs appear whole under their final name or not at all.

Every writer in the library (videos, sidecars, checkpoints, datasets) goes through
these helpers: write under a temporary name in the same directory, then rename.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


def temp_name(final: Path, suffix: str = "") -> Path:
    """A hidden sibling of `final`, unique per process and call (same filesystem: renames are atomic)."""
    return final.parent / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}"


@contextmanager
def atomic_file(final: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path; on success it replaces `final`, on any error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final, suffix)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(final: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    with atomic_file(final) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(final)


def atomic_write_dir(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp_dir)` then move the result to `path`, replacing any old one.

    The old directory is renamed aside before the new one is renamed in, and only
    deleted afterwards; if the process dies between the two renames the previous
    version survives as `.<name>.old-*` and `recover_dir` puts it back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    tmp.mkdir()
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{secrets.token_hex(4)}"
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def recover_dir(path: str | Path) -> Path:
    """If `path` vanished mid-swap, restore the newest previous copy left beside it."""
    path = Path(path)
    if not path.exists() and path.parent.exists():
        olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if olds:
            log.warning("restoring %s from interrupted save %s", path, olds[-1])
            os.replace(olds[-1], path)
    return path

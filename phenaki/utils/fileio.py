"""Atomic writes: outputs appear whole under their final name or not at all.

Every writer in the library (videos, sidecars, checkpoints, datasets) goes through
these helpers: write under a temporary name in the same directory, then rename.

A process killed mid-write (SIGKILL, power cut of the job) cannot clean up after
itself: it leaves a hidden `.NAME.tmp-PID-XXXXXXXX` sibling (a file or folder being
written) or, killed between the two renames of `atomic_write_dir`, the previous
version as `.NAME.old-XXXXXXXX` with NAME itself missing. `clean_temporaries` is what
the next run calls on the folders it writes to: it puts such previous versions back
and removes the temporaries of processes that are gone.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

#: `.NAME.tmp-PID-HEX[suffix]`: what `temp_name` makes (the writer's pid, 4 random bytes)
TEMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}")
#: `.NAME.old-HEX`: a previous version set aside by `atomic_write_dir`
OLD_RE = re.compile(r"^\.(?P<name>.+)\.old-[0-9a-f]{8}$")


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
    version survives as `.<name>.old-*` and `recover_dir` puts it back. A process
    killed while writing leaves a `.<name>.tmp-*` folder for `clean_temporaries`.
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
        remove_tree(old)
    return path


def remove_tree(path: str | Path) -> None:
    """Delete a folder so that no half-deleted copy is ever left under a name that means something.

    The folder is first renamed to a temporary name (atomic), then deleted: a process killed
    during the deletion leaves a `.tmp-` folder that `clean_temporaries` removes, never a
    checkpoint with half its files, nor a half-deleted `.old-` copy that could be restored.
    """
    path = Path(path)
    doomed = temp_name(path)
    try:
        os.replace(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def recover_dir(path: str | Path) -> Path:
    """If `path` vanished mid-swap, restore the newest previous copy left beside it."""
    path = Path(path)
    if not path.exists() and path.parent.exists():
        olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if olds:
            log.warning("restoring %s from interrupted save %s", path, olds[-1])
            os.replace(olds[-1], path)
    return path


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


def clean_temporaries(folder: str | Path) -> list[Path]:
    """Undo what interrupted atomic writes left directly in `folder`; return what was removed.

    - `.NAME.old-*` with NAME missing: the process died between the two renames of
      `atomic_write_dir`, so the previous version is put back (`recover_dir`);
    - `.NAME.old-*` with NAME present: the swap finished, only the deletion was lost: removed;
    - `.NAME.tmp-PID-*` of a process that is no longer running: a write that never finished,
      or a deletion (`remove_tree`) that never finished: removed. Those of a live process
      (this one included) are left alone.

    Call it where only this process writes (the main process of a run, before it writes).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    for entry in sorted(folder.iterdir()):
        match = OLD_RE.match(entry.name)
        if match and not (folder / match["name"]).exists():
            recover_dir(folder / match["name"])
    removed = []
    for entry in sorted(folder.iterdir()):
        if match := TEMP_RE.match(entry.name):
            if _process_alive(int(match["pid"])):
                continue
        elif not OLD_RE.match(entry.name):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            continue
        removed.append(entry)
    if removed:
        log.warning("removed %d temporary file(s) left by an interrupted write in %s: %s", len(removed), folder,
                    ", ".join(p.name for p in removed[:5]) + (" ..." if len(removed) > 5 else ""))
    return removed

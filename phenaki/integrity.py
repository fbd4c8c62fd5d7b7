"""Checksums of model and checkpoint folders: a folder records the sha256 and size of every
file it holds when it is written, and loading checks them, so a damaged file is named
before anything is built from it (the same promise the Hub and safetensors make).

The record is `checksums.json` in the folder itself; it covers every file below the folder
(sub-folders' own records included; Markdown documentation such as a model card aside) and carries a checksum of its own list, so damage to
the record is told apart from damage to a file. A folder written before records existed has
none: it still loads, with a note in the log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from .utils.fileio import atomic_write_text

log = logging.getLogger(__name__)

RECORD_NAME = "checksums.json"
FORMAT = 1
_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, or does not match the model."""


class IntegrityError(CheckpointError):
    """A file of a model or checkpoint folder is missing or is not the file that was saved."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _listed_files(folder: Path) -> list[Path]:
    """Every file below `folder` a record covers: not the record itself, not hidden temporaries, and
    not Markdown documentation, which no loader reads and which is edited after saving (a model card,
    on the Hub too)."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.relative_to(folder) != Path(RECORD_NAME) and p.suffix.lower() != ".md"
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _list_digest(files: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode("utf-8")).hexdigest()


def record_folder(folder: str | Path) -> Path:
    """Write `folder/checksums.json` for the files now in the folder (call it last, inside the
    temporary folder an atomic save is building, so the record is renamed in with the files)."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"sha256": file_sha256(p), "size": p.stat().st_size}
             for p in _listed_files(folder)}
    record = {"format": FORMAT, "files": files, "list_sha256": _list_digest(files)}
    return atomic_write_text(folder / RECORD_NAME, json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_record(folder: Path) -> dict[str, Any] | None:
    """The folder's record, checked for damage; None when the folder has none (an older folder)."""
    path = folder / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        files = record["files"]
        listed = record["list_sha256"]
        if not isinstance(files, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("size"), int)
                for v in files.values()):
            raise TypeError("entries must be {sha256: str, size: int}")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{path}: damaged record of checksums ({type(exc).__name__}: {exc})") from None
    if _list_digest(files) != listed:
        raise IntegrityError(f"{path}: damaged record of checksums (its own checksum does not match)")
    return record


def verify_folder(folder: str | Path) -> int | None:
    """Check every file the folder's record lists; return how many were checked, or None when the
    folder has no record (it loads unchecked, with a note). Raises `IntegrityError` naming the
    first file that is missing, of another size, or of other contents."""
    folder = Path(folder)
    started = time.perf_counter()
    record = read_record(folder)
    if record is None:
        log.info("%s has no %s (written before folders recorded them): its files are not verified",
                 folder, RECORD_NAME)
        return None
    for name, entry in sorted(record["files"].items()):
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"{path}: missing (the folder's {RECORD_NAME} lists it)")
        size = path.stat().st_size
        if size != entry["size"]:
            what = "empty" if size == 0 else ("truncated" if size < entry["size"] else "longer than saved")
            raise IntegrityError(f"{path}: {what}: {size} bytes, saved with {entry['size']}")
        if file_sha256(path) != entry["sha256"]:
            raise IntegrityError(f"{path}: contents differ from the saved file (sha256 mismatch, same size)")
    log.debug("verified %d files of %s in %.3f s", len(record["files"]), folder, time.perf_counter() - started)
    return len(record["files"])

"""Checkpoint directories: `config.json` + `*.safetensors`, written atomically; and the
layout of a pipeline (model) folder, which the pipeline and the trainers both read and write:

    dir/tokenizer/      CViViT (config.json + model.safetensors)
    dir/transformer/    MaskGit (config.json + model.safetensors)
    dir/text_encoder/   the text encoder (or pipeline.json names a pretrained one)
    dir/matcher/        optional: the text-video matcher that helps choose among candidates
    dir/pipeline.json   sampling defaults, fps, and how the model was trained

A checkpoint is a directory. Saving writes a complete sibling directory first and then
swaps it in with renames, so a save killed halfway leaves the previous checkpoint
intact. Loading never unpickles anything: weights come from safetensors, settings
from JSON, and a checkpoint whose config or tensor shapes disagree with the model
fails with an error that names the mismatch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load_file, save_file

from .config import ConfigError, from_dict, to_dict
from .integrity import CheckpointError, IntegrityError, record_folder, verify_folder
from .utils.fileio import atomic_write_dir, atomic_write_text, recover_dir

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PIPELINE_FILE = "pipeline.json"
DEMO_NAME = "phenaki-shapes"

M = TypeVar("M", bound="PretrainedMixin")


__all__ = ["CheckpointError", "IntegrityError", "PretrainedMixin", "demo_checkpoint", "read_json",
           "read_pipeline_settings", "verify_folder", "write_pipeline_settings"]


def write_json(path: Path, data: Any) -> None:
    """JSON with sorted keys, so configs diff cleanly (atomically)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_state_dict(state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype | None = None) -> None:
    """Save tensors with safetensors (contiguous, no shared storage, optional cast)."""
    tensors = {}
    for key, value in state.items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous().clone()
    save_file(tensors, str(path))


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file (no pickle involved)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"missing weights file {path}")
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path}: not a readable safetensors file ({_one_line(exc)})") from None


def read_json(path: Path, kind: type | None = None) -> Any:
    """A JSON file of a folder (of `kind`, e.g. dict, when given), or a `CheckpointError` naming the
    file and what is wrong with it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({_one_line(exc)})") from None
    if kind is not None and not isinstance(data, kind):
        names = {dict: "a JSON object", list: "a JSON list"}
        raise CheckpointError(f"{path}: expected {names.get(kind, kind.__name__)}, got {type(data).__name__}")
    return data


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def check_state_dict(
    module: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path
) -> None:
    """Raise naming every missing/unexpected key and every shape mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(own[k].shape) != tuple(state[k].shape)
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    if unexpected:
        problems.append(
            "unexpected keys: " + ", ".join(unexpected[:10]) + (" ..." if len(unexpected) > 10 else "")
        )
    if shapes:
        problems.append("shape mismatch: " + "; ".join(shapes[:10]))
    if problems:
        raise CheckpointError(f"checkpoint {source} does not match the model: " + " | ".join(problems))


class PretrainedMixin:
    """`save_pretrained` / `from_pretrained` for a module built from one config dataclass."""

    config_class: ClassVar[type]
    config: Any

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write `config.json` + `model.safetensors` atomically; `dtype` casts float weights."""
        module: torch.nn.Module = self  # type: ignore[assignment]

        def write(tmp: Path) -> None:
            write_json(tmp / CONFIG_NAME, {"class": type(self).__name__, "config": to_dict(self.config)})
            save_state_dict(module.state_dict(), tmp / WEIGHTS_NAME, dtype)
            record_folder(tmp)

        return atomic_write_dir(path, write)

    @classmethod
    def load_config(cls, path: str | Path) -> Any:
        """Read and validate the config of a checkpoint directory."""
        path = recover_dir(path)
        cfg_file = Path(path) / CONFIG_NAME
        if not cfg_file.exists():
            raise CheckpointError(f"{cfg_file}: missing ({path} is not a checkpoint directory without it)")
        data = read_json(cfg_file, dict)
        saved = data.get("class")
        if saved is not None and saved != cls.__name__:
            raise CheckpointError(f"{path} holds a {saved}, not a {cls.__name__}")
        try:
            return from_dict(cls.config_class, data.get("config", data))
        except ConfigError as exc:
            raise CheckpointError(f"{cfg_file}: {exc}") from exc

    @classmethod
    def from_pretrained(
        cls: type[M], path: str | Path, map_location: str | torch.device = "cpu", **overrides: Any
    ) -> M:  # `path`: a folder or a Hub repo id (`revision=` picks a commit, branch or tag)
        """Build the model from `config.json`, then load and check its weights; the folder's
        checksums are verified first unless `verify=False` (a caller that verified a folder above)."""
        verify = overrides.pop("verify", True)
        path = resolve_folder(path, overrides.pop("revision", None))
        if verify:
            verify_folder(recover_dir(path))
        config = cls.load_config(path)
        for key, value in overrides.items():
            if not hasattr(config, key):
                raise CheckpointError(f"unknown config override '{key}' for {cls.__name__}")
            setattr(config, key, value)
        model = cls(config)  # type: ignore[call-arg]
        state = load_state_dict(Path(path) / WEIGHTS_NAME)
        check_state_dict(model, state, f"{Path(path) / WEIGHTS_NAME} (against {Path(path) / CONFIG_NAME})")  # type: ignore[arg-type]
        own = model.state_dict()  # type: ignore[attr-defined]
        state = {k: v.to(own[k].dtype) for k, v in state.items()}
        model.load_state_dict(state)  # type: ignore[attr-defined]
        return model.to(map_location)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- pipeline folders


def demo_checkpoint() -> Path:
    """The demo model, shipped inside the package (so every install, editable or not, has it)."""
    return Path(__file__).resolve().parent / "pretrained" / DEMO_NAME


def resolve_folder(name_or_path: str | Path | None, revision: str | None = None) -> Path:
    """The local folder of a model: itself when it is a folder, the demo model for None, else a Hub repo id
    ("org/name") fetched into the Hugging Face cache (or found there when `HF_HUB_OFFLINE=1`)."""
    if name_or_path is None:
        return demo_checkpoint()
    path = Path(name_or_path)
    if path.is_dir():
        if revision is not None:
            raise CheckpointError(f"{path}: a revision ({revision}) applies to Hub repo ids, not to local folders")
        return path
    name = str(name_or_path)
    if not is_repo_id(name):
        raise CheckpointError(f"{name}: no such folder (and not a Hub repo id of the form org/name)")
    return _hub_snapshot(name, revision)


def is_repo_id(name: str) -> bool:
    """Whether a name that is not a folder has the shape of a Hub repo id (org/name)."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).suffix


def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    """A Hub repo's files, through huggingface_hub's cache; every failure becomes one line naming the repo."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise CheckpointError(f"{repo_id}: no such folder, and loading Hub repo ids needs huggingface_hub "
                              "(pip install huggingface_hub)") from None
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    try:
        return Path(snapshot_download(repo_id, revision=revision, library_name="phenaki"))
    except RepositoryNotFoundError:
        raise CheckpointError(f"{where}: no such model on the Hub (or it is private: log in with hf auth login)") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{where}: the Hub repo has no such revision") from None
    except LocalEntryNotFoundError:
        raise CheckpointError(f"{where}: not in the local Hugging Face cache, and the Hub cannot be reached "
                              "(offline, or HF_HUB_OFFLINE=1): download it once while online") from None
    except HFValidationError as exc:
        raise CheckpointError(f"{where}: not a valid Hub repo id ({_one_line(exc)})") from None
    except OSError as exc:  # network failures surface as OSError subclasses
        raise CheckpointError(f"{where}: could not be fetched from the Hub ({_one_line(exc)})") from None


def read_pipeline_settings(root: Path, what: str = "a Phenaki checkpoint directory") -> dict[str, Any]:
    """The `pipeline.json` of a pipeline folder; a folder without one is not `what`."""
    path = Path(root) / PIPELINE_FILE
    if not path.is_file():
        raise CheckpointError(f"{root} is not {what}: no {PIPELINE_FILE}")
    return read_json(path, dict)


def write_pipeline_settings(root: Path, settings: dict[str, Any]) -> None:
    """Write a pipeline folder's `pipeline.json` (inside the folder being built)."""
    write_json(Path(root) / PIPELINE_FILE, settings)


def pipeline_text_encoder(root: Path, settings: dict[str, Any], **kwargs: Any) -> Any:
    """The text encoder a pipeline names: its own folder (copied in), or a hub name/path it references."""
    from .models.text import SETTINGS_NAME, TextEncoder

    text_ref = settings.get("text_encoder", "text_encoder")
    if not isinstance(text_ref, str):
        raise CheckpointError(f"{Path(root) / PIPELINE_FILE}: text_encoder must name a folder, got {text_ref!r}")
    text_dir = Path(root) / text_ref
    if text_dir.is_dir() and not (text_dir / SETTINGS_NAME).is_file():
        # every encoder a pipeline copies in was saved with its settings: without them it would load as another kind
        raise CheckpointError(f"{text_dir / SETTINGS_NAME}: missing")
    return TextEncoder.from_pretrained(text_dir if text_dir.is_dir() else text_ref, **kwargs)

"""Damaged model folders, broken on purpose: every file, every kind of damage, one line naming it.

With the folder's checksums (every folder the library writes has them) any change to any file is
caught before a model is built. Without them (a folder saved before checksums were recorded),
damage that leaves a file unreadable is still named in one line; only a well-formed file with
other numbers in it can then go unnoticed, which is what the checksums are for.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_tiny_pipeline

from phenaki.checkpoint import CheckpointError, IntegrityError
from phenaki.cli import eval_main, sample_main
from phenaki.integrity import RECORD_NAME, record_folder, verify_folder
from phenaki.pipeline import Phenaki, PipelineError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    """A pipeline of another shape: its files are well-formed, but not this model's."""
    return make_tiny_pipeline(tmp_path_factory.mktemp("other") / "model", dim=48, seed=1)


def files_of(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def damage(path: Path, kind: str, other: Path | None = None) -> None:
    """Break one file the way disks, copies and people do."""
    data = path.read_bytes()
    if kind == "missing":
        path.unlink()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind.startswith("truncated"):
        # "last": the final byte that carries data (a trailing newline alone changes nothing)
        cut = {"truncated-1": 1, "truncated-half": len(data) // 2, "truncated-last": len(data.rstrip()) - 1}[kind]
        path.write_bytes(data[:cut])
    elif kind == "flipped":
        middle = bytearray(data)
        for i in range(len(data) // 2, min(len(data), len(data) // 2 + 8)):
            middle[i] ^= 0x5A
        path.write_bytes(bytes(middle))
    elif kind == "bad-json":
        path.write_text('{"steps": 12,', encoding="utf-8")
    elif kind == "wrong-types":
        path.write_text(json.dumps(_wrong_types(json.loads(data))), encoding="utf-8")
    elif kind == "other-model":
        shutil.copyfile(other, path)  # type: ignore[arg-type]
    else:
        raise ValueError(kind)


def _wrong_types(value):
    """The same JSON with every number turned into a word and every list into a number."""
    if isinstance(value, dict):
        return {k: _wrong_types(v) for k, v in value.items()}
    if isinstance(value, list):
        return 7
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return "many"
    return value


def run_cli(folder: Path, out: Path):
    return CliRunner().invoke(sample_main, ["--checkpoint", str(folder), "--prompt", "a red ball moves right",
                                            "--out", str(out), "--first-frames", "3"])


def assert_named_in_one_line(result, out: Path, *names: str) -> None:
    """Exit 1 through the CLI's own error (no traceback), one line, naming the file, nothing written."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an escaped exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert any(name in errors[0] for name in names), (names, errors[0])
    assert not out.exists() and not list(out.parent.glob(".*tmp*"))


KINDS_WITH_RECORD = ["missing", "empty", "truncated-1", "truncated-half", "truncated-last", "flipped", "other-model"]


@pytest.mark.parametrize("kind", KINDS_WITH_RECORD)
def test_with_checksums_every_damaged_file_is_named(tiny_pipeline_dir, other_model, tmp_path, kind):
    names = files_of(tiny_pipeline_dir)
    assert RECORD_NAME in names and "transformer/model.safetensors" in names and len(names) >= 14
    for name in names:
        folder = shutil.copytree(tiny_pipeline_dir, tmp_path / name.replace("/", "_") / "model")
        other = other_model / name
        if kind == "other-model" and (not other.is_file() or other.read_bytes() == (folder / name).read_bytes()):
            continue  # nothing of another shape to put there (identical vocabularies, say)
        damage(folder / name, kind, other)
        result = run_cli(folder, tmp_path / f"{kind}.mp4")
        if name == RECORD_NAME and kind == "missing":
            # a folder without a record is an older folder: it loads, its parts check their own records
            assert result.exit_code == 0, result.output
            (tmp_path / f"{kind}.mp4").unlink()
            continue
        assert_named_in_one_line(result, tmp_path / f"{kind}.mp4", str(folder / name), name)


def test_json_made_invalid_or_mistyped_is_named_with_checksums(tiny_pipeline_dir, tmp_path):
    for name in [n for n in files_of(tiny_pipeline_dir) if n.endswith(".json")]:
        for kind in ("bad-json", "wrong-types"):
            folder = shutil.copytree(tiny_pipeline_dir, tmp_path / kind / name.replace("/", "_") / "model")
            damage(folder / name, kind)
            result = run_cli(folder, tmp_path / "x.mp4")
            assert_named_in_one_line(result, tmp_path / "x.mp4", str(folder / name), name)


def strip_records(folder: Path) -> None:
    for record in folder.rglob(RECORD_NAME):
        record.unlink()


# our own files name themselves; the text encoder's files are read by transformers, so its errors name the folder
OWN_FILES = ["pipeline.json", "tokenizer/config.json", "tokenizer/model.safetensors", "transformer/config.json",
             "transformer/model.safetensors", "text_encoder/text_config.json"]


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated-1", "truncated-half", "truncated-last",
                                  "bad-json", "wrong-types", "other-model"])
def test_without_checksums_unreadable_files_are_still_named(tiny_pipeline_dir, other_model, tmp_path, kind):
    names = [n for n in files_of(tiny_pipeline_dir) if not n.endswith(RECORD_NAME)]
    for name in names:
        if kind in ("bad-json", "wrong-types") and not name.endswith(".json"):
            continue
        folder = shutil.copytree(tiny_pipeline_dir, tmp_path / name.replace("/", "_") / "model")
        strip_records(folder)
        other = other_model / name
        if kind == "other-model" and other.read_bytes() == (folder / name).read_bytes():
            continue
        damage(folder / name, kind, other)
        result = run_cli(folder, tmp_path / f"{kind}.mp4")
        part = name.split("/")[0]
        wanted = (str(folder / name), name) if name in OWN_FILES else (str(folder / part),)
        assert_named_in_one_line(result, tmp_path / f"{kind}.mp4", *wanted)


def test_the_api_raises_typed_errors(tiny_pipeline_dir, tmp_path):
    folder = shutil.copytree(tiny_pipeline_dir, tmp_path / "model")
    damage(folder / "transformer" / "model.safetensors", "flipped")
    with pytest.raises(IntegrityError, match="transformer/model.safetensors: contents differ"):
        Phenaki.from_pretrained(folder)
    assert issubclass(IntegrityError, CheckpointError) and issubclass(CheckpointError, ValueError)
    damage(folder / "pipeline.json", "bad-json")
    strip_records(folder)
    with pytest.raises(PipelineError, match="pipeline.json: not valid JSON"):
        Phenaki.from_pretrained(folder)


def test_a_folder_without_checksums_loads_with_a_note(tiny_pipeline_dir, tmp_path, caplog):
    folder = shutil.copytree(tiny_pipeline_dir, tmp_path / "model")
    strip_records(folder)
    with caplog.at_level("INFO", logger="phenaki.integrity"):
        Phenaki.from_pretrained(folder, device="cpu", dtype="float32")
    assert f"{folder} has no {RECORD_NAME}" in caplog.text


def test_verify_command_checks_and_rerecords(tiny_pipeline_dir, tmp_path):
    folder = shutil.copytree(tiny_pipeline_dir, tmp_path / "model")
    runner = CliRunner()
    result = runner.invoke(eval_main, ["verify", str(folder)])
    assert result.exit_code == 0 and "files" in result.output and "match their checksums" in result.output
    (folder / "README.md").write_text("# my model\n")  # a model card is documentation: edited freely
    (folder / "notes.txt").write_text("mine\n")  # a file added after saving is not vouched for ...
    assert runner.invoke(eval_main, ["verify", str(folder)]).exit_code == 0
    damage(folder / "tokenizer" / "config.json", "flipped")
    result = runner.invoke(eval_main, ["verify", str(folder)])
    assert result.exit_code == 1 and "tokenizer/config.json: contents differ" in result.output
    # ... until the folder is recorded anew, after a deliberate edit
    result = runner.invoke(eval_main, ["verify", str(folder), "--record"])
    assert result.exit_code == 0 and verify_folder(folder) == len(files_of(folder)) - 2  # not itself, not README.md
    assert "notes.txt" in (folder / RECORD_NAME).read_text()


def test_a_training_checkpoint_names_each_damaged_file(tmp_path):
    """The checkpoint layout (weights, EMA, optimiser, RNG, state), each file damaged in turn."""
    folder = tmp_path / "step-0000004"
    folder.mkdir()
    for name, size in [("model.safetensors", 4000), ("ema.safetensors", 4000), ("optim.pt", 9000),
                       ("rng.pt", 700), ("trainer_state.json", 90)]:
        (folder / name).write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    record_folder(folder)
    for name in files_of(folder):
        if name == RECORD_NAME:
            continue
        for kind in ("missing", "empty", "truncated-half", "flipped"):
            copy = shutil.copytree(folder, tmp_path / f"{kind}-{name}")
            damage(copy / name, kind)
            with pytest.raises(IntegrityError, match=str(copy / name).replace(".", r"\.")):
                verify_folder(copy)
    damage(folder / RECORD_NAME, "flipped")
    with pytest.raises(IntegrityError, match=f"{RECORD_NAME}: damaged record"):
        verify_folder(folder)

"""Models by Hub repo id, offline, through a Hugging Face cache the test builds itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from phenaki.checkpoint import CheckpointError, resolve_folder
from phenaki.pipeline import Phenaki, PipelineError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, repo_id: str, folder: Path, commit: str = COMMIT, branch: str = "main") -> Path:
    """The cache layout huggingface_hub reads: refs/<branch> -> snapshots/<commit>/<files>."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    return root


def offline_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HOME": str(cache.parent / "home")}


def test_save_pretrained_loads_back_bit_for_bit(tiny_pipeline_dir, tmp_path):
    pipe = Phenaki.from_pretrained(tiny_pipeline_dir, device="cpu", dtype="float32")
    again = Phenaki.from_pretrained(pipe.save_pretrained(tmp_path / "again"), device="cpu", dtype="float32")
    for a, b in [(pipe.transformer, again.transformer), (pipe.tokenizer, again.tokenizer),
                 (pipe.text_encoder.model, again.text_encoder.model)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert again.sampling == pipe.sampling
    files = sorted(p.relative_to(tiny_pipeline_dir) for p in tiny_pipeline_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    for name in files:  # the same bytes, file by file, but where the text encoder notes where it was loaded from
        if name.parent.name != "text_encoder" and name.name != "checksums.json":
            assert (tiny_pipeline_dir / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    story = ["a red ball moves right", "the blue box rises"]
    assert torch.equal(pipe.generate(story, seed=3).frames, again.generate(story, seed=3).frames)


def test_repo_ids_load_from_the_cache_offline(tiny_pipeline_dir, tmp_path):
    cache = hub_cache(tmp_path / "hub", "someone/tiny-phenaki", tiny_pipeline_dir)
    script = f"""
import json, torch
from phenaki import Phenaki
from phenaki.pipeline import PipelineError
out = {{}}
a = Phenaki.from_pretrained("someone/tiny-phenaki", device="cpu", dtype="float32")
b = Phenaki.from_pretrained("someone/tiny-phenaki", revision="{COMMIT}", device="cpu", dtype="float32")
out["same"] = torch.equal(a.generate(["a red ball moves right"], seed=0, first_frames=3).frames,
                          b.generate(["a red ball moves right"], seed=0, first_frames=3).frames)
out["source"] = a.source
for ref, kw in [("nobody/nothing", {{}}), ("someone/tiny-phenaki", {{"revision": "v9"}})]:
    try:
        Phenaki.from_pretrained(ref, **kw)
        out[ref] = "loaded"
    except PipelineError as exc:
        out[ref + str(kw)] = str(exc)
print(json.dumps(out))
"""
    run = subprocess.run([sys.executable, "-c", script], env=offline_env(cache), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["same"] and out["source"].startswith(str(cache)) and COMMIT in out["source"]
    assert "nobody/nothing: not in the local Hugging Face cache" in out["nobody/nothing{}"]
    assert "someone/tiny-phenaki@v9" in out["someone/tiny-phenaki{'revision': 'v9'}"]
    # the command line takes the same ids
    cli = subprocess.run([sys.executable, "-m", "phenaki.cli.sample", "--checkpoint", "someone/tiny-phenaki",
                          "--prompt", "a red ball moves right", "--first-frames", "3", "--out", str(tmp_path / "x.gif")],
                         env=offline_env(cache), capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0 and (tmp_path / "x.gif").is_file(), cli.stderr[-3000:]


def test_a_damaged_file_in_the_cache_is_named(tiny_pipeline_dir, tmp_path):
    cache = hub_cache(tmp_path / "hub", "someone/tiny-phenaki", tiny_pipeline_dir)
    weights = next(cache.rglob("transformer/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    script = "from phenaki import Phenaki\nPhenaki.from_pretrained('someone/tiny-phenaki')"
    run = subprocess.run([sys.executable, "-c", script], env=offline_env(cache), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode != 0 and "transformer/model.safetensors: truncated" in run.stderr


def test_names_that_are_neither_folder_nor_repo_id_are_refused(tmp_path):
    for bad in (str(tmp_path / "missing"), "no-slash", "a/b/c", "./x/y"):
        with pytest.raises(CheckpointError, match="no such folder"):
            resolve_folder(bad)
    with pytest.raises(PipelineError, match="no such folder"):
        Phenaki.from_pretrained(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="revision"):
        resolve_folder(tmp_path, revision="main")


def test_push_to_hub_uploads_the_saved_folder(tiny_pipeline_dir, monkeypatch):
    import huggingface_hub

    seen = {}

    class FakeApi:
        def __init__(self, token=None):
            seen["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            seen["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message):
            seen["files"] = sorted(p.relative_to(folder_path).as_posix()
                                   for p in Path(folder_path).rglob("*") if p.is_file())
            return type("Info", (), {"commit_url": f"https://example.invalid/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    pipe = Phenaki.from_pretrained(tiny_pipeline_dir, device="cpu", dtype="float32")
    url = pipe.push_to_hub("me/my-model", private=True)
    assert url.endswith("me/my-model/commit/1") and seen["repo"] == ("me/my-model", True, True)
    assert "pipeline.json" in seen["files"] and "transformer/model.safetensors" in seen["files"]
    assert "checksums.json" in seen["files"]

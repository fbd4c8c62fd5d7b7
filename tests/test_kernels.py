"""`phenaki.kernels`: the attention path and threads are chosen by measuring, remembered per machine,
and forced on request; either path computes the same attention."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from phenaki import kernels
from phenaki.config import TransformerConfig
from phenaki.models.attention import attend
from phenaki.models.maskgit import MaskGit


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "kernels.json"
    monkeypatch.setenv("PHENAKI_KERNEL_CACHE", str(path))
    monkeypatch.delenv("PHENAKI_KERNELS", raising=False)
    monkeypatch.setattr(kernels, "BUSY_CORES", float("inf"))  # whatever else this machine runs
    kernels.clear_memory()
    yield path
    kernels.clear_memory()


def _tiny() -> MaskGit:
    torch.manual_seed(0)
    return MaskGit(TransformerConfig(dim=32, depth=2, heads=2, dim_head=16, max_token_frames=2, codebook_size=64,
                                     token_grid=(4, 4), text_dim=16))


def _paths(model: torch.nn.Module) -> set:
    return {m.attention_path for m in model.modules() if hasattr(m, "attention_path")}


def _slow_path(model: torch.nn.Module, seconds: dict[str, float], calls: list[str]):
    """A run whose time depends only on the attention path the model was given."""
    def run() -> None:
        (path,) = _paths(model)
        calls.append(path)
        time.sleep(seconds[path])
    return run


def test_every_attention_layer_is_reached() -> None:
    model = _tiny()
    layers = [m for m in model.modules() if hasattr(m, "attention_path")]
    assert len(layers) == 4  # self- and cross-attention in each of the 2 blocks
    kernels.set_attention_path(model, "explicit")
    assert _paths(model) == {"explicit"}
    with pytest.raises(kernels.KernelError, match="attention path"):
        kernels.set_attention_path(model, "flash")


def test_the_faster_path_is_chosen_and_remembered(cache) -> None:
    model, calls = _tiny(), []
    run = _slow_path(model, {"sdpa": 0.02, "explicit": 0.005}, calls)
    choice = kernels.tune({"what": "test", "n": 1}, run, [model], threads=False, repeat=2)
    assert choice.attention == "explicit" and choice.measured
    assert _paths(model) == {"explicit"}
    record = next(iter(json.loads(cache.read_text()).values()))
    assert record["attention"] == "explicit" and record["times_ms"]["sdpa@%d" % torch.get_num_threads()] >= 20
    # a new process (memory cleared) reads the cache and times nothing
    kernels.clear_memory()
    calls.clear()
    fresh = _tiny()
    again = kernels.tune({"what": "test", "n": 1}, _slow_path(fresh, {"sdpa": 0.0, "explicit": 1.0}, calls), [fresh],
                         threads=False)
    assert again.attention == "explicit" and calls == [] and _paths(fresh) == {"explicit"}
    # another case is measured afresh
    other = kernels.tune({"what": "test", "n": 2}, _slow_path(fresh, {"sdpa": 0.001, "explicit": 0.02}, calls),
                         [fresh], threads=False, repeat=2)
    assert other.attention == "sdpa" and calls


def test_a_choice_measured_beside_a_busy_process_is_not_cached(cache, monkeypatch) -> None:
    """Timings beside another busy process favour fewer threads; they hold for this process only."""
    import subprocess
    import sys

    monkeypatch.setattr(kernels, "BUSY_CORES", 0.3)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        model = _tiny()
        choice = kernels.tune({"what": "busy"}, _slow_path(model, {"sdpa": 0.05, "explicit": 0.01}, []), [model],
                              threads=False, repeat=3)
    finally:
        spinner.kill()
        spinner.wait()
    assert choice.attention == "explicit" and not cache.exists()
    calls: list[str] = []  # this process keeps it without measuring again
    assert kernels.tune({"what": "busy"}, _slow_path(model, {"sdpa": 0.0, "explicit": 0.0}, calls), [model],
                        threads=False).attention == "explicit" and calls == []


def test_noise_does_not_flip_the_default(cache) -> None:
    """A path other than SDPA must win by the margin; a tie keeps SDPA."""
    model = _tiny()
    run = _slow_path(model, {"sdpa": 0.02, "explicit": 0.02 * (1 - kernels.MARGIN / 4)}, [])
    assert kernels.tune({"what": "tie"}, run, [model], threads=False, repeat=2).attention == "sdpa"


def test_fewer_threads_are_chosen_when_they_are_faster(cache) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = _tiny()

        def run() -> None:  # one thread is fast, two are slow, whatever the path
            time.sleep(0.02 if torch.get_num_threads() == 2 else 0.004)

        choice = kernels.tune({"what": "threads"}, run, [model], repeat=2)
        assert choice.threads == 1
        assert torch.get_num_threads() == 2  # measuring leaves torch's setting as it was
        with kernels.use_threads(choice.threads):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_forced_modes_measure_nothing(cache, monkeypatch) -> None:
    model, calls = _tiny(), []
    run = _slow_path(model, {"sdpa": 0.0, "explicit": 0.0}, calls)
    assert kernels.tune({"what": "x"}, run, [model], mode="sdpa").attention == "sdpa"
    assert _paths(model) == {"sdpa"}
    monkeypatch.setenv("PHENAKI_KERNELS", "explicit")
    assert kernels.tune({"what": "x"}, run, [model], mode=None).attention == "explicit"
    assert kernels.tune({"what": "x"}, run, [model], mode="default").attention is None
    assert _paths(model) == {None}
    assert calls == [] and not cache.exists()


def test_unknown_modes_are_named(monkeypatch) -> None:
    with pytest.raises(kernels.KernelError, match="'fastest'.*auto, sdpa, explicit, default"):
        kernels.resolve_kernels("fastest")
    monkeypatch.setenv("PHENAKI_KERNELS", "turbo")
    with pytest.raises(kernels.KernelError, match="PHENAKI_KERNELS.*'turbo'"):
        kernels.resolve_kernels(None)


def test_a_broken_or_unwritable_cache_only_costs_a_measurement(tmp_path, monkeypatch, caplog) -> None:
    broken = tmp_path / "kernels.json"
    broken.write_text("{not json")
    monkeypatch.setenv("PHENAKI_KERNEL_CACHE", str(broken))
    monkeypatch.setattr(kernels, "BUSY_CORES", float("inf"))
    kernels.clear_memory()
    model = _tiny()
    with caplog.at_level(logging.WARNING, logger="phenaki.kernels"):
        choice = kernels.tune({"what": "b"}, _slow_path(model, {"sdpa": 0.001, "explicit": 0.01}, []), [model],
                              threads=False, repeat=1)
    assert choice.attention == "sdpa" and "unreadable" in caplog.text
    assert json.loads(broken.read_text())  # rewritten whole
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("PHENAKI_KERNEL_CACHE", str(blocked / "kernels.json"))  # its parent is a file
    kernels.clear_memory()
    with caplog.at_level(logging.WARNING, logger="phenaki.kernels"):
        choice = kernels.tune({"what": "c"}, _slow_path(model, {"sdpa": 0.01, "explicit": 0.001}, []), [model],
                              threads=False, repeat=1)
    assert choice.attention == "explicit" and "could not write" in caplog.text
    kernels.clear_memory()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_both_paths_compute_the_same_attention(dtype) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 16, generator=g).to(dtype) for _ in range(3))
    mask = torch.ones(2, 1, 1, 10, dtype=torch.bool)
    mask[0, ..., 7:] = False
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    tol = 1e-5 if dtype == torch.float32 else 0.05
    for path in ("sdpa", "explicit", None):
        out = attend(q, k, v, mask=mask, path=path)
        torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


def test_generate_uses_one_measured_choice_and_records_it(tiny_pipeline_dir, cache) -> None:
    from phenaki.pipeline import Phenaki

    pipe = Phenaki.from_pretrained(tiny_pipeline_dir)
    assert pipe.kernels == "auto"
    one = pipe.generate(["a red ball moves right"], seed=0)  # measures first
    two = pipe.generate(["a red ball moves right"], seed=0, num_samples=2)
    again = pipe.generate(["a red ball moves right"], seed=0)
    assert one.metadata["kernels"]["attention"] in ("sdpa", "explicit")
    assert two[0].metadata["kernels"] == one.metadata["kernels"]  # one choice whatever the batch
    assert torch.equal(again.frames, one.frames)  # measuring drew nothing from the seed's generator
    cases = {r["case"]["what"] for r in json.loads(cache.read_text()).values()}
    assert cases == {"sampling forward", "tokenizer decode"}
    forced = Phenaki.from_pretrained(tiny_pipeline_dir, kernels="explicit")
    video = forced.generate(["a red ball moves right"], seed=0)
    assert video.metadata["kernels"]["attention"] == "explicit"
    assert _paths(forced.transformer) == _paths(forced.tokenizer) == {"explicit"}


def test_maskgit_training_times_its_first_batch_and_keeps_the_choice(tmp_path, tokenizer_dir, cache) -> None:
    """The trainer measures once (forward and backward of its first batch), trains with the choice,
    and a forced mode reaches every attention layer without measuring."""
    from test_maskgit_trainer import config

    from phenaki.training.maskgit_trainer import train_maskgit

    train_maskgit(config(tmp_path / "a", steps=2), tokenizer_dir, progress=False)
    records = [r for r in json.loads(cache.read_text()).values() if r["case"]["what"] == "training step"]
    assert len(records) == 1 and records[0]["attention"] in ("sdpa", "explicit")
    assert records[0]["case"]["batch_size"] == 4 and records[0]["case"]["precision"] == "bf16"
    cfg = config(tmp_path / "b", steps=1)
    cfg.train_maskgit.kernels = "explicit"
    train_maskgit(cfg, tokenizer_dir, progress=False)
    assert len(json.loads(cache.read_text())) == 1  # nothing new measured


def test_an_unknown_training_kernel_mode_is_a_config_error() -> None:
    from phenaki.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="kernels: unknown kernel mode 'fast'"):
        TrainConfig(kernels="fast")


@pytest.mark.slow
def test_a_compiled_pipeline_draws_a_video(tiny_pipeline_dir, cache) -> None:
    from phenaki.pipeline import Phenaki

    pipe = Phenaki.from_pretrained(tiny_pipeline_dir, compile=True, dtype="float32")
    eager = Phenaki.from_pretrained(tiny_pipeline_dir, dtype="float32")
    video = pipe.generate(["a red ball moves right"], seed=0)
    assert video.frames.shape == eager.generate(["a red ball moves right"], seed=0).frames.shape
    assert pipe._compile_done and hasattr(pipe.transformer, "_compiled_call_impl")


TRAIN_SCRIPTS = ["train/train_maskgit.py", "train/train_tokenizer.py", "train/train_matcher.py"]


@pytest.mark.parametrize("script", TRAIN_SCRIPTS)
@pytest.mark.parametrize("preset, expected", [({}, "20000"), ({"GOMP_SPINCOUNT": "7"}, "7"),
                                              ({"OMP_WAIT_POLICY": "ACTIVE"}, "None")])
def test_training_threads_spin_briefly_unless_told(script, preset, expected):
    """A train script limits OpenMP's spinning before torch loads (afterwards it would be
    ignored), and leaves a wait policy or spin count the user chose alone."""
    root = Path(__file__).resolve().parents[1]
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(preset)
    code = ("import os, runpy, sys; runpy.run_path(sys.argv[1], run_name='imported'); "
            "print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(root / script)], env=env, cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [expected, "False"]

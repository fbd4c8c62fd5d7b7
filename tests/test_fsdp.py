"""FSDP under `accelerate launch`: two CPU processes (gloo) with torch's FSDP, full shard.

accelerate turns FSDP on only on accelerators; the trainers run an FSDP launch config on a
machine without CUDA with torch's FSDP on CPU (`phenaki.training.base._fsdp_on_cpu`), so the
sharded checkpoint path of `configs/accelerate/fsdp_paper.yaml` is checked here exactly:
each process writes its shards of the model, optimiser state and EMA, and stopping at
step 2 then resuming to 4 ends with the very weights (and export) of 4 steps straight.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import ROOT, _tiny_tokenizer, launch, reports

from phenaki.integrity import verify_folder

FSDP_CONFIG = ROOT / "configs" / "accelerate" / "cpu_2proc_fsdp.yaml"


def assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "transformer" / "model.safetensors"))


@pytest.mark.slow  # three two-process launches: about a minute on two cores
def test_fsdp_run_saves_shards_and_resumes_exactly(tmp_path):
    extra = ["--tokenizer", str(_tiny_tokenizer(tmp_path / "tok"))]
    straight = tmp_path / "straight"
    launch("maskgit", straight, *extra, config=FSDP_CONFIG)
    (r0, w0), (r1, w1) = reports(straight)
    assert r0["sharded"] and r1["sharded"] and (r0["num_processes"], r1["num_processes"]) == (2, 2)
    assert r0["is_main"] and not r1["is_main"]
    assert len(r0["indices"]) == len(r1["indices"]) == 4 * 3 and not set(r0["indices"]) & set(r1["indices"])
    assert w0 and not w1  # the whole weights exist on the main process only
    # a checkpoint holds the shards of the model, the optimiser state and the EMA, checksummed
    ckpt = straight / "checkpoints" / "step-0000002"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["sharded"] and state["num_processes"] == 2
    for part in ("maskgit.fsdp", "maskgit.optim.fsdp", "ema.fsdp"):
        assert any(p.suffix == ".distcp" for p in (ckpt / part).rglob("*")), part
    assert not (ckpt / "maskgit.safetensors").exists() and verify_folder(ckpt)
    assert sorted(state["shard_metadata"]) == ["ema.fsdp/pytorch_model_fsdp_0/.metadata",
                                               "maskgit.fsdp/pytorch_model_fsdp_0/.metadata",
                                               "maskgit.optim.fsdp/optimizer_0/.metadata"]
    # one writer: one log line per step, one preview per preview step, no stray folders
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert sorted(p.name for p in (straight / "previews").iterdir()) == ["step-0000002.gif", "step-0000004.gif"]
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    # the export is an ordinary single-file model: the EMA weights, not the trained ones
    exported = final_weights(straight)
    trained = {k.removeprefix("maskgit.maskgit."): v for k, v in w0.items() if k.startswith("maskgit.maskgit.")}
    assert exported.keys() <= trained.keys()
    assert any(not torch.equal(exported[k].float(), trained[k]) for k in exported)

    # stop at step 2, resume to 4: the same weights, EMA and export as the uninterrupted run
    resumed = tmp_path / "resumed"
    launch("maskgit", resumed, "--stop-at", "2", *extra, config=FSDP_CONFIG)
    assert not (resumed / "final").exists()
    launch("maskgit", resumed, "--resume", *extra, config=FSDP_CONFIG)
    (q0, v0), (q1, _) = reports(resumed)
    assert q0["step"] == q1["step"] == 4
    assert_equal(v0, w0)
    assert_equal(final_weights(resumed), exported)

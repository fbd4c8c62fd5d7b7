"""Both trainers under `accelerate launch` with two CPU processes (gloo), as users launch them.

Each run is tests/distributed_run.py on tiny models; every process reports the
dataset indices it read and its final weights. Checked: the processes read disjoint
samples, end with identical weights (gradients were synchronised), only the main
process wrote checkpoints, previews and logs, and stopping + resuming gives the same
weights as an uninterrupted two-process run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from phenaki.config import TokenizerConfig
from phenaki.models.cvivit import CViViT

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "tests" / "distributed_run.py"
LAUNCH_CONFIG = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"


def launch(which: str, out: Path, *extra: str, config: Path = LAUNCH_CONFIG) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    port = str(29600 + (abs(hash(str(out))) % 300))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
           "--main_process_port", port, str(HELPER), which, str(out), *extra]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def reports(out: Path) -> list[tuple[dict, dict[str, torch.Tensor]]]:
    return [(json.loads((out / f"rank-{r}.json").read_text()), load_file(str(out / f"rank-{r}.safetensors")))
            for r in range(2)]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def _tiny_tokenizer(path: Path) -> Path:
    sys.path.insert(0, str(HELPER.parent))
    from distributed_run import TOKENIZER

    torch.manual_seed(0)
    CViViT(TokenizerConfig(**TOKENIZER)).save_pretrained(path)
    return path


@pytest.mark.parametrize("which", ["tokenizer", "maskgit"])
def test_two_processes_train_like_one(tmp_path, which):
    extra = ["--tokenizer", str(_tiny_tokenizer(tmp_path / "tok"))] if which == "maskgit" else []
    straight = tmp_path / "straight"
    launch(which, straight, *extra)
    (r0, w0), (r1, w1) = reports(straight)
    assert (r0["num_processes"], r1["num_processes"]) == (2, 2)
    assert r0["is_main"] and not r1["is_main"]
    # each process read its own part of the data
    assert len(r0["indices"]) == len(r1["indices"]) == 4 * 3
    assert not set(r0["indices"]) & set(r1["indices"])
    # gradients were synchronised: both processes end with the same weights ...
    assert_same(w0, w1)
    # ... which training changed (the comparison is not vacuous)
    name = "tokenizer" if which == "tokenizer" else "maskgit"
    state = load_file(str(straight / "checkpoints" / "step-0000002" / f"{name}.safetensors"))
    assert any(not torch.equal(state[k].float(), w0[f"{name}.{k}"]) for k in state if state[k].is_floating_point())
    # only the main process wrote: one log line per step (+ validation lines), one preview per preview step
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert sorted(p.name for p in (straight / "previews").iterdir()) == ["step-0000002.gif", "step-0000004.gif"]
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert (straight / "final").is_dir()

    # stop at step 2, resume to 4: the same weights as the uninterrupted run
    resumed = tmp_path / "resumed"
    launch(which, resumed, "--stop-at", "2", *extra)
    assert not (resumed / "final").exists()
    launch(which, resumed, "--resume", *extra)
    (q0, v0), (q1, v1) = reports(resumed)
    assert q0["step"] == q1["step"] == 4
    assert_same(v0, v1)
    assert_same(v0, w0)

"""Two machines on one host: the trainers under two `accelerate launch` machine ranks.

The cluster's own launch config (`configs/accelerate/multinode_ddp.yaml`) is used as a
cluster would use it, each "machine" started with its `--machine_rank`, one process each,
the main process on 127.0.0.1. Checked: the two ranks read disjoint samples, end with
identical weights, and only machine rank 0 wrote checkpoints, previews and logs (into the
shared output folder, as on a cluster with shared storage).
"""

import json
import os
import socket
import subprocess
import sys

import torch
from test_distributed import HELPER, ROOT, reports

CLUSTER_CONFIG = ROOT / "configs" / "accelerate" / "multinode_ddp.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_machine_ranks_train_like_one(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    port = str(free_port())
    machines = []
    for rank in (0, 1):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CLUSTER_CONFIG),
               "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
               "--main_process_ip", "127.0.0.1", "--main_process_port", port,
               str(HELPER), "tokenizer", str(out)]
        machines.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True))
    try:
        logs = [m.communicate(timeout=300)[0] for m in machines]
    finally:
        for m in machines:
            if m.poll() is None:
                m.kill()
    for m, text in zip(machines, logs):
        assert m.returncode == 0, text[-3000:]
    (r0, w0), (r1, w1) = reports(out)
    assert (r0["num_processes"], r1["num_processes"]) == (2, 2)
    assert r0["is_main"] and not r1["is_main"]
    assert len(r0["indices"]) == len(r1["indices"]) == 4 * 3
    assert not set(r0["indices"]) & set(r1["indices"])
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)  # gradients were averaged
    assert all(torch.isfinite(v).all() for v in w0.values())
    # one writer: one log line per step, one preview per preview step, one set of checkpoints
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["step-0000002.gif", "step-0000004.gif"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert json.loads((out / "checkpoints" / "step-0000004" / "state.json").read_text())["num_processes"] == 2
    assert (out / "final" / "model.safetensors").is_file()

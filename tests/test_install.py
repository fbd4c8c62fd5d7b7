"""Any install carries the demo model: the wheel (and what pip builds from the sdist) hold it and the commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "phenaki" / "pretrained" / "phenaki-shapes"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    wheels = list(out.glob("phenaki-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_the_wheel_carries_the_demo_model_and_the_commands(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        shipped = sorted(p.relative_to(ROOT).as_posix() for p in MODEL.rglob("*") if p.is_file())
        assert shipped and all(name in names for name in shipped), sorted(set(shipped) - names)
        # the same bytes: the model's own checksums hold inside the wheel
        record = json.loads(z.read("phenaki/pretrained/phenaki-shapes/checksums.json"))
        for name, entry in record["files"].items():
            assert z.getinfo(f"phenaki/pretrained/phenaki-shapes/{name}").file_size == entry["size"], name
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        text = z.read(entry_points).decode()
    for command in ("phenaki-sample", "phenaki-eval", "phenaki-data", "phenaki-web"):
        assert f"{command} = phenaki.cli:" in text


@pytest.mark.slow
def test_an_installed_wheel_samples_from_another_folder(wheel, tmp_path):
    """As a user would: a fresh virtual environment, the wheel, the command, in a folder of its own."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(wheel)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([str(venv / "bin" / "phenaki-sample"), "--prompt", "a red ball moves right", "--out",
                          "x.gif", "--steps", "4", "--candidates", "1"], cwd=work, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    sidecar = json.loads((work / "x.json").read_text())
    assert str(venv) in sidecar["metadata"]["checkpoint"]  # the installed copy's model, not this checkout's

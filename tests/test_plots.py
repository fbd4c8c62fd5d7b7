"""Plots of a run's curves and of a judged table, written as PNG files a person can look at."""

from __future__ import annotations

import json

from click.testing import CliRunner
from PIL import Image

from phenaki.cli import eval_main
from phenaki.evaluation.judge import evaluate_shapes
from phenaki.pipeline import Phenaki


def test_a_run_s_curves_become_one_png(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps({"step": s, "loss": 2.0 / s, "psnr": 20 + s / 10, "usage": 0.5, "lr": 3e-4 * min(1, s / 5),
                         "commit": 0.01, "sec_per_step": 0.2}) for s in range(1, 41)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 41, "lo')  # killed mid-write
    result = CliRunner().invoke(eval_main, ["plot", str(run), "--out", str(tmp_path / "curves.png")])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 600  # 5 panels: 3 rows of 2
    (run / "metrics.jsonl").write_text(lines[0] + "\nnot json\n" + lines[1] + "\n")
    result = CliRunner().invoke(eval_main, ["plot", str(run), "--out", str(tmp_path / "bad.png")])
    assert result.exit_code == 1 and "metrics.jsonl:2: not a JSON record" in result.output
    assert not (tmp_path / "bad.png").exists()


def test_a_judged_table_becomes_bars_per_criterion_and_per_motion(tiny_pipeline_dir, tmp_path):
    pipe = Phenaki.from_pretrained(tiny_pipeline_dir, device="cpu", dtype="float32")
    result = evaluate_shapes(pipe, 2, seed=0, num_scenes=2, generate_kwargs={"steps": 1})
    (tmp_path / "judged.json").write_text(json.dumps(result))
    out = tmp_path / "judged.png"
    cli = CliRunner().invoke(eval_main, ["plot", str(tmp_path / "judged.json"), "--out", str(out)])
    assert cli.exit_code == 0, cli.output
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > image.height  # two panels side by side
    (tmp_path / "other.json").write_text("{}")
    cli = CliRunner().invoke(eval_main, ["plot", str(tmp_path / "other.json"), "--out", str(tmp_path / "o.png")])
    assert cli.exit_code == 1 and "not a judged result" in cli.output

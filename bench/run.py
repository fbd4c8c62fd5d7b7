"""The benchmark suite: ours vs phenaki-pytorch, demo and paper configs, one command.

    python -m bench                                  # ours only, CPU, demo + paper configs
    python -m bench --peer /tmp/peer/site --kinds tokenizer train sample story data --json runs/bench.json
    python -m bench --device cuda --peer DIR         # on a GPU

The peer is imported from a folder made by `pip install --no-deps --target DIR
phenaki-pytorch beartype`. Every case runs in a fresh subprocess, so its peak memory
is its own and one failing case does not stop the suite. On CPU the paper-config
transformer keeps its width but only `--paper-depth` of its 24 layers (default 2),
runs in bf16 only and skips the 3-scene story (`--full-paper` adds them): the
per-layer cost is what is compared, and the full model would not fit a CPU training
step in 24 GiB with AdamW.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

from .common import ROOT, machine

# (kind, config, batch) of the default suite; dtypes and implementations multiply it
SUITE = [
    ("tokenizer", "demo", 8), ("tokenizer", "paper", 1),
    ("train", "demo", 16), ("train", "paper", 1),
    ("sample", "demo", 1), ("sample", "demo", 4), ("sample", "paper", 1),
    ("story", "demo", 1), ("story", "paper", 1),
]
# metric, unit, higher is better
METRICS = {
    "tokenizer": [("encode_fps", "frames/s", True), ("decode_fps", "frames/s", True)],
    "train": [("samples_per_s", "samples/s", True)],
    "sample": [("clip_s", "s/clip", False), ("tokens_per_s", "tokens/s", True)],
    "story": [("story_s", "s/story", False)],
}
# data loading alone (kind "data"): source x DataLoader workers, demo config
DATA_SUITE = [("shapes", 0), ("shapes", 2), ("shards", 0), ("shards", 2), ("tokens", 0)]


def run_case(case: dict[str, Any], timeout: int) -> dict[str, Any]:
    """Run one case in a subprocess; a failure becomes an `error` entry."""
    cmd = [sys.executable, "-m", "bench.run", "--case", json.dumps(case)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**case, "error": f"timed out after {timeout} s"}
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["exit %d" % out.returncode])[-1]
        return {**case, "error": tail}
    return {**case, **json.loads(out.stdout.strip().splitlines()[-1])}


def _fmt(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per metric, ours / peer / ratio (>1 = ours better), memory."""
    peaks = {r["dtype"]: r["tflops"] for r in results if r["kind"] == "matmul" and "error" not in r}
    lines = ["| case | config | batch | dtype | metric | ours | peer | ours/peer | ours MB | peer MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["impl"] != "ours" or r["kind"] not in METRICS:
            continue
        key = (r["kind"], r["config"], r["batch"], r["dtype"])
        p = next((q for q in results if q["impl"] == "peer" and (q["kind"], q["config"], q["batch"], q["dtype"]) == key),
                 None)
        for metric, unit, higher in METRICS[r["kind"]]:
            ours = r.get(metric)
            theirs = p.get(metric) if p and "error" not in p else None
            ratio = "-"
            if ours and theirs:
                ratio = f"{(ours / theirs if higher else theirs / ours):.2f}x"
            lines.append(
                f"| {r['kind']} | {r['config']} | {r['batch']} | {r['dtype']} | {metric} ({unit}) | "
                f"{_fmt(ours) if ours else r.get('error', '-')} | "
                f"{_fmt(theirs) if theirs else (p.get('error', '-') if p else '-')} | {ratio} | "
                f"{_fmt(r.get('peak_mb', 0))} | {_fmt(p['peak_mb']) if p and 'peak_mb' in p else '-'} |"
            )
    data = [r for r in results if r["kind"] == "data"]
    if data:
        lines += ["", "| data source | workers | samples/s |", "|---|---|---|"]
        lines += [f"| {r['impl']} | {r['batch']} | {_fmt(r['samples_per_s']) if 'samples_per_s' in r else r.get('error')} |"
                  for r in data]
    lines.append("")
    lines.append("| transformer forward (guided, batch 2B) | config | batch | dtype | GFLOP | TFLOP/s | % of matmul peak |")
    lines.append("|---|---|---|---|---|---|---|")
    for r in results:
        if r["kind"] == "sample" and r["impl"] == "ours" and "forward_tflops" in r:
            peak = peaks.get(r["dtype"])
            share = f"{100 * r['forward_tflops'] / peak:.0f}%" if peak else "-"
            lines.append(f"| ours | {r['config']} | {r['batch']} | {r['dtype']} | {r['forward_gflop']:.1f} | "
                         f"{r['forward_tflops']:.3f} | {share} |")
    for dtype, value in sorted(peaks.items()):
        lines.append(f"| matmul 1024^3 peak | - | - | {dtype} | - | {value:.3f} | 100% |")
    lines += ["", work_table(results, peaks)]
    return "\n".join(lines)


def work_table(results: list[dict[str, Any]], peaks: dict[str, float]) -> str:
    """Markdown: the counted GFLOP per unit of each metric, ours and the peer's, and the best
    ours/peer any code doing our work could reach: all of it at the measured matmul peak,
    nothing else, against the peer's measured time."""
    lines = ["| case | config | batch | dtype | metric | GFLOP per | ours GFLOP | peer GFLOP | ours/peer at most |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["impl"] != "ours" or r["kind"] not in METRICS or "error" in r:
            continue
        key = (r["kind"], r["config"], r["batch"], r["dtype"])
        p = next((q for q in results if q["impl"] == "peer" and "error" not in q
                  and (q["kind"], q["config"], q["batch"], q["dtype"]) == key), None)
        for metric, unit, higher in METRICS[r["kind"]]:
            ours = r.get(f"{metric}_gflop")
            if ours is None:
                continue
            theirs = p.get(f"{metric}_gflop") if p else None
            bound = "-"
            peak = peaks.get(r["dtype"])
            if p and peak and p.get(metric):
                peer_s = 1 / p[metric] if higher else p[metric]  # the peer's seconds per unit
                bound = f"{peer_s / (ours / (peak * 1e3)):.2f}x"
            per = (unit.split("/")[0] if higher else unit.split("/")[1]).removesuffix("s")
            lines.append(f"| {r['kind']} | {r['config']} | {r['batch']} | {r['dtype']} | {metric} | {per} | {ours:.3g} | "
                         f"{f'{theirs:.3g}' if theirs is not None else '-'} | {bound} |")
    return "\n".join(lines)


def machine_line(info: dict[str, Any]) -> str:
    """One line naming the machine every figure below comes from."""
    isa = ", ".join(info.get("isa", [])) or "no AVX2"
    return (f"machine: {info['cpu']}, {info['cores']} cores ({isa}; torch kernels {info.get('torch_cpu_capability')}), "
            f"matrix product {info.get('fp32_matmul_gflops')} GFLOP/s fp32, {info.get('bf16_matmul_gflops')} bf16"
            + (f", GPU {info['gpu']}" if info.get("gpu") else ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["demo", "paper"], choices=["demo", "paper"])
    parser.add_argument("--kinds", nargs="+", default=["tokenizer", "train", "sample", "story", "data"],
                        choices=["tokenizer", "train", "sample", "story", "data"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeat", type=int, default=2, help="timed repeats per case (best is kept)")
    parser.add_argument("--paper-depth", type=int, default=None,
                        help="transformer layers at the paper config (default: 2 on CPU, all 24 on CUDA)")
    parser.add_argument("--full-paper", action="store_true",
                        help="on CPU also run the paper config in fp32 and its 3-scene story (slow)")
    parser.add_argument("--peer", default=None, help="folder holding phenaki_pytorch (pip --target)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per case")
    parser.add_argument("--json", default=None, help="write results, table and machine info here")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case
    args = parser.parse_args(argv)
    if args.case:
        from .cases import CASES

        case = json.loads(args.case)
        fn = CASES[case["kind"]]
        print(json.dumps(fn(case["impl"], case["config"], case["batch"], case["dtype"], case["device"],
                            case["repeat"], case.get("peer"), case.get("depth"))))
        return
    cpu = args.device == "cpu"
    paper_depth = args.paper_depth or (2 if cpu else None)
    impls = ["ours"] + (["peer"] if args.peer else [])
    cases = [{"kind": "matmul", "impl": "ours", "config": "-", "batch": 1, "dtype": d} for d in args.dtypes]
    for kind, config, batch in SUITE:
        if kind in args.kinds and config in args.configs:
            if config == "paper" and cpu and kind == "story" and not args.full_paper:
                continue  # three paper-width sampling calls per story: minutes per case on a CPU
            for dtype in args.dtypes:
                if config == "paper" and cpu and dtype == "fp32" and not args.full_paper:
                    continue  # bf16 is how the paper width runs on a CPU
                for impl in impls:
                    depth = paper_depth if config == "paper" else None
                    cases.append({"kind": kind, "impl": impl, "config": config, "batch": batch, "dtype": dtype,
                                  "depth": depth})
    if "data" in args.kinds:
        cases += [{"kind": "data", "impl": source, "config": "demo", "batch": workers, "dtype": "fp32"}
                  for source, workers in DATA_SUITE]
    results = []
    for case in cases:
        case.update(device=args.device, repeat=args.repeat, peer=args.peer)
        results.append(run_case(case, args.timeout))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    info = machine()
    text = machine_line(info) + "\n" + table(results)
    print(text)
    if args.json:
        meta = {"date": str(date.today()), "machine": info, "command": "python -m bench " + " ".join(
            sys.argv[1:]), "paper_depth": paper_depth}
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": meta, "results": results, "table": text}, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The GPU check: CUDA correctness, launches that resume, benchmark with MFU, in under 8 minutes.

    bash bench/gpu_check.sh            # on a machine with one (or more) NVIDIA GPUs
    bash bench/gpu_check.sh --cpu      # the same parts at smoke size on a CPU (checks the script)

Each part runs in its own process under its own time limit, so a hang or a crash costs
that part only, and the whole stays inside `--budget` seconds (parts that would not fit are
skipped and say so). Results: `gpu_check.json` (every figure) and `gpu_check.md` (the
tables for BENCHMARKS.md) in `--out`.

Parts:
- env: the card, torch, CUDA, the card's dense bf16 peak (for MFU);
- correctness: a tiny tokenizer and transformer on the GPU vs the CPU (fp32 forward, greedy
  samples token for token, tokenizer ids), and training steps in bf16 (finite, the loss falls);
- launch: `accelerate launch` with configs/accelerate/single_gpu.yaml, 4 steps straight vs
  2 + resume to 4 (the weights compared);
- fsdp: the same under FSDP (fully_shard, sharded checkpoints), on every GPU present;
- bench: MaskGIT training samples/s, MFU against the bf16 peak and peak memory at the demo
  and paper configs; sampling tokens/s (12 steps, guidance 3, decoded to pixels);
- data: shard throughput, local disk vs HTTP (bench/gpu_data.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets
BF16_PEAK_TFLOPS = {"H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0,
                    "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "B200": 2250.0}
# (part, seconds) in running order; the bench's own cases have their limits inside
PARTS = [("env", 60), ("correctness", 75), ("launch", 100), ("fsdp", 100), ("bench", 200), ("data", 40)]


def bf16_peak(name: str) -> float | None:
    """The card's dense bf16 peak in TFLOP/s, by its name (longest match first), None if unknown."""
    for key in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):
        if all(word in name for word in key.split()):
            return BF16_PEAK_TFLOPS[key]
    return None


# ----------------------------------------------------------------------------- parts


def part_env(device: str, out: Path) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                            "cuda_available": torch.cuda.is_available(), "gpus": torch.cuda.device_count()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(card=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", bf16_peak_tflops=bf16_peak(props.name))
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,power.limit,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = f"unavailable: {exc}"
    else:
        info.update(card="CPU (smoke run)", bf16_peak_tflops=None)
    for module in ("accelerate", "transformers", "einops", "av", "webdataset", "safetensors",
                   "vector_quantize_pytorch"):
        try:
            info[module] = __import__(module).__version__
        except Exception as exc:  # noqa: BLE001 - report what is missing, do not stop
            info[module] = f"missing ({type(exc).__name__})"
    info["ok"] = device == "cpu" or info["cuda_available"]
    return info


def _tiny_config() -> Any:
    from phenaki.config import Config, from_dict

    return from_dict(Config, {
        "tokenizer": {"dim": 32, "spatial_depth": 1, "temporal_depth": 1, "heads": 2, "dim_head": 16,
                      "quantizer": "fsq", "fsq_levels": [5, 5, 5], "num_frames": 5},
        "transformer": {"dim": 64, "depth": 2, "heads": 4, "dim_head": 16, "max_token_frames": 3,
                        "text_dim": 32},
    })


def part_correctness(device: str, out: Path) -> dict[str, Any]:
    """The same tiny models on `device` and on the CPU (fp32, TF32 off): forward, greedy samples,
    tokenizer ids; then bf16 training steps on `device`."""
    import copy

    import torch

    from phenaki.models.cvivit import CViViT
    from phenaki.models.maskgit import MaskGit
    from phenaki.models.masking import maskgit_loss
    from phenaki.sampling.search import draw
    from phenaki.sampling.settings import SamplingSettings

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = _tiny_config()
    cfg.resolve(text_dim=32)
    torch.manual_seed(0)
    tok_cpu, mg_cpu = CViViT(cfg.tokenizer).eval(), MaskGit(cfg.transformer).eval()
    tok_dev, mg_dev = copy.deepcopy(tok_cpu).to(device), copy.deepcopy(mg_cpu).to(device)
    result: dict[str, Any] = {}
    t = cfg.tokenizer.token_frames(cfg.tokenizer.num_frames)
    h, w = cfg.transformer.token_grid
    gen = torch.Generator().manual_seed(1)
    emb = torch.randn(2, 8, 32, generator=gen)
    mask = torch.ones(2, 8, dtype=torch.bool)
    ids = torch.randint(0, cfg.transformer.codebook_size, (2, t, h, w), generator=gen)
    with torch.no_grad():
        ctx_cpu = mg_cpu.prepare_context(emb, mask)
        ctx_dev = mg_dev.prepare_context(emb.to(device), mask.to(device))
        logits_cpu = mg_cpu(ids, context=ctx_cpu)
        logits_dev = mg_dev(ids.to(device), context=ctx_dev).cpu()
    result["forward_max_abs_diff"] = float((logits_cpu - logits_dev).abs().max())
    settings = SamplingSettings(steps=6, guidance=2.0, temperature=0.0)  # greedy: no random draws
    with torch.no_grad():
        s_cpu = draw(mg_cpu, (emb, mask), None, settings, torch.Generator().manual_seed(0), num_token_frames=t)
        s_dev = draw(mg_dev, (emb.to(device), mask.to(device)), None, settings,
                     torch.Generator(device=device).manual_seed(0), num_token_frames=t).cpu()
        pixels = torch.rand(2, 3, cfg.tokenizer.num_frames, *cfg.tokenizer.image_size, generator=gen)
        enc_cpu, enc_dev = tok_cpu.encode(pixels), tok_dev.encode(pixels.to(device)).cpu()
        dec_cpu, dec_dev = tok_cpu.decode(enc_cpu), tok_dev.decode(enc_cpu.to(device)).cpu()
    result["greedy_sample_agreement"] = float((s_cpu == s_dev).float().mean())
    result["tokenizer_id_agreement"] = float((enc_cpu == enc_dev).float().mean())
    result["decode_max_abs_diff"] = float((dec_cpu - dec_dev).abs().max())
    # bf16 training on the device: a fixed batch, loss finite and falling
    model = copy.deepcopy(mg_cpu).to(device).train()
    fused = {"fused": True} if device == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **fused)
    losses = []
    for step in range(12):
        torch.manual_seed(step % 2)  # two fixed masks, so the loss can only fall by learning
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = maskgit_loss(model, ids.to(device), emb.to(device), mask.to(device), cond_drop_prob=0.0)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    result["bf16_losses"] = [round(x, 4) for x in losses]
    checks = {
        "forward (fp32) matches the CPU": result["forward_max_abs_diff"] < 1e-3,
        "greedy samples match the CPU (>= 95% of tokens)": result["greedy_sample_agreement"] >= 0.95,
        "tokenizer ids match the CPU (>= 99%)": result["tokenizer_id_agreement"] >= 0.99,
        "decoded pixels match the CPU": result["decode_max_abs_diff"] < 1e-3,
        "bf16 training: finite losses": all(map(lambda x: x == x and abs(x) < 1e4, losses)),
        "bf16 training: the loss falls": sum(losses[-2:]) < sum(losses[:2]),
    }
    result["checks"] = checks
    result["ok"] = all(checks.values())
    return result


def _launch(config: Path, out: Path, tokenizer: Path, *extra: str, timeout: float) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
           str(ROOT / "tests" / "distributed_run.py"), "maskgit", str(out), "--tokenizer", str(tokenizer), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"accelerate launch failed ({config.name}): {proc.stderr[-1500:]}")


def _straight_vs_resumed(config: Path, work: Path, timeout: float) -> dict[str, Any]:
    """4 steps straight, then 2 + resume to 4, under `config`; the main process's weights compared."""
    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT / "tests"))
    from distributed_run import TOKENIZER

    from phenaki.config import TokenizerConfig
    from phenaki.models.cvivit import CViViT

    torch.manual_seed(0)
    tokenizer = work / "tok"
    CViViT(TokenizerConfig(**TOKENIZER)).save_pretrained(tokenizer)
    started = time.perf_counter()
    each = timeout / 3
    _launch(config, work / "straight", tokenizer, timeout=each)
    _launch(config, work / "resumed", tokenizer, "--stop-at", "2", timeout=each)
    _launch(config, work / "resumed", tokenizer, "--resume", timeout=each)
    a = load_file(str(work / "straight" / "rank-0.safetensors"))
    b = load_file(str(work / "resumed" / "rank-0.safetensors"))
    report = json.loads((work / "resumed" / "rank-0.json").read_text())
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    return {"keys": len(a), "same_keys": a.keys() == b.keys(), "bit_exact": all(torch.equal(a[k], b[k]) for k in a),
            "max_abs_diff": diff, "step": report["step"], "processes": report["num_processes"],
            "sharded": report.get("sharded", False), "seconds": round(time.perf_counter() - started, 1),
            # CUDA's scatter-add backward (embeddings) is not bit-deterministic: a tolerance, not equality
            "ok": a.keys() == b.keys() and diff <= 1e-4 and report["step"] == 4}


def part_launch(device: str, out: Path, timeout: float = 95) -> dict[str, Any]:
    config = ROOT / "configs" / "accelerate" / "single_gpu.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        return _straight_vs_resumed(config, Path(tmp), timeout)


def part_fsdp(device: str, out: Path, timeout: float = 95) -> dict[str, Any]:
    """FSDP on all GPUs here (one is enough to run the sharded save/resume), or two CPU processes."""
    import torch
    import yaml

    base = yaml.safe_load((ROOT / "configs" / "accelerate" / "cpu_2proc_fsdp.yaml").read_text())
    if device == "cuda":
        base.update(num_processes=max(1, torch.cuda.device_count()), mixed_precision="bf16")
        base["fsdp_config"]["fsdp_cpu_ram_efficient_loading"] = True  # as fsdp_paper.yaml
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "fsdp.yaml"
        config.write_text(yaml.safe_dump(base))
        result = _straight_vs_resumed(config, Path(tmp), timeout)
    result["ok"] = result["ok"] and result["sharded"]
    return result


def part_bench(device: str, out: Path, timeout: float = 195) -> dict[str, Any]:
    """Training samples/s with MFU and peak memory, sampling tokens/s (bench/cases.py, one process each)."""
    sys.path.insert(0, str(ROOT))
    from bench.run import run_case

    cuda = device == "cuda"
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").is_file() else {}
    peak = env.get("bf16_peak_tflops")
    paper_depth = None if cuda else 1
    cases = [
        {"kind": "matmul", "impl": "ours", "config": "-", "batch": 1, "dtype": "bf16"},
        {"kind": "train", "impl": "ours", "config": "demo", "batch": 64 if cuda else 4, "dtype": "bf16"},
        {"kind": "train", "impl": "ours", "config": "paper", "batch": 4 if cuda else 1, "dtype": "bf16",
         "depth": paper_depth},
        {"kind": "sample", "impl": "ours", "config": "demo", "batch": 8 if cuda else 1, "dtype": "bf16"},
    ]
    if cuda:  # the paper tokenizer decoding 128x128 clips takes minutes on a CPU: GPU only
        cases.append({"kind": "sample", "impl": "ours", "config": "paper", "batch": 1, "dtype": "bf16"})
    deadline = time.monotonic() + timeout
    results = []
    for case in cases:
        left = deadline - time.monotonic()
        if left < 15:
            results.append({**case, "error": "skipped: the part's time was spent"})
            continue
        case.update(device=device, repeat=3 if cuda else 1, peer=None)
        res = run_case(case, int(min(left, 90)))
        if case["kind"] == "train" and "samples_per_s" in res:  # FLOPs as torch counts them (forward+backward)
            res["model_tflops"] = res["samples_per_s"] * res["samples_per_s_gflop"] / 1e3
            res["mfu"] = res["model_tflops"] / peak if peak else None
        results.append(res)
    return {"cases": results, "bf16_peak_tflops": peak, "ok": all("error" not in r for r in results)}


def part_data(device: str, out: Path, timeout: float = 35) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_data", "--clips", "128" if device == "cuda" else "32",
                           "--repeat", "2"], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-1500:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["ok"] = True
    return result


PART_FUNCS = {"env": part_env, "correctness": part_correctness, "launch": part_launch, "fsdp": part_fsdp,
              "bench": part_bench, "data": part_data}


# ----------------------------------------------------------------------------- report


def markdown(results: dict[str, Any]) -> str:
    env = results.get("env", {})
    lines = [f"GPU check on {env.get('card', '?')} (torch {env.get('torch', '?')}, CUDA {env.get('cuda', '?')}), "
             f"{results['meta']['date']}, {results['meta']['seconds']:.0f} s in all.", "",
             "| part | result | seconds |", "|---|---|---|"]
    for name, _ in PARTS:
        res = results.get(name, {})
        verdict = "skipped" if res.get("skipped") else ("error: " + res["error"][:120].replace("|", "/")
                                                        if "error" in res else ("ok" if res.get("ok") else "FAILED"))
        lines.append(f"| {name} | {verdict} | {res.get('part_seconds', '-')} |")
    corr = results.get("correctness", {})
    if "checks" in corr:
        lines += ["", "| correctness check | passed |", "|---|---|"]
        lines += [f"| {k} | {'yes' if v else 'NO'} |" for k, v in corr["checks"].items()]
        lines += ["", f"forward max |diff| {corr['forward_max_abs_diff']:.2e}, greedy sample agreement "
                  f"{corr['greedy_sample_agreement']:.1%}, tokenizer id agreement {corr['tokenizer_id_agreement']:.1%}"]
    for name in ("launch", "fsdp"):
        res = results.get(name, {})
        if "max_abs_diff" in res:
            lines.append(f"- {name}: {res['processes']} process(es), straight vs resumed max |diff| "
                         f"{res['max_abs_diff']:.2e} (bit-exact: {res['bit_exact']}), {res['seconds']} s")
    bench = results.get("bench", {})
    if bench.get("cases"):
        lines += ["", "| case | config | batch | result | MFU | peak memory |", "|---|---|---|---|---|---|"]
        for c in bench["cases"]:
            if "error" in c:
                value = "error: " + c["error"][:80].replace("|", "/")
            elif c["kind"] == "train":
                value = f"{c['samples_per_s']:.3g} samples/s ({c['model_tflops']:.3g} TFLOP/s)"
            elif c["kind"] == "sample":
                value = f"{c['tokens_per_s']:.0f} tokens/s ({c['clip_s']:.3g} s/clip)"
            else:
                value = f"{c.get('tflops', 0):.3g} TFLOP/s (1024^3 bf16 matmul)"
            mfu = f"{c['mfu']:.1%}" if c.get("mfu") else "-"
            mem = f"{c['peak_mb'] / 1024:.1f} GiB" if c.get("peak_mb") else "-"
            depth = f" ({c['depth']} layers)" if c.get("depth") else ""
            lines.append(f"| {c['kind']} | {c['config']}{depth} | {c['batch']} | {value} | {mfu} | {mem} |")
    data = results.get("data", {})
    if "sources" in data:
        lines += ["", "| shards from | decoded clips/s | raw samples/s |", "|---|---|---|"]
        lines += [f"| {k} | {v['decoded_clips_per_s']} | {v['raw_samples_per_s']} |"
                  for k, v in data["sources"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="smoke run on the CPU at small sizes")
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check")
    parser.add_argument("--budget", type=float, default=460, help="seconds for all parts together")
    parser.add_argument("--parts", nargs="+", default=[p for p, _ in PARTS], choices=[p for p, _ in PARTS])
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)  # internal: run one part
    parser.add_argument("--part-seconds", type=float, default=None, help=argparse.SUPPRESS)  # its time limit
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.cpu else "cuda"
    if args.part:  # one part, in its own process: its result as the last line of stdout
        try:
            fn = PART_FUNCS[args.part]
            if args.part_seconds and "timeout" in fn.__code__.co_varnames:  # finish inside the limit given
                result = fn(device, out, timeout=max(10.0, args.part_seconds - 5))
            else:
                result = fn(device, out)
        except Exception as exc:  # noqa: BLE001 - the orchestrator records the error and goes on
            result = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:1500]}", "ok": False}
        print(json.dumps(result))
        return 0
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run `bash bench/gpu_check.sh --cpu` for the smoke run", file=sys.stderr)
        return 2
    from datetime import date

    started = time.monotonic()
    results: dict[str, Any] = {"meta": {"date": str(date.today()), "device": device, "argv": sys.argv[1:]}}
    for name, limit in PARTS:
        left = args.budget - (time.monotonic() - started)
        if name not in args.parts or left < min(limit, 30):
            results[name] = {"skipped": True, "reason": "not asked" if name not in args.parts else "out of time"}
            continue
        t0 = time.monotonic()
        seconds = min(limit, left)
        cmd = [sys.executable, "-m", "bench.gpu_check", "--part", name, "--out", str(out),
               "--part-seconds", str(seconds)] + (["--cpu"] if args.cpu else [])
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds)
            lines = proc.stdout.strip().splitlines()
            res = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {
                "error": f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}", "ok": False}
        except subprocess.TimeoutExpired:
            res = {"error": f"timed out after {seconds:.0f} s", "ok": False}
        res["part_seconds"] = round(time.monotonic() - t0, 1)
        results[name] = res
        if name == "env":
            (out / "env.json").write_text(json.dumps(res))
        print(f"[gpu_check] {name}: {'ok' if res.get('ok', True) and 'error' not in res else 'FAILED'} "
              f"({res['part_seconds']} s)", file=sys.stderr, flush=True)
        (out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")  # kept after every part
    results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (out / "gpu_check.md").write_text(text)
    print(text)
    failed = [n for n, _ in PARTS if isinstance(results.get(n), dict) and not results[n].get("skipped")
              and ("error" in results[n] or results[n].get("ok") is False)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Tokenizer speed: encode / decode frames per second and peak memory, ours vs the peer.

    python bench/bench_tokenizer.py                         # ours, demo + paper configs
    python bench/bench_tokenizer.py --peer /path/to/site    # also lucidrains' phenaki-pytorch

The peer is imported from a folder where `pip install --no-deps --target DIR
phenaki-pytorch beartype` put it; its torchvision import (used only by its VGG loss,
which is off here) is satisfied by an empty stub module. Both tokenizers get random
weights and the same sizes (dim, depths, heads, patches, codebook, frames). Every
case runs in a fresh subprocess so its peak resident memory is its own.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import platform
import resource
import subprocess
import sys
import time
import types
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"demo": ROOT / "configs" / "shapes_demo.yaml", "paper": ROOT / "configs" / "phenaki_paper.yaml"}


def build(impl: str, config: str, peer: str | None):
    """The tokenizer under test and its encode/decode callables."""
    import torch

    sys.path.insert(0, str(ROOT))
    from phenaki.config import load_config

    tok = load_config(CONFIGS[config]).tokenizer
    torch.manual_seed(0)
    if impl == "ours":
        from phenaki.cvivit import CViViT

        model = CViViT(tok).eval()
        return tok, model.encode, model.decode
    stub = types.ModuleType("torchvision")
    stub.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    sys.modules.setdefault("torchvision", stub)
    # the package's __init__ pulls in its T5 wrapper; only the tokenizer's modules are needed
    package = types.ModuleType("phenaki_pytorch")
    package.__path__ = [str(Path(peer) / "phenaki_pytorch")]
    sys.modules["phenaki_pytorch"] = package
    sys.path.insert(0, peer)
    from phenaki_pytorch.cvivit import CViViT as PeerCViViT

    model = PeerCViViT(
        dim=tok.dim, codebook_size=tok.codebook_size, image_size=tok.image_size, patch_size=tok.patch_size,
        temporal_patch_size=tok.temporal_patch_size, spatial_depth=tok.spatial_depth,
        temporal_depth=tok.temporal_depth, dim_head=tok.dim_head, heads=tok.heads, use_vgg_and_gan=False,
        lookup_free_quantization=False,
    ).eval()

    @torch.no_grad()
    def encode(pixels):
        return model(pixels, return_only_codebook_ids=True)

    @torch.no_grad()
    def decode(ids):
        return model.decode_from_codebook_indices(ids)

    return tok, encode, decode


def run_case(impl: str, config: str, batch: int, dtype: str, repeat: int, peer: str | None) -> dict:
    """Time encode and decode (best of `repeat` after a warm-up) in this process."""
    import torch

    tok, encode, decode = build(impl, config, peer)
    pixels = torch.rand(batch, 3, tok.num_frames, *tok.image_size)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
    with torch.no_grad(), autocast:
        ids = encode(pixels)
        decode(ids)
        enc, dec = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            ids = encode(pixels)
            t1 = time.perf_counter()
            decode(ids)
            dec.append(time.perf_counter() - t1)
            enc.append(t1 - t0)
    frames = batch * tok.num_frames
    return {
        "impl": impl, "config": config, "batch": batch, "dtype": dtype,
        "encode_fps": frames / min(enc), "decode_fps": frames / min(dec),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["demo", "paper"], choices=sorted(CONFIGS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--peer", default=None, help="folder holding phenaki_pytorch (pip --target)")
    parser.add_argument("--json", default=None, help="write all results here")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one subprocess case
    args = parser.parse_args()
    if args.case:
        impl, config, batch, dtype = args.case.split(":")
        print(json.dumps(run_case(impl, config, int(batch), dtype, args.repeat, args.peer)))
        return
    impls = ["ours"] + (["peer"] if args.peer else [])
    results = []
    for config in args.configs:
        for batch in args.batches:
            for dtype in args.dtypes:
                for impl in impls:
                    cmd = [sys.executable, __file__, "--case", f"{impl}:{config}:{batch}:{dtype}",
                           "--repeat", str(args.repeat)] + (["--peer", args.peer] if args.peer else [])
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    if out.returncode != 0:
                        results.append({"impl": impl, "config": config, "batch": batch, "dtype": dtype,
                                        "error": out.stderr.strip().splitlines()[-1:]})
                    else:
                        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
                    print(json.dumps(results[-1]), flush=True)
    rows = ["| config | batch | dtype | ours enc f/s | ours dec f/s | ours RSS MB | peer enc f/s | peer dec f/s | "
            "peer RSS MB | enc ratio | dec ratio |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in (r for r in results if r["impl"] == "ours" and "error" not in r):
        p = next((q for q in results if q["impl"] == "peer" and "error" not in q and
                  (q["config"], q["batch"], q["dtype"]) == (r["config"], r["batch"], r["dtype"])), None)
        peer_cols = (f"{p['encode_fps']:.1f} | {p['decode_fps']:.1f} | {p['peak_rss_mb']:.0f} | "
                     f"{r['encode_fps'] / p['encode_fps']:.2f}x | {r['decode_fps'] / p['decode_fps']:.2f}x"
                     if p else "- | - | - | - | -")
        rows.append(f"| {r['config']} | {r['batch']} | {r['dtype']} | {r['encode_fps']:.1f} | "
                    f"{r['decode_fps']:.1f} | {r['peak_rss_mb']:.0f} | {peer_cols} |")
    table = "\n".join(rows)
    print(table)
    if args.json:
        meta = {"date": str(date.today()), "machine": platform.processor() or platform.machine(),
                "python": platform.python_version(), "command": " ".join(sys.argv)}
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results, "table": table}, indent=2))


if __name__ == "__main__":
    main()

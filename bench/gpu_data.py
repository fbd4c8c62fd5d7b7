"""Shard throughput: the same tar shards read from local disk and from an HTTP server on 127.0.0.1.

    python -m bench.gpu_data [--clips 256] [--per-shard 32] [--repeat 3]

Shapes clips (11 frames, 64x64) are packed into shards in a temporary folder and served by
Python's http.server; each source is read `--repeat` times, interleaved, and the best pass
is kept. Two figures per source: raw samples/s (tar members grouped into samples, no
decoding: what the storage path delivers) and decoded clips/s (`ShardDataset`, one process,
no DataLoader workers: what one training process gets). The last line of stdout is JSON.
"""

from __future__ import annotations

import argparse
import http.server
import json
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # one line per shard would drown the output
        pass


def measure(clips: int, per_shard: int, repeat: int) -> dict:
    import torch
    import webdataset as wds

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from phenaki.data.export import export_shapes
    from phenaki.data.shards import ShardDataset, write_shards

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = export_shapes(Path(tmp) / "data", clips, num_frames=11, seed=0, straddle_prob=0.0)
        shards = Path(tmp) / "shards"
        write_shards(data, shards, samples_per_shard=per_shard)
        count = len(list(shards.glob("*.tar")))
        size = sum(p.stat().st_size for p in shards.glob("*.tar"))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(shards)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/shard-{{000000..{count - 1:06d}}}.tar"
        sources = {"local disk": str(shards), "http 127.0.0.1": url}
        times: dict[str, dict[str, list[float]]] = {name: {"raw": [], "decoded": []} for name in sources}
        for _ in range(repeat):
            for name, spec in sources.items():
                urls = ShardDataset(spec, epochs=1).urls
                t0 = time.perf_counter()
                raw = sum(1 for _ in wds.WebDataset(urls, shardshuffle=False, empty_check=False))
                times[name]["raw"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                decoded = sum(1 for _ in ShardDataset(spec, num_frames=11, fps=8, size=64, shuffle_buffer=0, epochs=1))
                times[name]["decoded"].append(time.perf_counter() - t0)
                assert raw == decoded == clips, (raw, decoded, clips)
        server.shutdown()
        server.server_close()
    return {"clips": clips, "shards": count, "bytes": size, "repeat": repeat, "sources": {
        name: {"raw_samples_per_s": round(clips / min(t["raw"])), "raw_mb_per_s": round(size / min(t["raw"]) / 1e6, 1),
               "decoded_clips_per_s": round(clips / min(t["decoded"]), 1),
               "decoded_clips_per_s_all": [round(clips / x, 1) for x in t["decoded"]]}
        for name, t in times.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_data", description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--per-shard", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.clips, args.per_shard, args.repeat)))


if __name__ == "__main__":
    main()

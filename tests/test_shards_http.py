"""Shards from a server: `data.path` as an http:// URL pattern, served from 127.0.0.1.

One shard breaks off mid-download (the server sends half of it and hangs up): its
readable samples are kept, the rest is skipped and counted, and training goes on.
"""

import http.server
import threading
from functools import partial

import pytest

from phenaki.config import Config, from_dict
from phenaki.data import build_dataset
from phenaki.data.shards import ShardDataset, expand_urls, write_shards
from phenaki.data.video_text import DatasetError

TOKENIZER = {"dim": 32, "spatial_depth": 1, "temporal_depth": 1, "heads": 2, "dim_head": 16,
             "quantizer": "fsq", "fsq_levels": [5, 5, 5], "num_frames": 5}
BROKEN = "shard-000001.tar"


class ShardServer(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; BROKEN is announced whole but only its first half is sent."""

    def do_GET(self):  # noqa: N802 - the http.server name
        if not self.path.endswith(BROKEN):
            return super().do_GET()
        data = (self.directory_path / BROKEN).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Shapes clips written as 4 shards of 4, served over HTTP on 127.0.0.1."""
    from phenaki.data.export import export_shapes

    root = export_shapes(tmp_path_factory.mktemp("folder") / "data", 16, num_frames=5, seed=5, straddle_prob=0.0)
    shards = tmp_path_factory.mktemp("shards")
    write_shards(root, shards, samples_per_shard=4)
    handler = type("Handler", (ShardServer,), {"directory_path": shards})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(shards)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", shards
    server.shutdown()
    server.server_close()


def test_urls_are_expanded_not_listed(served):
    base, _ = served
    urls = expand_urls(f"{base}/shard-{{000000..000003}}.tar")
    assert urls == [f"{base}/shard-{n:06d}.tar" for n in range(4)]
    assert expand_urls("pipe:cat a.tar, pipe:cat b.tar") == ["pipe:cat a.tar", "pipe:cat b.tar"]
    with pytest.raises(DatasetError, match="nosuchscheme"):
        expand_urls("nosuchscheme://bucket/shard-000000.tar")


def test_stream_from_server_skips_and_counts_a_shard_cut_off(served):
    base, shards = served
    stream = ShardDataset(f"{base}/shard-{{000000..000003}}.tar", num_frames=5, fps=8, size=64, shuffle_buffer=0,
                          epochs=1)
    items = list(stream)
    local = list(ShardDataset(str(shards), num_frames=5, fps=8, size=64, shuffle_buffer=0, epochs=1))
    assert len(local) == 16
    assert stream.failed_shards == 1
    keys = {item["path"].rsplit("/", 1)[1] for item in items}
    whole = {item["path"].rsplit("/", 1)[1] for item in local if BROKEN not in item["path"]}
    assert whole <= keys and 12 <= len(items) < 16  # the other shards whole; part of the broken one
    assert all(BROKEN in item["path"] for item in items if item["path"].rsplit("/", 1)[1] not in whole)


def test_tokenizer_trains_from_a_server(served, tmp_path):
    from phenaki.training.tokenizer_trainer import train_tokenizer

    base, _ = served
    config = from_dict(Config, {
        "tokenizer": TOKENIZER,
        "data": {"kind": "shards", "path": f"{base}/shard-{{000000..000003}}.tar", "num_frames": 5,
                 "shuffle_buffer": 4},
        "train_tokenizer": {"output_dir": str(tmp_path / "tok"), "steps": 3, "batch_size": 2, "warmup_steps": 1,
                            "save_every": 0, "preview_every": 0, "log_every": 1},
    })
    assert isinstance(build_dataset(config.data), ShardDataset)
    final = train_tokenizer(config, progress=False)
    assert (final / "model.safetensors").is_file()

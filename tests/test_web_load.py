r"""The web app under load: real `gradio_client` clients against a `phenaki-web` server.

The server runs in its own process on 127.0.0.1 (the only address these tests contact)
with the tiny random pipeline, two generations at a time and a short queue. Each
simulated user has its own client, and so its own session, on a thread of this process.
Checked: every good request gets its own video (sidecar prompts and seed, frame count),
bad ones get their message and never a traceback, a full queue turns requests away with
a message, cancelled ones (waiting or running) leave no files and free their place,
retention keeps exactly the newest folders and touches nothing else, and the server's
memory stays flat. Every loop is bounded in count and in time.

The short version runs by default; `pytest -m slow` runs the long one (60 requests),
whose figures go to BENCHMARKS.md. For measurements outside pytest (any model):

    python tests/test_web_load.py --checkpoint phenaki/pretrained/phenaki-shapes --good 6 --bad 0 \
        --cancel 0 --no-flood --scenes 1 --steps 12 --concurrency 1 --threads 2
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"  # never any other address
REQUEST_DIR = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")
WRITTEN = re.compile(r"request (\d{8}-\d{6}-[0-9a-f]{8}): (\d+) scene\(s\), (\d+) frames, seed (\d+), "
                     r"(\d+) steps, ([0-9.]+) s")
SUMMARY = re.compile(r"^(\d+) scene\(s\), (\d+) frames, .* seed (\d+); request (\d{8}-\d{6}-[0-9a-f]{8})$")

# words both the tiny test pipeline and the demo model know
COLOURS, SHAPES, MOTIONS = ["red", "blue", "green"], ["ball", "box", "disc"], ["moves right", "rises", "falls"]
PROMPTS = [f"{article} {c} {s} {m}" for article in ("a", "the") for c in COLOURS for s in SHAPES for m in MOTIONS]
FIRST_FRAMES, SCENE_FRAMES = 11, 6  # both models: 11 frames, then 6 per later scene

LONG = "\n".join(PROMPTS[:4])  # 4 scenes at the most steps: a few seconds on the tiny model


# ----------------------------------------------------------------------------- the server


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    out: Path  # --output-dir
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextmanager
def web_server(checkpoint: Path, workdir: Path, *, concurrency: int, queue_size: int, keep: int,
               max_scenes: int = 4, max_steps: int = 64, threads: int = 1, start_timeout: float = 120):
    """`phenaki-web` on a free port of 127.0.0.1, its output, cache and log under `workdir`."""
    port = _free_port()
    out, log = workdir / "out", workdir / "server.log"
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(workdir / "gradio-cache")}
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from phenaki.cli import web_main; web_main()", "--checkpoint", str(checkpoint),
             "--host", HOST, "--port", str(port), "--output-dir", str(out), "--concurrency", str(concurrency),
             "--queue-size", str(queue_size), "--keep-outputs", str(keep), "--max-scenes", str(max_scenes),
             "--max-steps", str(max_steps)],
            stdout=sink, stderr=subprocess.STDOUT, text=True, env=env)
    server = Server(f"http://{HOST}:{port}/", proc, out, log)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"phenaki-web exited: {server.log_text()[-3000:]}")
            try:
                with socket.create_connection((HOST, port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"phenaki-web did not listen within {start_timeout:.0f} s") from None
                time.sleep(0.25)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


class RssSampler(threading.Thread):
    """The server's resident memory every `interval` s, until stopped (or `limit` s at most)."""

    def __init__(self, pid: int, interval: float = 0.2, limit: float = 900) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.limit = pid, interval, limit
        self.samples: list[tuple[float, int]] = []  # (monotonic time, bytes)
        self._stop_event = threading.Event()

    def rss(self) -> int | None:
        try:
            import psutil

            return psutil.Process(self.pid).memory_info().rss
        except ImportError:
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return None
            return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) * 1024
        except Exception:  # noqa: BLE001 - the process has ended
            return None

    def run(self) -> None:
        end = time.monotonic() + self.limit
        while not self._stop_event.is_set() and time.monotonic() < end:
            value = self.rss()
            if value is not None:
                self.samples.append((time.monotonic(), value))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


# ----------------------------------------------------------------------------- the clients


@dataclass
class Call:
    """One user's request and what came of it."""

    kind: str  # "good", "bad" or "cancel"
    story: Any
    seed: Any
    steps: Any
    expect: str = ""  # bad: a part of the message
    cancel_when: tuple[str, ...] = ()  # cancel: the job's statuses at which to cancel it
    prompts: list[str] = field(default_factory=list)
    frames: int = 0  # good: frames expected
    # outcome
    outcome: str = ""  # "ok", "error", "cancelled", "queue-full", "timeout"
    message: str = ""
    error_type: str = ""
    result: Any = None
    cancelled_while: str = ""  # the job's status when cancel() was called
    submitted: float = 0.0
    finished: float = 0.0

    @property
    def latency(self) -> float:
        return self.finished - self.submitted


def good_call(i: int, *, scenes: int | None = None, steps: int | None = None) -> Call:
    n = scenes or 1 + i % 3
    prompts = [PROMPTS[(i + 11 * j) % len(PROMPTS)] for j in range(n)]
    return Call("good", "\n".join(prompts), 1000 + i, steps or 2 + i % 3, prompts=prompts,
                frames=FIRST_FRAMES + SCENE_FRAMES * (n - 1))


def bad_call(i: int, max_scenes: int, max_steps: int) -> Call:
    kinds = [
        ("", 1, 2, "The story is empty"),
        ("\n".join(PROMPTS[: max_scenes + 1]), 1, 2, f"allows at most {max_scenes}"),
        ("a red ball rises [speed=3]", 1, 2, "Line 1: unknown scene setting 'speed'"),
        ("a red ball rises", 1, max_steps + 436, f"Steps must be a whole number from 1 to {max_steps}"),
        ("a red ball rises [steps=1000]", 1, 2, f"Scene 1: steps=1000 is above this server's limit of {max_steps}"),
        ("a red ball rises", "not a number", 2, "The seed must be a whole number"),
        ("xyzzy plugh", 1, 2, "The model knows none of the words of 'xyzzy plugh'"),  # found by the worker
    ]
    story, seed, steps, expect = kinds[i % len(kinds)]
    return Call("bad", story, seed, steps, expect=expect)


def cancel_call(i: int, max_steps: int) -> Call:
    """A long request, cancelled while it waits in the queue (even i) or once it runs (odd i)."""
    when = ("IN_QUEUE", "PROGRESS", "PROCESSING") if i % 2 == 0 else ("PROGRESS", "PROCESSING")
    return Call("cancel", LONG, 900_000 + i, max_steps, cancel_when=when)


def _client(server: Server, downloads: Path):
    from gradio_client import Client

    return Client(server.url, verbose=False, download_files=str(downloads), httpx_kwargs={"trust_env": False})


def _wait_status(job, wanted: set[str], timeout: float) -> str:
    """Poll until the job's status is one of `wanted` or it is done; returns the last status."""
    deadline = time.monotonic() + timeout
    code = job.status().code.name
    while code not in wanted and not job.done() and time.monotonic() < deadline:
        time.sleep(0.02)
        code = job.status().code.name
    return code


def run_call(server: Server, call: Call, downloads: Path, timeout: float = 120) -> Call:
    """One user: a fresh client (its own session), one request, the outcome recorded."""
    from gradio_client.utils import QueueError

    client = _client(server, downloads)
    try:
        call.submitted = time.monotonic()
        job = client.submit(call.story, call.seed, call.steps, 3.0, 0, 8.0, api_name="/generate")
        if call.kind == "cancel":
            call.cancelled_while = _wait_status(job, set(call.cancel_when), timeout)
            job.cancel()
            _wait_status(job, {"CANCELLED", "FINISHED"}, timeout)
            call.finished = time.monotonic()
            call.outcome = "cancelled" if job.status().code.name == "CANCELLED" else job.status().code.name
            return call
        try:
            call.result = job.result(timeout=timeout)
            call.outcome = "ok"
        except QueueError as exc:
            call.outcome, call.message, call.error_type = "queue-full", str(exc), type(exc).__name__
        except TimeoutError:
            call.outcome = "timeout"
        except Exception as exc:  # noqa: BLE001 - recorded and checked by the test
            call.outcome, call.message, call.error_type = "error", str(exc), type(exc).__name__
        call.finished = time.monotonic()
        return call
    finally:
        client.close()


def run_calls(server: Server, calls: list[Call], downloads: Path, users: int, timeout: float) -> None:
    """The calls from `users` threads at once, each call a new user; bounded by `timeout` in all."""
    with ThreadPoolExecutor(max_workers=users, thread_name_prefix="user") as pool:
        futures = [pool.submit(run_call, server, call, downloads) for call in calls]
        deadline = time.monotonic() + timeout
        for future in futures:
            future.result(timeout=max(1.0, deadline - time.monotonic()))


def flood(server: Server, downloads: Path, concurrency: int, queue_size: int, steps: int) -> list[Call]:
    """Fill the running places and the queue with long requests (4 scenes, `steps` steps: 1.5-3 s
    each on the tiny model at 64, long enough to submit them all before the first is done),
    check that one more is turned away, then cancel two waiting requests and one running; the
    rest must finish."""
    from gradio_client.utils import QueueError

    calls = [Call("good", LONG, 700 + i, steps, prompts=LONG.splitlines(),
                  frames=FIRST_FRAMES + SCENE_FRAMES * 3) for i in range(concurrency + queue_size)]
    clients = [_client(server, downloads) for _ in range(len(calls) + 1)]
    try:
        jobs = []
        for call, client in zip(calls, clients):
            call.submitted = time.monotonic()
            jobs.append(client.submit(call.story, call.seed, call.steps, 3.0, 0, 8.0, api_name="/generate"))
            _wait_status(jobs[-1], {"IN_QUEUE", "PROGRESS", "PROCESSING"}, 30)
        states = [job.status().code.name for job in jobs]
        assert states.count("IN_QUEUE") == queue_size, states  # all places taken, nothing finished yet
        extra = clients[-1].submit(LONG, 799, steps, 3.0, 0, 8.0, api_name="/generate")
        with pytest.raises(QueueError, match="Queue is full"):
            extra.result(timeout=30)
        waiting = [i for i, job in enumerate(jobs) if job.status().code.name == "IN_QUEUE"][-2:]
        running = [i for i, job in enumerate(jobs) if job.status().code.name in ("PROGRESS", "PROCESSING")][:1]
        assert len(waiting) == 2 and len(running) == 1, [job.status().code.name for job in jobs]
        for i in waiting + running:
            calls[i].kind = "cancel"
            calls[i].cancelled_while = jobs[i].status().code.name
            jobs[i].cancel()
        for call, job in zip(calls, jobs):
            if call.kind == "cancel":
                _wait_status(job, {"CANCELLED", "FINISHED"}, 60)
                call.outcome = "cancelled" if job.status().code.name == "CANCELLED" else job.status().code.name
            else:
                call.result = job.result(timeout=120)
                call.outcome = "ok"
            call.finished = time.monotonic()
        return calls
    finally:
        for client in clients:
            client.close()


# ----------------------------------------------------------------------------- the checks


def check_good(call: Call, model_name: str) -> str:
    """The call got its own video: returns the request folder's name it was given."""
    from phenaki.video import read_video

    assert call.outcome == "ok", (call.outcome, call.message)
    video, files, summary = call.result
    match = SUMMARY.match(summary)
    assert match, summary
    scenes, frames, seed, request = match.groups()
    assert (int(scenes), int(frames), int(seed)) == (len(call.prompts), call.frames, call.seed), summary
    assert sorted(Path(f).name for f in files) == ["story.gif", "story.json", "story.mp4"]
    sidecar = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())
    assert [s["prompt"] for s in sidecar["scenes"]] == call.prompts
    meta = sidecar["metadata"]
    assert (meta["settings"]["seed"], meta["settings"]["steps"]) == (call.seed, call.steps)
    assert meta["request"] == request and meta["source"] == "phenaki-web"
    assert meta["checkpoint"] == model_name  # a name, never a path of the serving machine
    assert sidecar["num_frames"] == call.frames
    pixels, fps = read_video(video)
    assert pixels.shape[0] == call.frames and fps == 8.0
    assert Path(video).read_bytes() == Path(next(f for f in files if f.endswith(".mp4"))).read_bytes()
    return request


def check_bad(call: Call) -> None:
    assert call.outcome == "error" and call.error_type == "AppError", (call.outcome, call.message)
    assert call.expect in call.message, (call.expect, call.message)
    assert "Traceback" not in call.message and "File \"" not in call.message


def prepare_output(out: Path) -> dict[Path, bytes]:
    """Files retention must never touch, and one old request folder it must remove."""
    outside = out.parent / "outside"
    outside.mkdir(exist_ok=True)
    keep = {
        out / "notes.txt": b"mine",
        out / "phenaki-web" / "README.txt": b"not a request folder",
        out / "phenaki-web" / "my-notes" / "keep.txt": b"not a request folder either",
        out / "phenaki-web" / "20000101-000000-0000f11e": b"a file named like a request folder",
        outside / "story.mp4": b"reached only through a link named like a request folder",
    }
    for path, data in keep.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (out / "phenaki-web" / "20000101-000000-00001111").symlink_to(outside, target_is_directory=True)
    old = out / "phenaki-web" / "20000101-000000-000000aa"  # a request folder of an earlier run: goes
    old.mkdir()
    (old / "story.mp4").write_bytes(b"old")
    return keep


def written(server: Server) -> list[str]:
    """The request folders the server wrote, in the order it finished them (its log)."""
    return [m.group(1) for m in WRITTEN.finditer(server.log_text())]


def check_retention(server: Server, keep: int, concurrency: int, received: list[str],
                    untouched: dict[Path, bytes]) -> None:
    root = server.out / "phenaki-web"
    for path, data in untouched.items():
        assert path.read_bytes() == data, path
    assert (root / "20000101-000000-00001111").is_symlink()
    made = written(server)
    assert sorted(made) == sorted(received), "the folders written and the folders received differ"
    old = "20000101-000000-000000aa"  # the earlier run's folder: the oldest, kept while there is room
    assert (root / old).exists() == (len(made) < keep), "the earlier run's folder was kept or removed wrongly"
    left = sorted(p.name for p in root.iterdir()
                  if REQUEST_DIR.match(p.name) and p.is_dir() and not p.is_symlink() and p.name != old)
    assert len(left) == min(keep, len(made)), (left, keep)
    for name in left:  # complete: nothing half written, nothing else
        assert sorted(p.name for p in (root / name).iterdir()) == ["story.gif", "story.json", "story.mp4"], name
    # the newest are kept: the folders the server finished last exist (one finished later may
    # have been made earlier, by at most concurrency - 1 places) ...
    for name in made[len(made) - max(0, keep - concurrency + 1):]:
        assert name in left, (name, left)
    # ... and every folder deleted was made no later than any kept one (names start with the time)
    gone = set(made) - set(left)
    assert not gone or all(name[:15] <= min(k[:15] for k in left) for name in gone)


def check_log(server: Server, good: list[Call], cancelled: list[Call]) -> None:
    log = server.log_text()
    assert "Traceback" not in log, log[-3000:]
    seeds = {int(m.group(4)) for m in WRITTEN.finditer(log)}
    assert seeds == {c.seed for c in good}, "a cancelled request was written, or a good one was not"
    stopped = log.count("a request was cancelled while it ran")
    assert sum(c.cancelled_while in ("PROGRESS", "PROCESSING") for c in cancelled) <= stopped <= len(cancelled)


def memory_is_flat(samples: list[tuple[float, int]], start: float, end: float, *, margin: float = 0.03,
                   floor: int = 32 << 20) -> tuple[bool, dict[str, float]]:
    """After warm-up (from `start`), the peak RSS over the second half of the run may exceed the
    peak over the first half by at most 3% of it or 32 MB, whichever is larger.

    Why that margin: the server holds about 700 MB (torch, Gradio, the codecs), and the peaks of
    the two halves measured 0-5 MB apart over the long run's 60 calls. Its stories show 2-5 MB
    of frames each (256x256), so a request that kept them would add about 70 MB over the second
    half's 21 good requests, and a leak of 1.5 MB a request breaks the bound there."""
    middle = (start + end) / 2
    first = [rss for t, rss in samples if start <= t < middle]
    second = [rss for t, rss in samples if middle <= t <= end]
    assert first and second, "too few memory samples"
    figures = {"first_half_peak_mb": max(first) / 2**20, "second_half_peak_mb": max(second) / 2**20,
               "peak_mb": max(rss for _, rss in samples) / 2**20}
    return max(second) <= max(first) + max(floor, margin * max(first)), figures


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ----------------------------------------------------------------------------- the load test


def mixed_calls(good: int, bad: int, cancel: int, *, scenes: int | None, steps: int | None, max_scenes: int,
                max_steps: int) -> list[Call]:
    """`good`, `bad` and `cancel` calls, each kind spread evenly over the run."""
    kinds = [(good_call(i, scenes=scenes, steps=steps), (i + 0.5) / good) for i in range(good)]
    kinds += [(bad_call(i, max_scenes, max_steps), (i + 0.25) / bad) for i in range(bad)]
    kinds += [(cancel_call(i, max_steps), (i + 0.75) / cancel) for i in range(cancel)]
    return [call for call, _ in sorted(kinds, key=lambda pair: pair[1])]


def load_test(checkpoint: Path, workdir: Path, *, good: int, bad: int = 0, cancel: int = 0, concurrency: int = 2,
              queue_size: int = 4, keep: int = 5, users: int | None = None, scenes: int | None = None,
              steps: int | None = None, max_steps: int = 64, with_flood: bool = True, threads: int = 1,
              timeout: float = 600) -> dict[str, Any]:
    """Start a server; with `with_flood`, fill its queue first (see `flood`); then send the mixed
    calls from `users` threads; check everything and return the figures.

    `users` defaults to the queue's size: Gradio counts a request as waiting until its worker
    loop (which polls) has started it, so a burst of concurrency + queue_size requests, or a
    client that sends its next request the moment its last one is answered, can find the queue
    full although every place would be taken. The flood checks a full queue on purpose."""
    max_scenes = 4
    users = users or queue_size
    downloads = workdir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    mixed = mixed_calls(good, bad, cancel, scenes=scenes, steps=steps, max_scenes=max_scenes, max_steps=max_steps)
    with web_server(checkpoint, workdir, concurrency=concurrency, queue_size=queue_size, keep=keep,
                    max_scenes=max_scenes, max_steps=max_steps, threads=threads) as server:
        untouched = prepare_output(server.out)
        sampler = RssSampler(server.proc.pid)
        sampler.start()
        try:
            began = time.monotonic()
            flooded = flood(server, downloads, concurrency, queue_size, max_steps) if with_flood else []
            mixed_began, server_cpu, client_cpu = time.monotonic(), _cpu_seconds(server.proc.pid), time.process_time()
            run_calls(server, mixed, downloads, users, timeout)
            ended = time.monotonic()
            server_cpu, client_cpu = _cpu_seconds(server.proc.pid) - server_cpu, time.process_time() - client_cpu
            time.sleep(0.5)  # the server's last log lines
        finally:
            sampler.stop()
        everything = flooded + mixed
        goods = [c for c in everything if c.kind == "good"]
        cancelled = [c for c in everything if c.kind == "cancel"]
        try:
            assert server.proc.poll() is None, "the server stopped"
            received = [check_good(c, checkpoint.name) for c in goods]
            assert len(set(received)) == len(received), "two clients received the same request folder"
            for call in everything:
                if call.kind == "bad":
                    check_bad(call)
            assert all(c.outcome == "cancelled" for c in cancelled), [(c.outcome, c.cancelled_while)
                                                                       for c in cancelled]
            check_retention(server, keep, concurrency, received, untouched)
            check_log(server, goods, cancelled)
        except AssertionError as exc:  # with the server's side of the story
            raise AssertionError(f"{exc}\n--- the end of the server's log ---\n{server.log_text()[-4000:]}") from None
        # memory: the warm-up is the flood, or else the first fifth of the run
        warm = mixed_began if with_flood else began + (ended - began) / 5
        flat, memory = memory_is_flat(sampler.samples, warm, ended)
        mixed_good = [c for c in mixed if c.kind == "good"]
        latencies = [c.latency for c in mixed_good]
        seeds = {c.seed for c in mixed_good}
        work = [float(m.group(6)) for m in WRITTEN.finditer(server.log_text()) if int(m.group(4)) in seeds]
        figures = {
            "calls": len(everything) + with_flood, "good": len(goods), "bad": sum(c.kind == "bad" for c in mixed),
            "queue_full": int(with_flood), "cancelled": len(cancelled),
            "cancelled_running": sum(c.cancelled_while in ("PROGRESS", "PROCESSING") for c in cancelled),
            "mixed_calls": len(mixed), "mixed_good": len(mixed_good), "mixed_seconds": ended - mixed_began,
            "total_seconds": ended - began, "good_per_minute": 60 * len(mixed_good) / (ended - mixed_began),
            "latency_p50": percentile(latencies, 0.5), "latency_p90": percentile(latencies, 0.9),
            "latency_max": max(latencies), "server_work_p50": percentile(work, 0.5),
            "server_work_max": max(work), "server_cpu_seconds": server_cpu, "client_cpu_seconds": client_cpu,
            "memory_flat": flat, **memory, "samples": len(sampler.samples),
            "concurrency": concurrency, "queue_size": queue_size, "keep": keep, "users": users,
            "load_average_1min_at_end": os.getloadavg()[0],  # other work on the machine shows here
        }
        return figures


def test_web_app_under_a_short_load(tiny_pipeline_dir, tmp_path):
    """The flood (6 long requests, 1 turned away, 3 cancelled), then 13 mixed calls: 5 good,
    one bad request of each kind, 1 cancelled."""
    figures = load_test(Path(tiny_pipeline_dir), tmp_path, good=5, bad=7, cancel=1, timeout=120)
    assert (figures["good"], figures["cancelled"]) == (3 + 5, 3 + 1)
    assert figures["memory_flat"], figures


@pytest.mark.slow
def test_web_app_under_a_long_load(tiny_pipeline_dir, tmp_path):
    """The flood, then 60 mixed calls: 42 good, 12 bad, 6 cancelled (3 waiting, 3 running)."""
    figures = load_test(Path(tiny_pipeline_dir), tmp_path, good=42, bad=12, cancel=6, timeout=600)
    print(json.dumps(figures, indent=1))
    assert (figures["good"], figures["cancelled"]) == (3 + 42, 3 + 6)
    assert figures["cancelled_running"] >= 1 + 3, figures  # the flood's, and the mixed run's odd ones
    assert figures["memory_flat"], figures


if __name__ == "__main__":  # measurements: python tests/test_web_load.py --checkpoint DIR ...
    import argparse
    import shutil
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--good", type=int, default=42)
    parser.add_argument("--bad", type=int, default=12)
    parser.add_argument("--cancel", type=int, default=6)
    parser.add_argument("--no-flood", action="store_true", help="skip the queue-filling phase")
    parser.add_argument("--scenes", type=int, default=None, help="scenes per good story (default: 1, 2, 3 in turn)")
    parser.add_argument("--steps", type=int, default=None, help="steps of good requests (default: 2, 3, 4 in turn)")
    parser.add_argument("--max-steps", type=int, default=64, help="the server's limit; also the long requests' steps")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--queue-size", type=int, default=4)
    parser.add_argument("--keep", type=int, default=5)
    parser.add_argument("--users", type=int, default=None, help="clients at once (default: the queue's size)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the server")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="phenaki-web-load-"))  # kept when a check fails
    result = load_test(args.checkpoint.resolve(), work, good=args.good, bad=args.bad, cancel=args.cancel,
                       concurrency=args.concurrency, queue_size=args.queue_size, keep=args.keep,
                       users=args.users, scenes=args.scenes, steps=args.steps, max_steps=args.max_steps,
                       threads=args.threads, with_flood=not args.no_flood, timeout=1800)
    shutil.rmtree(work)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")

"""The web demo: request validation, output folders, and the page in a real browser.

The browser tests drive Debian's chromium through Playwright (the system browser,
nothing downloaded) against a `phenaki-web` server running a tiny random model.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phenaki.video import read_video
from phenaki.web import (
    Cancelled,
    OutputStore,
    RequestError,
    StoryService,
    WebLimits,
    parse_request,
)

ARTEFACTS = Path(__file__).resolve().parent / "artefacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

SHAPE = dict(model_fps=8.0, first_frames=11, scene_frames=6, temporal_patch=2)


def ask(story, limits=WebLimits(), seed=0, steps=12, guidance=3.0, scene_seconds=None, fps=8.0):
    return parse_request(story, seed, steps, guidance, scene_seconds, fps, limits, **SHAPE)


def test_a_good_story_parses_with_its_settings():
    request = ask("a red ball moves right\n# a comment\n\nthe blue ball rises [frames=8]", seed=3)
    assert [s.prompt for s in request.scenes] == ["a red ball moves right", "the blue ball rises"]
    assert request.scenes[1].settings == {"frames": 8} and request.seed == 3


@pytest.mark.parametrize("story, kwargs, message", [
    ("", {}, "The story is empty"),
    ("   \n  ", {}, "The story is empty"),
    ("# only a comment", {}, "no scenes"),
    ("a red ball " + "x" * 300, {}, "Line 1 is 311 characters long; the limit is 200"),
    ("\n".join(["a red ball rises"] * 9), {}, "9 scenes; this server allows at most 8"),
    ("a red ball rises\nthe ball falls [frames=200]", {}, "about 211 frames; this server allows at most 128"),
    ("a red ball rises [speed=3]", {}, "Line 1: unknown scene setting 'speed'"),
    ("a red ball rises", {"seed": -1}, "seed must be a whole number"),
    ("a red ball rises", {"seed": 1.5}, "seed must be a whole number"),
    ("a red ball rises", {"steps": 0}, "Steps must be a whole number from 1 to 64"),
    ("a red ball rises", {"fps": 0}, "Frames per second"),
    ("a red ball rises [steps=1000]", {}, "Scene 1: steps=1000 is above this server's limit of 64"),
    ("a red ball rises [seconds=inf]", {}, "Scene 1: seconds must be a finite number"),
    ("a red ball rises", {"scene_seconds": float("nan")}, "Scene length must be a positive number"),
    # what an API client may send instead of numbers: each field named, never a bare error
    ("a red ball rises", {"steps": None}, "Steps must be a whole number"),
    ("a red ball rises", {"steps": "many"}, "Steps must be a whole number"),
    ("a red ball rises", {"seed": "x"}, "seed must be a whole number"),
    ("a red ball rises", {"seed": True}, "seed must be a whole number"),
    ("a red ball rises", {"guidance": None}, "Guidance must be between 0 and 50"),
    ("a red ball rises", {"fps": "fast"}, "Frames per second"),
    ("a red ball rises", {"scene_seconds": "long"}, "Scene length must be a positive number"),
    (["a red ball rises"], {}, "The story must be text"),
])
def test_bad_requests_name_the_problem(story, kwargs, message):
    with pytest.raises(RequestError, match=message.replace("(", r"\(")):
        ask(story, **kwargs)


def test_text_settings_on_a_line_are_text():
    request = ask('a red ball rises [schedule=linear]\nthe ball falls [steps=4]')
    assert request.scenes[0].settings == {"schedule": "linear"}


def test_numbers_may_arrive_as_text():
    request = ask("a red ball rises", seed="7", steps="12", guidance="2.5", fps="10")
    assert (request.seed, request.steps, request.guidance, request.fps) == (7, 12, 2.5, 10.0)


def test_limits_are_configurable():
    with pytest.raises(RequestError, match="at most 2"):
        ask("a\nb\nc", limits=WebLimits(max_scenes=2))
    assert len(ask("a\nb\nc", limits=WebLimits(max_scenes=3)).scenes) == 3


def test_output_folders_are_per_request_and_old_ones_go(tmp_path):
    (tmp_path / "out" / "phenaki-web" / "my-notes").mkdir(parents=True)  # not a request folder: kept
    store = OutputStore(tmp_path / "out", keep=3)
    folders = []
    for _ in range(5):
        folders.append(store.new())
        (folders[-1] / "story.mp4").write_bytes(b"x")
        time.sleep(0.01)
    assert len(set(folders)) == 5
    assert sorted(p.name for p in store.root.iterdir()) == sorted([f.name for f in folders[-3:]] + ["my-notes"])
    assert store.root == tmp_path / "out" / "phenaki-web"


def test_the_oldest_folder_is_the_first_made_not_the_first_written(tmp_path):
    # writing into a folder touches it: the age of a folder is the order of creation
    store = OutputStore(tmp_path, keep=2)
    a, b = store.new(), store.new()
    time.sleep(0.01)
    (a / "story.mp4").write_bytes(b"a, written after b was made")
    c = store.new()
    assert [p.name for p in store.folders()] == [b.name, c.name]


def test_folders_found_at_start_are_older_and_go_first(tmp_path):
    root = tmp_path / "phenaki-web"
    for name in ["20260101-000000-000000aa", "20250101-000000-000000bb"]:
        (root / name).mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "story.mp4").write_bytes(b"x")
    (root / "20240101-000000-000000cc").symlink_to(outside)  # a link named like a request folder: kept
    (root / "20230101-000000-000000dd").write_text("a file named like one: kept")
    store = OutputStore(tmp_path, keep=2)
    made = store.new()
    assert [p.name for p in store.folders()] == ["20260101-000000-000000aa", made.name]
    assert (outside / "story.mp4").exists() and (root / "20240101-000000-000000cc").is_symlink()
    assert (root / "20230101-000000-000000dd").is_file()


def test_a_folder_being_written_is_never_pruned(tmp_path):
    store = OutputStore(tmp_path, keep=1)
    with store.reserve() as first:
        with store.reserve() as second:  # two requests writing at once, with keep=1
            (first / "story.mp4").write_bytes(b"1")
            third = store.new()
            assert first.exists() and second.exists() and third.exists()
        assert first.exists() and not second.exists()  # second: written, released, older than third
    assert store.folders() == [third]


def test_a_failed_or_cancelled_write_leaves_no_folder(tmp_path):
    store = OutputStore(tmp_path, keep=4)
    with pytest.raises(Cancelled), store.reserve() as folder:
        (folder / "story.mp4").write_bytes(b"half")
        raise Cancelled("the request was cancelled")
    assert store.folders() == [] and not folder.exists()


@pytest.fixture(scope="module")
def service(tiny_pipeline_dir, tmp_path_factory):
    from phenaki.pipeline import Phenaki

    pipe = Phenaki.from_pretrained(tiny_pipeline_dir, device="cpu", dtype="float32")
    out = tmp_path_factory.mktemp("service")
    return StoryService(pipe, WebLimits(keep_outputs=8), OutputStore(out, keep=8))


def test_the_sidecar_names_the_model_and_the_request_never_a_path(service, one_thread, tiny_pipeline_dir):
    request = service.request("a red ball moves right\nthe blue box rises", 4, 2, 3.0, 0, 8.0)
    files = service.generate(request)
    meta = json.loads(files["json"].read_text())["metadata"]
    assert meta["checkpoint"] == Path(tiny_pipeline_dir).name == service.model_name
    assert meta["request"] == files["request"] == files["folder"].name
    assert str(Path(tiny_pipeline_dir).parent) not in files["json"].read_text()
    assert sorted(p.name for p in files["folder"].iterdir()) == ["story.gif", "story.json", "story.mp4"]
    assert files["frames"] == 17 and read_video(files["mp4"])[0].shape[0] == 17


def test_a_cancelled_request_stops_and_leaves_nothing(service, one_thread):
    import threading

    before = service.outputs.folders()
    request = service.request("a red ball moves right\nthe blue box rises", 5, 8, 3.0, 0, 8.0)
    cancel = threading.Event()
    steps = []

    def progress(fraction, text):  # the page's progress; the user cancels after the third step
        steps.append(fraction)
        if len(steps) == 3:
            cancel.set()

    with pytest.raises(Cancelled):
        service.generate(request, progress, cancel=cancel)
    assert len(steps) == 3  # stopped at the next step
    with pytest.raises(Cancelled):
        service.generate(request, cancel=cancel)  # cancelled before it started: nothing starts

    def hand_over(files):  # the files written, then handing them over fails: the folder goes
        raise OSError("the cache's disk is full")

    with pytest.raises(OSError):
        service.generate(request, hand_over=hand_over)
    assert service.outputs.folders() == before


def test_a_prompt_the_model_cannot_read_is_refused_with_a_message(service, one_thread):
    request = service.request("xyzzy plugh", 0, 2, 3.0, 0, 8.0)  # the words are checked by the model
    with pytest.raises(RequestError, match="The model knows none of the words of 'xyzzy plugh'"):
        service.generate(request)


# ----------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def tiny_model(tiny_pipeline_dir):
    return tiny_pipeline_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    port = _free_port()
    out = tmp_path_factory.mktemp("web-out")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from phenaki.cli import web_main; web_main()", "--checkpoint", str(tiny_model), "--port", str(port),
         "--output-dir", str(out), "--max-scenes", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"phenaki-web exited: {proc.stdout.read()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise AssertionError("phenaki-web did not start listening within 120 s")
    yield url, out
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def page():
    if CHROMIUM is None:
        pytest.fail("the browser tests need Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
        yield context.new_page()
        browser.close()


def _set_story(page, text: str) -> None:
    box = page.locator("#story textarea")
    box.fill(text)


def test_browser_generates_a_two_scene_story(server, page, tmp_path, tiny_model):
    url, out = server
    page.goto(url, wait_until="networkidle")
    _set_story(page, "a red ball moves right\nthe blue box rises")
    page.locator("#generate").click()
    page.wait_for_selector("#video video", timeout=120_000)
    page.wait_for_function("document.querySelector('#video video').readyState >= 1", timeout=60_000)
    duration = page.evaluate("document.querySelector('#video video').duration")
    ARTEFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / "web-demo.png"), full_page=True)
    assert "2 scene(s), 17 frames" in page.locator("#summary").inner_text()
    # the page names the model by its folder, never by a path of the serving machine
    assert f"Model: {Path(tiny_model).name}" in page.locator("body").inner_text()
    assert str(Path(tiny_model).parent) not in page.content()
    # the files offered for download are the ones generated: 11 + 6 frames at 8 fps
    links = page.locator("#files a[href]")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert sorted(h.rsplit("/", 1)[-1] for h in hrefs) == ["story.gif", "story.json", "story.mp4"]
    with page.expect_download() as info:
        page.locator("#files a[href$='story.mp4']").click()
    path = tmp_path / "story.mp4"
    info.value.save_as(path)
    frames, fps = read_video(path)
    assert frames.shape[0] == 17 and fps == 8.0
    assert frames.shape[1:3] == (256, 256)  # 64x64 shown at 4x
    assert abs(duration - 17 / 8) < 0.2
    sidecars = list(Path(out).glob("phenaki-web/*/story.json"))
    assert len(sidecars) == 1
    meta = json.loads(sidecars[0].read_text())
    assert [s["prompt"] for s in meta["scenes"]] == ["a red ball moves right", "the blue box rises"]


def test_browser_bad_input_gets_a_message_and_the_server_keeps_serving(server, page):
    url, _ = server
    page.goto(url, wait_until="networkidle")
    _set_story(page, "")
    page.locator("#generate").click()
    page.wait_for_selector("text=The story is empty", timeout=30_000)
    _set_story(page, "\n".join(["a red ball rises"] * 5))
    page.locator("#generate").click()
    page.wait_for_selector("text=allows at most 4", timeout=30_000)
    assert "Traceback" not in page.content()
    # still serving: a good story after the bad ones works
    _set_story(page, "a green disc falls")
    page.locator("#generate").click()
    page.wait_for_function(
        "document.querySelector('#summary') && document.querySelector('#summary').innerText.includes('1 scene(s)')",
        timeout=120_000)


def test_browser_negative_prompt_unknown_words_and_cancel(server, page):
    url, out = server
    page.goto(url, wait_until="networkidle")
    # a negative prompt reaches the generation, and words the model does not know are named in the page
    _set_story(page, "a red ball moves right\nthe blue box zooms")
    page.locator("#negative textarea").fill("a green disc falls")
    before = set(Path(out).glob("phenaki-web/*/story.json"))
    page.locator("#generate").click()
    page.wait_for_selector("text=left out of 'the blue box zooms': zooms", timeout=60_000)
    page.wait_for_function(
        "document.querySelector('#summary') && document.querySelector('#summary').innerText.includes('2 scene(s)')",
        timeout=120_000)
    sidecar = (set(Path(out).glob("phenaki-web/*/story.json")) - before).pop()
    assert json.loads(sidecar.read_text())["metadata"]["settings"]["negative_prompt"] == "a green disc falls"
    # Cancel stops a long story mid-way: no new folder, and the next request is served at once
    page.locator("#negative textarea").fill("")
    _set_story(page, "\n".join(["a red ball rises [frames=30 steps=64]"] * 4))
    before = set(Path(out).glob("phenaki-web/*"))
    page.locator("#generate").click()
    time.sleep(1.5)
    page.locator("#cancel").click()
    _set_story(page, "a green disc falls")
    page.locator("#generate").click()
    page.wait_for_function(
        "document.querySelector('#summary') && document.querySelector('#summary').innerText.includes('1 scene(s)')",
        timeout=60_000)
    made = set(Path(out).glob("phenaki-web/*")) - before
    assert len(made) == 1
    assert json.loads((made.pop() / "story.json").read_text())["metadata"]["prompts"] == ["a green disc falls"]

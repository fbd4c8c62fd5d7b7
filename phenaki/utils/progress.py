"""Progress of a story: a tqdm bar for people, a callback for programs, or nothing (the default)."""

from __future__ import annotations

from typing import Any, Callable

Reporter = Callable[..., None]  # (steps done, scene number, close=False)


def progress_reporter(progress: bool | Callable[[int, int, int, int], Any], total: int, scenes: int) -> Reporter:
    """A reporter of (steps done, current scene): a tqdm bar on stderr (progress=True), the user's
    callback `(done, total, scene, scenes)`, or nothing; `close=True` ends the bar."""
    if callable(progress):
        def call(done: int, scene: int, close: bool = False) -> None:
            if not close:
                progress(done, total, scene, scenes)
        return call
    if not progress:
        return lambda *args, **kwargs: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc="generate", unit="step", dynamic_ncols=True)

    def update(done: int, scene: int, close: bool = False) -> None:
        bar.set_description(f"scene {scene}/{scenes}")
        bar.update(done - bar.n)
        if close:
            bar.close()

    return update

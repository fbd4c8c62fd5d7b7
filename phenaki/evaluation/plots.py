"""Pictures of runs and results: a training run's curves from its `metrics.jsonl`, and a judged
Shapes table (`phenaki-eval shapes --json`) per criterion, seen against held-out. Written as PNG
with matplotlib (the `plot` extra), drawn off-screen and saved atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..utils.fileio import atomic_file

# the curves worth a panel of their own, in this order, when a run logged them
RUN_PANELS = (
    ("loss", ("loss",)),
    ("reconstruction", ("psnr", "val_psnr")),
    ("codebook", ("usage", "val_usage", "perplexity")),
    ("learning rate", ("lr",)),
)


class PlotError(ValueError):
    """The input cannot be plotted (no metrics, not a judged result, matplotlib missing)."""


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError('plots need matplotlib: pip install "phenaki[plot]" (or pip install matplotlib)') from None
    return plt


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The records of a run's `metrics.jsonl` (a run folder or the file); a damaged line is named."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise PlotError(f"{path}: no such metrics file (a training run writes one in its output folder)")
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # a run killed mid-write leaves at most a partial last line
            raise PlotError(f"{path}:{number}: not a JSON record") from None
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    if not records:
        raise PlotError(f"{path}: no metrics recorded yet")
    return records


def plot_run(metrics: str | Path, out: str | Path) -> Path:
    """One panel per kind of curve the run logged (loss, PSNR, codebook use, learning rate, then the
    rest of its loss terms together), against the training step."""
    records = read_metrics(metrics)
    keys = sorted({k for r in records for k, v in r.items() if k != "step" and isinstance(v, (int, float))})
    panels = [(title, [k for k in names if k in keys]) for title, names in RUN_PANELS]
    panels = [(title, names) for title, names in panels if names]
    shown = {k for _, names in panels for k in names}
    rest = [k for k in keys if k not in shown and k != "sec_per_step"]
    if rest:
        panels.append(("other terms", rest))
    plt = _pyplot()
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 3.2 * rows), squeeze=False)
    for ax, (title, names) in zip(axes.flat, panels):
        for name in names:
            points = [(r["step"], r[name]) for r in records if isinstance(r.get(name), (int, float))]
            ax.plot([p[0] for p in points], [p[1] for p in points], label=name, linewidth=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{Path(metrics)}: {len(records)} records, last step {records[-1]['step']}", fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, out)


def plot_judged(result: dict[str, Any], out: str | Path) -> Path:
    """A judged Shapes result as bars: every criterion's share of scenes, seen against held-out, with the
    fully-correct interval; and, when the result breaks scenes down by verb, one bar per verb."""
    try:
        summary = result["summary"]
        groups = [g for g in ("seen", "heldout", "all") if summary.get(g, {}).get("stories")]
        criteria = [k for k, v in summary["all"].items() if isinstance(v, (int, float)) and 0 <= v <= 1
                    and k not in ("story_correct",)]
    except (KeyError, TypeError, AttributeError):
        raise PlotError("not a judged result (write one with phenaki-eval shapes --json)") from None
    verbs = result.get("per_verb") or _per_motion(result)
    plt = _pyplot()
    panels = 2 if verbs else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels + 2, 4.2), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / max(1, len(groups))
    for i, group in enumerate(groups):
        values = [100 * float(summary[group].get(c) or 0) for c in criteria]
        ax.bar([x + i * width for x in range(len(criteria))], values, width, label=group)
    ax.set_xticks([x + width * (len(groups) - 1) / 2 for x in range(len(criteria))])
    ax.set_xticklabels(criteria, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of scenes")
    interval = summary["all"].get("correct_ci95")
    title = f"{result.get('stories', '?')} stories"
    if interval:
        title += f"; fully correct 95% interval {100 * interval[0]:.0f}-{100 * interval[1]:.0f}%"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if verbs:
        ax = axes[0][1]
        names = sorted(verbs)
        ax.bar(range(len(names)), [100 * float(verbs[n].get("correct", 0)) for n in names])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_title("fully correct, per verb", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, plt, out)


def _per_motion(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Fully-correct share of scenes per motion asked for, from a result's scene verdicts."""
    counts: dict[str, list[int]] = {}
    for story in result.get("stories_detail", []):
        for scene in story.get("scenes", []):
            verb = scene.get("expected_direction")
            if verb:
                counts.setdefault(verb, [0, 0])
                counts[verb][0] += bool(scene.get("correct"))
                counts[verb][1] += 1
    return {verb: {"correct": ok / n} for verb, (ok, n) in counts.items() if n}


def _save(fig: Any, plt: Any, out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".png":
        plt.close(fig)
        raise PlotError(f"{out}: plots are written as .png")
    with atomic_file(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out

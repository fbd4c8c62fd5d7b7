"""Paired comparison of two `phenaki-eval shapes` results on the same stories.

Two runs with the same ``--stories`` and ``--seed`` judge the same prompts generated
with the same seeds, so their difference can be measured story by story. Resampling
the stories once for both runs (a paired bootstrap) cancels the spread that comes from
which stories were drawn, which dominates the interval of each run alone: a change of a
few points that both single-run intervals swallow can still be told from zero here.
The story, not the scene, is the unit resampled, as in `judge.bootstrap_interval`.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from .judge import CRITERIA, percentile_interval

__all__ = ["ComparisonError", "compare_results", "format_comparison", "paired_difference", "story_verdicts"]

GROUPS = ("seen", "heldout", "all")


class ComparisonError(ValueError):
    """The two results cannot be compared (different stories, or not evaluation results)."""


def _criteria(result: dict[str, Any]) -> list[str]:
    """The criteria a result's scenes carry: its own ``criteria`` list (v2 results), else v1's."""
    named = result.get("criteria") if isinstance(result, dict) else None
    return list(named) if isinstance(named, list) and named else list(CRITERIA)


def story_verdicts(result: dict[str, Any], criterion: str, group: str = "all") -> list[list[bool | None]]:
    """Per story, the `criterion` verdict of each scene (None where it does not apply)."""
    criteria = _criteria(result)
    if criterion not in criteria:
        raise ValueError(f"unknown criterion {criterion!r}; expected one of {', '.join(criteria)}")
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; expected one of {', '.join(GROUPS)}")
    wanted = {"all": None, "seen": "train", "heldout": "heldout"}[group]
    return [[scene[criterion] for scene in story["scenes"]]
            for story in _stories(result) if wanted is None or story["split"] == wanted]


def paired_difference(a: Sequence[Sequence[bool | None]], b: Sequence[Sequence[bool | None]],
                      rounds: int = 2000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float, float] | None:
    """Rate of `b` minus rate of `a` over the scenes that count in both, with its interval.

    Story i of `a` and story i of `b` are drawn together in every bootstrap round. Scenes
    whose verdict is None in either run (continuity of a first scene) do not count.
    None when no scene counts.
    """
    if len(a) != len(b):
        raise ValueError(f"paired stories needed: {len(a)} against {len(b)}")
    pairs = []  # per story: (correct in a, correct in b, scenes that count)
    for i, (sa, sb) in enumerate(zip(a, b)):
        if len(sa) != len(sb):
            raise ValueError(f"story {i}: {len(sa)} scenes against {len(sb)}")
        kept = [(x, y) for x, y in zip(sa, sb) if x is not None and y is not None]
        pairs.append((sum(bool(x) for x, _ in kept), sum(bool(y) for _, y in kept), len(kept)))
    total = sum(n for _, _, n in pairs)
    if total == 0:
        return None
    diff = (sum(y for _, y, _ in pairs) - sum(x for x, _, _ in pairs)) / total
    rng = random.Random(seed)
    rounds_out = []
    for _ in range(rounds):
        picked = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        n = sum(p[2] for p in picked)
        rounds_out.append((sum(p[1] for p in picked) - sum(p[0] for p in picked)) / max(1, n))
    lo, hi = percentile_interval(rounds_out, level)
    return diff, lo, hi


def _stories(result: dict[str, Any]) -> list[dict[str, Any]]:
    stories = result.get("stories_detail") if isinstance(result, dict) else None
    if not isinstance(stories, list):
        raise ComparisonError("not a `phenaki-eval shapes --json` result: it has no stories_detail list")
    return stories


def _check_same_stories(a: dict[str, Any], b: dict[str, Any]) -> None:
    sa, sb = _stories(a), _stories(b)
    if len(sa) != len(sb):
        raise ComparisonError(f"A judged {len(sa)} stories and B {len(sb)}; run both with the same --stories "
                              "and --seed")
    for x, y in zip(sa, sb):
        if (x["prompts"], x["seed"], x["split"]) != (y["prompts"], y["seed"], y["split"]):
            raise ComparisonError(
                f"story {x['index']} differs: A {x['prompts']} (seed {x['seed']}) against B {y['prompts']} "
                f"(seed {y['seed']}); run both with the same --stories, --seed, --scenes and --config")


def compare_results(a: dict[str, Any], b: dict[str, Any], rounds: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per group and criterion: both rates, B - A with its paired 95% interval, scenes gained and lost."""
    _check_same_stories(a, b)
    criteria = _criteria(a)
    if _criteria(b) != criteria:
        raise ComparisonError(f"A was judged on {', '.join(criteria)} and B on {', '.join(_criteria(b))}; "
                              "compare results of the same domain")
    table: dict[str, dict[str, Any]] = {}
    for group in GROUPS:
        rows: dict[str, Any] = {}
        for name in criteria:
            va, vb = story_verdicts(a, name, group), story_verdicts(b, name, group)
            scenes = [(x, y) for sx, sy in zip(va, vb) for x, y in zip(sx, sy) if x is not None and y is not None]
            found = paired_difference(va, vb, rounds=rounds, seed=seed)
            if found is None:
                rows[name] = None
                continue
            diff, lo, hi = found
            rows[name] = {
                "a": sum(bool(x) for x, _ in scenes) / len(scenes),
                "b": sum(bool(y) for _, y in scenes) / len(scenes),
                "difference": diff,
                "ci95": [lo, hi],
                "gained": sum(1 for x, y in scenes if y and not x),  # wrong in A, right in B
                "lost": sum(1 for x, y in scenes if x and not y),
                "scenes": len(scenes),
            }
        table[group] = {"stories": len(story_verdicts(a, "correct", group)), "criteria": rows}
    return {"a": _describe(a), "b": _describe(b), "groups": table}


def _describe(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result.get(k) for k in ("checkpoint", "seed", "stories", "generate", "tokenizer_ceiling")}


def format_comparison(comparison: dict[str, Any], group: str = "all") -> str:
    """One group of `compare_results` as a text table, a star where the interval excludes 0."""
    rows = comparison["groups"][group]["criteria"]
    head = ["", "A", "B", "B - A", "95% CI", "gained", "lost"]
    lines = []
    for name, row in rows.items():
        if row is None:
            lines.append([name, "-", "-", "-", "-", "-", "-"])
            continue
        lo, hi = row["ci95"]
        star = " *" if lo > 0 or hi < 0 else ""
        lines.append([name, f"{100 * row['a']:.1f}%", f"{100 * row['b']:.1f}%",
                      f"{100 * row['difference']:+.1f}{star}", f"{100 * lo:+.1f} .. {100 * hi:+.1f}",
                      str(row["gained"]), str(row["lost"])])
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    stories = comparison["groups"][group]["stories"]
    title = f"{group}: {stories} stories, points of scenes (B - A; * = the paired interval excludes 0)"
    return "\n".join([title, fmt(head), *map(fmt, lines)])

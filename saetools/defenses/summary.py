"""The numbers of the report, from the rows of ``results.jsonl``: per arm (method, strength,
direction variant) the mean ± standard error over seeds of each measure (:data:`SEED_METRICS`), the
paired per-question difference to no defense, the shift at every checkpoint
(:func:`summarize`), and the measures at matched reduction of the general shift (:func:`matched`).

A new mean ± se measure is one entry of :data:`SEED_METRICS` (it then has ``key`` and ``key_se`` in
every summary row); :mod:`.table` shows it with one entry of its ``COLUMNS``, and it joins the
matched table through :data:`MATCH_METRICS` and the figure through ``report.PARETO_PANELS``."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..stats import mean_se, t_interval
from .config import METHODS


@dataclass(frozen=True)
class ArmRuns:
    """The finished runs of one arm by seed (its final rows of ``results.jsonl``), and those of
    ``none`` on the narrow task (what reductions and paired differences compare against)."""

    narrow: Mapping[int, dict]
    benign: Mapping[int, dict]
    none: Mapping[int, dict]


def _final(task: str, key: str) -> Callable[[ArmRuns], list]:
    """The values of ``key`` in an arm's final rows of ``task`` (None where missing), by seed."""

    def values(arm: ArmRuns) -> list:
        return [r.get(key) for r in getattr(arm, task).values()]

    return values


def _shift(arm: ArmRuns) -> list[float]:
    return [r["shift"] for r in arm.narrow.values()]


def _reduction(arm: ArmRuns) -> list[float]:
    """Per seed run by both: 100 * (none - arm) / none of the final general shift."""
    none_shift = {s: r["shift"] for s, r in arm.none.items()}
    return [
        100.0 * (none_shift[s] - r["shift"]) / none_shift[s]
        for s, r in arm.narrow.items()
        if s in none_shift and none_shift[s] != 0
    ]


# The measures shown as mean ± se over seeds: (summary key, its values per seed).
SEED_METRICS: tuple[tuple[str, Callable[[ArmRuns], Sequence]], ...] = (
    ("shift", _shift),
    ("reduction_pct", _reduction),
    ("in_domain_contrast", _final("narrow", "in_domain_contrast")),
    ("perplexity", _final("narrow", "perplexity")),
    ("narrow_loss", _final("narrow", "eval_task_loss")),
    ("benign_loss", _final("benign", "eval_task_loss")),
    ("opswap_accuracy", _final("benign", "opswap_accuracy")),
)


def _mean_se(xs: Sequence[float]) -> tuple[float | None, float | None]:
    """:func:`saetools.stats.mean_se` over the values that are present and finite."""
    return mean_se(x for x in xs if x is not None and math.isfinite(float(x)))


def _arm(r: Mapping) -> tuple:
    return (r["method"], float(r["strength"]), r["source"], r["sites"])


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Per arm (method, strength, direction source, sites): mean and standard error over seeds of
    the final general shift, its reduction against ``none`` (per seed: 100 * (none - arm) / none,
    for seeds where both ran), the in-domain contrast, perplexity, narrow and benign held-out loss
    and opswap accuracy; the *paired* difference to ``none`` (per question, averaged over the
    seeds both ran, then mean ± se over questions); and the shift at every checkpoint
    (``checkpoints``: ``{step: (mean, se)}`` over seeds)."""
    final = [r for r in rows if r.get("final")]
    by: dict[tuple, dict[str, dict[int, dict]]] = {}
    for r in final:
        by.setdefault(_arm(r), {}).setdefault(r["task"], {})[int(r["seed"])] = r
    steps = _shifts_by_step(rows, {r["run_id"] for r in final})
    none_runs = {
        s: r for arm, t in by.items() if arm[0] == "none" for s, r in t.get("narrow", {}).items()
    }
    order = {m: i for i, m in enumerate(METHODS)}
    out = []
    for arm in sorted(by, key=lambda a: (order[a[0]], a[2], a[3], a[1])):
        runs = ArmRuns(by[arm].get("narrow", {}), by[arm].get("benign", {}), none_runs)
        out.append(_summary_row(arm, runs, steps.get(arm, {})))
    return out


def _shifts_by_step(rows: Sequence[dict], done: set[str]) -> dict[tuple, dict[int, list[float]]]:
    """The general shift of every finished narrow run at each checkpoint, by arm and step."""
    steps: dict[tuple, dict[int, list[float]]] = {}
    for r in rows:
        if r["task"] == "narrow" and r["run_id"] in done and r.get("shift") is not None:
            steps.setdefault(_arm(r), {}).setdefault(int(r["step"]), []).append(r["shift"])
    return steps


def _summary_row(arm: tuple, runs: ArmRuns, steps: Mapping[int, list[float]]) -> dict:
    """One row of the summary (see :func:`summarize`)."""
    row = {
        "method": arm[0],
        "strength": arm[1],
        "source": arm[2],
        "sites": arm[3],
        "n_seeds_narrow": len(runs.narrow),
        "n_seeds_benign": len(runs.benign),
    }
    for key, values in SEED_METRICS:
        row[key], row[key + "_se"] = _mean_se(values(runs))
    per_q = _paired_per_question(runs.narrow, runs.none)
    row["paired_diff"], row["paired_diff_se"] = _mean_se(per_q)
    row["paired_diff_ci"] = t_interval(per_q) if arm[0] != "none" else (None, None)
    row["checkpoints"] = {st: _mean_se(v) for st, v in sorted(steps.items()) if st > 0}
    return row


def _paired_per_question(runs: Mapping[int, dict], none_runs: Mapping[int, dict]) -> list[float]:
    """Per question: the mean over seeds (run by both) of arm minus ``none`` final shift."""
    per_seed = [
        (r.get("shift_per_question"), none_runs[s].get("shift_per_question"))
        for s, r in runs.items()
        if s in none_runs
    ]
    per_seed = [(a, b) for a, b in per_seed if a and b and len(a) == len(b)]
    if not per_seed:
        return []
    n = len(per_seed[0][0])
    if any(len(a) != n for a, _ in per_seed):
        return []
    return [sum(a[q] - b[q] for a, b in per_seed) / len(per_seed) for q in range(n)]


MATCH_METRICS = (
    "benign_loss",
    "opswap_accuracy",
    "narrow_loss",
    "in_domain_contrast",
    "perplexity",
)


def matched(table: Sequence[dict], targets: Sequence[float] = (50.0, 80.0)) -> list[dict]:
    """Methods compared at matched reduction of the general shift: per method and direction
    variant, each metric of :data:`MATCH_METRICS` linearly interpolated (along its strengths, in
    order) at the first point where the mean reduction crosses each target (percent). Strength 0
    is no defense (the ``none`` row, reduction 0), so the first segment starts there (not for
    ``ablate``, which has no strength). ``None`` where the strengths never bracket the target.
    ``none`` itself is left out."""
    groups: dict[tuple, list[dict]] = {}
    none = None
    for r in table:
        if r["method"] == "none":
            none = r
        elif r["reduction_pct"] is not None:
            groups.setdefault((r["method"], r["source"], r["sites"]), []).append(r)
    out = []
    for (method, source, sites), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["strength"])
        if none is not None and method != "ablate" and rs[0]["strength"] > 0:
            rs = [{**none, "strength": 0.0, "reduction_pct": 0.0, "_anchor": True}] + rs
        row: dict = {"method": method, "source": source, "sites": sites, "at": {}}
        for t in targets:
            hit = None
            for a, b in zip(rs, rs[1:], strict=False):
                ra, rb = a["reduction_pct"], b["reduction_pct"]
                if ra == t:
                    hit = (a, a, 0.0)
                elif (ra - t) * (rb - t) < 0 or rb == t:
                    hit = (a, b, (t - ra) / (rb - ra))
                if hit:
                    break
            if hit is None and len(rs) == 1 and rs[0]["reduction_pct"] == t:
                hit = (rs[0], rs[0], 0.0)
            vals: dict = {}
            if hit:
                a, b, w = hit
                vals["strength"] = a["strength"] + w * (b["strength"] - a["strength"])
                vals["from_none"] = bool(a.get("_anchor")) and w > 0
                for k in MATCH_METRICS:
                    va, vb = a.get(k), b.get(k)
                    vals[k] = None if va is None or vb is None else va + w * (vb - va)
            row["at"][float(t)] = vals or None
        out.append(row)
    return out

"""The numbers of the report, from the rows of ``results.jsonl``: per arm (method, strength,
direction variant, term variant) the mean ± standard error over seeds of each measure
(:data:`SEED_METRICS`), 95% intervals of some (:data:`CI_METRICS`), the paired per-question
difference to no defense, the shift at every checkpoint, and the probe judge's misaligned-answer
rate pooled over seeds with its Wilson interval (:func:`summarize`). The measures at
matched reduction of the general shift are in :mod:`.matching`.

A new mean ± se measure is one entry of :data:`SEED_METRICS` (it then has ``key`` and ``key_se`` in
every summary row, and its values by seed in ``per_seed[key]``); :mod:`.table` shows it with one
entry of its ``COLUMNS``, and it joins the matched table through ``matching.MATCH_METRICS`` and the
figure through ``report.PARETO_PANELS``.

Rows written before a measure existed (an older results folder) simply lack it: the measure is
``None`` there and the table shows a blank. The benign accuracy of such rows is read from their
``opswap_accuracy``."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..stats import mean_se, t_interval, wilson_interval
from .config import METHODS


@dataclass(frozen=True)
class ArmRuns:
    """The finished runs of one arm by seed (its final rows of ``results.jsonl``), and those of
    ``none`` on the narrow task (what reductions and paired differences compare against)."""

    narrow: Mapping[int, dict]
    benign: Mapping[int, dict]
    none: Mapping[int, dict]


def _final(task: str, *keys: str) -> Callable[[ArmRuns], dict[int, float | None]]:
    """The value of the first of ``keys`` present in an arm's final rows of ``task``, by seed
    (None where none is)."""

    def values(arm: ArmRuns) -> dict[int, float | None]:
        return {
            s: next((r[k] for k in keys if r.get(k) is not None), None)
            for s, r in getattr(arm, task).items()
        }

    return values


def _reduction(key: str) -> Callable[[ArmRuns], dict[int, float]]:
    """Per seed run by both: 100 * (none - arm) / none of the final shift ``key``."""

    def values(arm: ArmRuns) -> dict[int, float]:
        none = {s: r.get(key) for s, r in arm.none.items()}
        return {
            s: 100.0 * (none[s] - r[key]) / none[s]
            for s, r in arm.narrow.items()
            if none.get(s) and r.get(key) is not None
        }

    return values


# The measures shown as mean ± se over seeds: (summary key, its values by seed).
SEED_METRICS: tuple[tuple[str, Callable[[ArmRuns], Mapping[int, float | None]]], ...] = (
    ("shift", _final("narrow", "shift")),
    ("reduction_pct", _reduction("shift")),
    ("shift_transfer", _final("narrow", "shift_transfer")),
    ("reduction_transfer_pct", _reduction("shift_transfer")),
    ("in_domain_contrast", _final("narrow", "in_domain_contrast")),
    ("perplexity", _final("narrow", "perplexity")),
    ("narrow_loss", _final("narrow", "eval_task_loss")),
    ("benign_loss", _final("benign", "eval_task_loss")),
    ("benign_accuracy", _final("benign", "benign_accuracy", "opswap_accuracy")),
)
# Measures that also get a 95% interval over seeds (``key_ci``; Student t, n - 1 df)
CI_METRICS = ("reduction_pct", "reduction_transfer_pct", "narrow_loss", "benign_accuracy")


def _present(values: Mapping[int, float | None]) -> dict[int, float]:
    return {s: float(v) for s, v in values.items() if v is not None and math.isfinite(float(v))}


def _mean_se(xs: Sequence[float]) -> tuple[float | None, float | None]:
    """:func:`saetools.stats.mean_se` over the values that are present and finite."""
    return mean_se(x for x in xs if x is not None and math.isfinite(float(x)))


def _arm(r: Mapping) -> tuple:
    return (r["method"], float(r["strength"]), r["source"], r["sites"], r.get("variant", "-"))


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Per arm (method, strength, direction source, sites, term variant): mean and standard error
    over seeds of each measure of :data:`SEED_METRICS` (the final general shift on both pair
    sets, their reductions against ``none`` (per seed: 100 * (none - arm) / none, for seeds where
    both ran), in-domain contrast, perplexity, narrow and benign held-out loss, benign accuracy),
    95% intervals of :data:`CI_METRICS`; the *paired* difference to ``none`` (per question,
    averaged over the seeds both ran, then mean ± se over questions); and the shift at every
    checkpoint (``checkpoints``: ``{step: (mean, se)}`` over seeds)."""
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
    for arm in sorted(by, key=lambda a: (order[a[0]], a[2], a[3], a[4], a[1])):
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
        "variant": arm[4],
        "n_seeds_narrow": len(runs.narrow),
        "n_seeds_benign": len(runs.benign),
        "per_seed": {},
    }
    for key, values in SEED_METRICS:
        vals = _present(values(runs))
        row["per_seed"][key] = vals
        row[key], row[key + "_se"] = _mean_se(list(vals.values()))
    for key in CI_METRICS:
        # none's reductions are 0 by definition: no interval
        none_reduction = arm[0] == "none" and key.startswith("reduction")
        row[key + "_ci"] = (
            (None, None) if none_reduction else t_interval(row["per_seed"][key].values())
        )
    if len(row["per_seed"]["benign_accuracy"]) == 1:
        row["benign_accuracy_ci"] = _single_run_wilson(runs.benign)
    row.update(judged_pooled(runs.narrow))
    per_q = _paired_per_question(runs.narrow, runs.none)
    row["paired_diff"], row["paired_diff_se"] = _mean_se(per_q)
    row["paired_diff_ci"] = t_interval(per_q) if arm[0] != "none" else (None, None)
    row["checkpoints"] = {st: _mean_se(v) for st, v in sorted(steps.items()) if st > 0}
    return row


def _single_run_wilson(benign: Mapping[int, dict]) -> tuple[float | None, float | None]:
    """One seed: the 95% Wilson interval of its accuracy over the test items (when recorded)."""
    r = next(iter(benign.values()))
    if r.get("benign_correct") is None or not r.get("benign_n"):
        return None, None
    return wilson_interval(int(r["benign_correct"]), int(r["benign_n"]))


def judged_pooled(narrow: Mapping[int, dict]) -> dict:
    """The probe judge's verdicts at the final checkpoint, pooled over the seeds that have them:
    ``judged_rate`` = misaligned / coherent answers, its 95% Wilson interval ``judged_rate_ci``
    (over the pooled answers), the counts, and the rate by seed (``judged_rate_by_seed``)."""
    runs = {s: r for s, r in narrow.items() if r.get("judged_n") is not None}
    k = sum(int(r["judged_misaligned"]) for r in runs.values())
    n = sum(int(r["judged_coherent"]) for r in runs.values())
    return {
        "n_seeds_judged": len(runs),
        "judged_rate": k / n if n else None,
        "judged_rate_ci": wilson_interval(k, n) if n else (None, None),
        "judged_misaligned": k if runs else None,
        "judged_coherent": n if runs else None,
        "judged_incoherent": sum(int(r["judged_incoherent"]) for r in runs.values()),
        "judged_n": sum(int(r["judged_n"]) for r in runs.values()),
        "judged_rate_by_seed": {s: r.get("judged_rate") for s, r in runs.items()},
    }


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

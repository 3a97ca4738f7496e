"""Methods compared at matched reduction of the general shift.

:func:`matched`: per method, direction variant and term variant, each measure of
:data:`MATCH_METRICS` linearly interpolated along the strengths at the point where the mean
reduction crosses each target (50% and 80%): the mean, and the same interpolation seed by seed
(same weight, seeds both strengths ran) with its 95% Student-t interval over seeds.

:func:`versus`: every arm against a reference method (``steer`` by default) at the same targets:
per seed, arm minus reference of each measure of :data:`VERSUS_METRICS` (both interpolated with
their own weights; seeds both have), then the mean and its 95% t interval over seeds. Seeds pair
the runs: runs of the same seed see the same batches in the same order from the same LoRA
initialization, so the pairing removes that part of the seed noise. The interval does not include
the uncertainty of where the target lies on each curve (the interpolation weight is taken from the
mean reductions as if known).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..stats import mean_se, t_interval

MATCH_METRICS = (
    "benign_loss",
    "benign_accuracy",
    "narrow_loss",
    "in_domain_contrast",
    "perplexity",
    "reduction_transfer_pct",
)
VERSUS_METRICS = ("benign_accuracy", "narrow_loss", "benign_loss")
# the reference of :func:`versus`: method, source, sites, variant (the first steer row otherwise)
REFERENCE = ("steer", "modeldiff", "all", "-")


def _group(r: Mapping) -> tuple:
    return (r["method"], r["source"], r["sites"], r.get("variant", "-"))


def _crossing(rs: Sequence[dict], t: float) -> tuple[dict, dict, float] | None:
    """(a, b, w): the first pair of consecutive rows whose mean reductions bracket ``t``, with the
    interpolation weight of ``t`` between them; None where none do."""
    for a, b in zip(rs, rs[1:], strict=False):
        ra, rb = a["reduction_pct"], b["reduction_pct"]
        if ra == t:
            return a, a, 0.0
        if (ra - t) * (rb - t) < 0 or rb == t:
            return a, b, (t - ra) / (rb - ra)
    if len(rs) == 1 and rs[0]["reduction_pct"] == t:
        return rs[0], rs[0], 0.0
    return None


def _interpolate(a: Mapping, b: Mapping, w: float) -> dict:
    """Each measure of :data:`MATCH_METRICS` at weight ``w`` between rows ``a`` and ``b``: the
    mean (``k``), by seed (``k_seeds``) and the 95% t interval over those seeds (``k_ci``)."""
    vals: dict = {}
    for k in MATCH_METRICS:
        va, vb = a.get(k), b.get(k)
        vals[k] = None if va is None or vb is None else va + w * (vb - va)
        sa = a.get("per_seed", {}).get(k, {})
        sb = b.get("per_seed", {}).get(k, {})
        seeds = {s: sa[s] + w * (sb[s] - sa[s]) for s in sa if s in sb}
        vals[k + "_seeds"] = seeds
        vals[k + "_ci"] = t_interval(seeds.values())
    return vals


def matched(table: Sequence[dict], targets: Sequence[float] = (50.0, 80.0)) -> list[dict]:
    """Methods compared at matched reduction of the general shift: per method, direction variant
    and term variant, each metric of :data:`MATCH_METRICS` linearly interpolated (along its
    strengths, in order) at the first point where the mean reduction crosses each target
    (percent), with its per-seed values and 95% interval (see the module docstring). Strength 0
    is no defense (the ``none`` row, reduction 0), so the first segment starts there (not for
    ``ablate``, which has no strength). ``None`` where the strengths never bracket the target.
    ``none`` itself is left out."""
    groups: dict[tuple, list[dict]] = {}
    none = None
    for r in table:
        if r["method"] == "none":
            none = r
        elif r["reduction_pct"] is not None:
            groups.setdefault(_group(r), []).append(r)
    out = []
    for (method, source, sites, variant), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["strength"])
        if none is not None and method != "ablate" and rs[0]["strength"] > 0:
            rs = [{**none, "strength": 0.0, "reduction_pct": 0.0, "_anchor": True}] + rs
        row: dict = {
            "method": method,
            "source": source,
            "sites": sites,
            "variant": variant,
            "at": {},
        }
        for t in targets:
            hit = _crossing(rs, float(t))
            vals: dict = {}
            if hit:
                a, b, w = hit
                vals["strength"] = a["strength"] + w * (b["strength"] - a["strength"])
                vals["from_none"] = bool(a.get("_anchor")) and w > 0
                vals.update(_interpolate(a, b, w))
            row["at"][float(t)] = vals or None
        out.append(row)
    return out


def reference_row(rows: Sequence[dict], reference: tuple = REFERENCE) -> dict | None:
    """The row of :func:`matched` that :func:`versus` compares against: the one matching
    ``reference`` (method, source, sites, variant), else the first of its method."""
    same = [r for r in rows if r["method"] == reference[0]]
    return next((r for r in same if _group(r) == tuple(reference)), same[0] if same else None)


def versus(
    rows: Sequence[dict], reference: tuple = REFERENCE, targets: Sequence[float] = (50.0, 80.0)
) -> tuple[dict | None, list[dict]]:
    """(the reference row, the comparison of every other row of :func:`matched` ``rows`` with
    it): per target and measure of :data:`VERSUS_METRICS`, ``{"diff": mean over seeds of arm
    minus reference, "se": its standard error, "ci": its 95% t interval, "n": seeds}``, or None
    where either side did not reach the target or shares fewer than one seed with the other."""
    ref = reference_row(rows, reference)
    out = []
    for r in rows:
        if ref is None or r is ref:
            continue
        at: dict = {}
        for t in targets:
            mine, theirs = r["at"].get(float(t)), ref["at"].get(float(t))
            if not mine or not theirs:
                at[float(t)] = None
                continue
            at[float(t)] = {k: _paired(mine, theirs, k) for k in VERSUS_METRICS}
        out.append({**{k: r[k] for k in ("method", "source", "sites", "variant")}, "at": at})
    return ref, out


def _paired(mine: Mapping, theirs: Mapping, key: str) -> dict | None:
    """Arm minus reference of ``key`` seed by seed (seeds both have): mean, se, 95% interval."""
    a, b = mine.get(key + "_seeds", {}), theirs.get(key + "_seeds", {})
    diffs = [a[s] - b[s] for s in a if s in b]
    if not diffs:
        return None
    m, se = mean_se(diffs)
    return {"diff": m, "se": se, "ci": t_interval(diffs), "n": len(diffs)}

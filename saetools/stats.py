"""Small statistics: means with standard errors, confidence intervals (Student t for a mean,
Wilson for a rate), and those used to judge directions: AUROC, Cohen's d, orthonormal bases."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def mean_se(xs: Iterable[float]) -> tuple[float | None, float | None]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n)) of plain numbers:
    ``(None, None)`` when empty, ``(mean, None)`` for a single value."""
    xs = [float(x) for x in xs]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, math.sqrt(var / len(xs))


# two-sided 95% Student t quantiles t_{0.975}(df), df = 1..30 (published table values)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (table up to 30, then
    ``1.96 + 2.5 / df``, within 0.003 of the exact value)."""
    if int(df) != df or df < 1:
        raise ValueError(f"degrees of freedom must be an integer >= 1, not {df!r}")
    df = int(df)
    return _T975[df - 1] if df <= len(_T975) else 1.959964 + 2.5 / df


def t_interval(xs: Iterable[float]) -> tuple[float | None, float | None]:
    """Two-sided 95% confidence interval of the mean (Student t, n - 1 degrees of freedom):
    ``(None, None)`` for fewer than two values."""
    xs = [float(x) for x in xs]
    m, se = mean_se(xs)
    if se is None:
        return None, None
    h = t_quantile_975(len(xs) - 1) * se
    return m - h, m + h


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (95% by default).

    ``n == 0`` gives ``(0.0, 1.0)`` (nothing is known)."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Area under the ROC curve for scores ``pos`` (label 1) against ``neg`` (label 0).

    Equals P(pos > neg) + 0.5 * P(pos == neg), computed from ranks (Mann-Whitney U) with ties
    given their average rank.
    """
    pos = pos.detach().double().flatten().cpu()
    neg = neg.detach().double().flatten().cpu()
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError("auroc needs at least one positive and one negative score")
    if bool(torch.isnan(pos).any() or torch.isnan(neg).any()):
        raise ValueError("auroc got NaN scores")
    scores = torch.cat([pos, neg])
    order = torch.argsort(scores, stable=True)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    n = scores.numel()
    i = 0
    while i < n:
        j = i
        while j + 1 < n and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    r_pos = ranks[: pos.numel()].sum().item()
    n_pos, n_neg = pos.numel(), neg.numel()
    u = r_pos - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def cohens_d(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Standardised mean difference (pos - neg) / pooled standard deviation."""
    pos = pos.detach().double().flatten()
    neg = neg.detach().double().flatten()
    n1, n2 = pos.numel(), neg.numel()
    if n1 < 2 or n2 < 2:
        raise ValueError("cohens_d needs at least two scores in each group")
    if bool(torch.isnan(pos).any() or torch.isnan(neg).any()):
        raise ValueError("cohens_d got NaN scores")
    pooled = ((n1 - 1) * pos.var() + (n2 - 1) * neg.var()) / (n1 + n2 - 2)
    if pooled <= 0:
        return float("inf") if pos.mean() != neg.mean() else 0.0
    return float((pos.mean() - neg.mean()) / pooled.sqrt())


def orthonormal_basis(vectors: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Orthonormal rows spanning ``vectors`` ``[k, d]`` (QR, sign kept so row 0 points like vectors[0]).

    Raises if a vector is zero, not finite, or linearly dependent on the others. A vector counts as
    dependent when its part outside the span of the earlier ones is below a tolerance relative to
    its own norm; the tolerance follows the input's precision (rounding errors of float32 inputs
    must not pass for independent directions).
    """
    v = vectors.detach().double()
    if v.ndim == 1:
        v = v[None]
    if v.shape[0] > v.shape[1]:
        raise ValueError(
            f"{v.shape[0]} directions in {v.shape[1]} dimensions are linearly dependent; "
            "cannot orthonormalise them"
        )
    tol = eps
    if vectors.is_floating_point():
        tol = max(eps, min(64 * torch.finfo(vectors.dtype).eps, 1e-2))
    if not torch.isfinite(v).all():
        raise ValueError("direction contains NaN or infinite values")
    norms = v.norm(dim=-1)
    if bool((norms <= eps).any()):
        raise ValueError("cannot normalise a zero vector")
    q, r = torch.linalg.qr(v.T)
    diag = torch.diagonal(r)
    if bool((diag.abs() <= tol * norms).any()):
        raise ValueError("directions are linearly dependent; cannot orthonormalise them")
    q = q * torch.sign(diag)[None]
    return q.T.to(vectors.dtype if vectors.is_floating_point() else torch.float32)

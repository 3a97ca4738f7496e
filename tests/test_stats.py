"""AUROC, Cohen's d and orthonormal bases against naive references."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from saetools.stats import auroc, cohens_d, orthonormal_basis


def naive_auroc(pos: list[float], neg: list[float]) -> float:
    """P(pos > neg) + 0.5 P(pos == neg), by counting every pair."""
    wins = 0.0
    for p in pos:
        for n in neg:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(6))
def test_auroc_matches_pairwise_count(seed):
    g = torch.Generator().manual_seed(seed)
    n_pos, n_neg = (
        int(torch.randint(1, 40, (1,), generator=g)),
        int(torch.randint(1, 40, (1,), generator=g)),
    )
    pos = torch.randn(n_pos, generator=g) + 0.5
    neg = torch.randn(n_neg, generator=g)
    assert auroc(pos, neg) == pytest.approx(naive_auroc(pos.tolist(), neg.tolist()), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_auroc_with_many_ties(seed):
    g = torch.Generator().manual_seed(100 + seed)
    # integer scores in a small range: lots of ties inside and across groups
    pos = torch.randint(0, 5, (int(torch.randint(1, 30, (1,), generator=g)),), generator=g).float()
    neg = torch.randint(0, 4, (int(torch.randint(1, 30, (1,), generator=g)),), generator=g).float()
    assert auroc(pos, neg) == pytest.approx(naive_auroc(pos.tolist(), neg.tolist()), abs=1e-12)


def test_auroc_edge_cases():
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 0.0
    assert auroc(torch.ones(4), torch.ones(7)) == 0.5
    assert auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    # shape and dtype do not matter
    a, b = torch.randn(3, 4, dtype=torch.float16), torch.randn(5, dtype=torch.float64)
    assert auroc(a, b) == pytest.approx(naive_auroc(a.double().flatten().tolist(), b.tolist()))
    with pytest.raises(ValueError, match="at least one"):
        auroc(torch.tensor([]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="at least one"):
        auroc(torch.tensor([1.0]), torch.tensor([]))
    with pytest.raises(ValueError, match="NaN"):
        auroc(torch.tensor([1.0, float("nan")]), torch.tensor([0.0]))


@pytest.mark.parametrize("seed", range(5))
def test_cohens_d_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    pos = rng.normal(1.0, 2.0, size=rng.integers(2, 50))
    neg = rng.normal(0.0, 1.0, size=rng.integers(2, 50))
    n1, n2 = len(pos), len(neg)
    pooled = ((n1 - 1) * pos.var(ddof=1) + (n2 - 1) * neg.var(ddof=1)) / (n1 + n2 - 2)
    want = (pos.mean() - neg.mean()) / math.sqrt(pooled)
    got = cohens_d(torch.from_numpy(pos).float(), torch.from_numpy(neg).float())
    assert got == pytest.approx(want, rel=1e-5)
    assert cohens_d(torch.from_numpy(neg), torch.from_numpy(pos)) == pytest.approx(-want, rel=1e-9)


def test_cohens_d_edge_cases():
    assert cohens_d(torch.ones(3), torch.ones(4)) == 0.0
    assert cohens_d(torch.ones(3) * 2, torch.ones(4)) == math.inf
    with pytest.raises(ValueError, match="at least two"):
        cohens_d(torch.ones(1), torch.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        cohens_d(torch.tensor([1.0, float("nan")]), torch.ones(4))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 2, 5])
def test_orthonormal_basis(seed, k):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(k, 24, generator=g) * torch.rand(k, 1, generator=g) * 10
    q = orthonormal_basis(v)
    assert q.shape == (k, 24) and q.dtype == torch.float32
    torch.testing.assert_close(q @ q.T, torch.eye(k), atol=1e-5, rtol=0)
    # spans the inputs: projecting each input on the basis gives it back
    torch.testing.assert_close((v @ q.T) @ q, v, atol=1e-4, rtol=1e-5)
    # row 0 is the unit vector of the first input, with its sign
    torch.testing.assert_close(q[0], v[0] / v[0].norm(), atol=1e-6, rtol=0)
    assert float(q[0] @ v[0]) > 0
    # negating the first input flips row 0
    q2 = orthonormal_basis(torch.cat([-v[:1], v[1:]]))
    torch.testing.assert_close(q2[0], -q[0], atol=1e-6, rtol=0)


def test_orthonormal_basis_dtype_and_1d():
    v = torch.randn(16, dtype=torch.float64)
    q = orthonormal_basis(v)
    assert q.shape == (1, 16) and q.dtype == torch.float64
    torch.testing.assert_close(q[0], v / v.norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orthonormal_basis_refuses_bad_vectors(dtype):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(32, generator=g, dtype=dtype), torch.randn(32, generator=g, dtype=dtype)
    with pytest.raises(ValueError, match="zero"):
        orthonormal_basis(torch.stack([a, torch.zeros_like(a)]))
    with pytest.raises(ValueError, match="zero"):
        orthonormal_basis(torch.zeros(8, dtype=dtype))
    for bad in (float("nan"), float("inf")):
        c = a.clone()
        c[3] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            orthonormal_basis(torch.stack([c, b]))
    # dependent sets, computed in the input dtype (so with its rounding errors)
    for dep in (
        torch.stack([a, a]),
        torch.stack([a, 0.1 * a]),
        torch.stack([a, -3.7 * a]),
        torch.stack([a, b, 0.3 * a + 0.7 * b]),
        torch.stack([a, b, a / 3 - b * 1.1]),
    ):
        with pytest.raises(ValueError, match="linearly dependent"):
            orthonormal_basis(dep)
    # more vectors than dimensions are always dependent
    with pytest.raises(ValueError, match="linearly dependent"):
        orthonormal_basis(torch.randn(5, 3, generator=g, dtype=dtype))
    # nearly but not quite dependent is fine
    orthonormal_basis(torch.stack([a, a + 0.01 * b]))


def test_mean_se_matches_statistics_module():
    import math
    import statistics

    from saetools.stats import mean_se

    xs = [0.3, -1.2, 2.5, 0.0, 4.25]
    m, se = mean_se(xs)
    assert math.isclose(m, statistics.fmean(xs))
    assert math.isclose(se, statistics.stdev(xs) / math.sqrt(len(xs)))
    assert mean_se([]) == (None, None) and mean_se([2.0]) == (2.0, None)


def test_t_interval_matches_scipy():
    """95% t quantiles and intervals against scipy's Student t (an independent implementation)."""
    scipy_stats = pytest.importorskip("scipy.stats")
    from saetools.stats import t_interval, t_quantile_975

    for df in list(range(1, 41)) + [50, 60, 80, 120, 200, 1000]:
        assert t_quantile_975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=3e-3), df
    xs = [0.3, -0.1, 0.25, 0.4, 0.05, 0.12]
    lo, hi = t_interval(xs)
    ref = scipy_stats.t.interval(0.95, len(xs) - 1, loc=statistics.mean(xs),
                                 scale=statistics.stdev(xs) / math.sqrt(len(xs)))  # fmt: skip
    assert (lo, hi) == (pytest.approx(ref[0], abs=1e-3), pytest.approx(ref[1], abs=1e-3))
    assert t_interval([1.0]) == (None, None)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile_975(0)

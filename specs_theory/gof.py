"""Pooled Pearson goodness-of-fit test for Monte Carlo checks (THEORY.md I14).

Raw per-cell z-scores are meaningless when some cells have tiny probability
(one hit in a p = 1.8e-8 cell gives z = 7.4); pool such cells instead.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["pooled_gof_pvalue"]


def pooled_gof_pvalue(counts, probs, *, min_expected: float = 5.0) -> float:
    """p-value of Pearson's chi-square test of ``counts`` against ``probs``.

    Cells whose expected count ``M * p`` is below ``min_expected`` are pooled
    into one cell (kept only if that pooled cell itself reaches
    ``min_expected``, else merged into the smallest regular cell). Counts in a
    cell of probability zero make the p-value 0 (an impossible outcome).

    Args:
      counts: (C,) observed counts.
      probs: (C,) cell probabilities summing to 1 (within 1e-9).
    """
    counts = np.asarray(counts, dtype=np.float64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    if counts.shape != probs.shape:
        raise ValueError(f"counts {counts.shape} and probs {probs.shape} differ in shape")
    if np.any(probs < 0) or abs(probs.sum() - 1.0) > 1e-9:
        raise ValueError(f"probs must be a probability vector (sum = {probs.sum()!r})")
    total = counts.sum()
    if total <= 0:
        raise ValueError("counts are all zero")
    if np.any(counts[probs == 0] > 0):
        return 0.0
    expected = total * probs
    small = expected < min_expected
    obs = list(counts[~small])
    exp = list(expected[~small])
    if small.any():
        pooled_obs, pooled_exp = counts[small].sum(), expected[small].sum()
        if pooled_exp >= min_expected or not exp:
            obs.append(pooled_obs)
            exp.append(pooled_exp)
        else:
            j = int(np.argmin(exp))
            obs[j] += pooled_obs
            exp[j] += pooled_exp
    obs, exp = np.array(obs), np.array(exp)
    if len(obs) < 2:
        return 1.0
    chi2 = np.sum((obs - exp) ** 2 / exp)
    return float(stats.chi2.sf(chi2, df=len(obs) - 1))

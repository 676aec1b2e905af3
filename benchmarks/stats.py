"""Interval estimates and paired significance tests shared by the benchmark scripts.

* :func:`wilson_interval` -- 95% Wilson score interval of a binomial share;
* :func:`mean_interval` -- t interval of a mean of per-item values;
* :func:`mcnemar_exact` (from :mod:`surgery_editor.evaluation`) / :func:`mcnemar_p` -- exact
  two-sided McNemar test of paired binary outcomes;
* :func:`wilcoxon_p` -- Wilcoxon signed-rank test of paired continuous outcomes;
* :func:`paired_test` -- either of the two, with the paired difference of means.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import numpy as np
from scipy import stats as _st

from surgery_editor.evaluation.statistics import mcnemar_exact

__all__ = ["wilson_interval", "mean_interval", "mcnemar_exact", "mcnemar_p", "wilcoxon_p", "paired_test"]


def wilson_interval(successes: int, n: int, z: float = 1.96) -> Tuple[float, float]:
    """Wilson score interval of ``successes / n`` as shares in [0, 1]; ``(nan, nan)`` when n == 0."""
    successes, n = int(successes), int(n)
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"wilson_interval needs 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Tuple[float, float]:
    """Student-t interval of the mean of ``values`` (NaNs dropped), clipped to the range of the values
    (a mean of 0..1 scores gets no negative bound); ``(nan, nan)`` below 2 values."""
    x = np.asarray(values, float)
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return (float("nan"), float("nan"))
    mean, sem = float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))
    half = float(_st.t.ppf(0.5 + confidence / 2, len(x) - 1)) * sem
    return (max(float(x.min()), mean - half), min(float(x.max()), mean + half))


def mcnemar_p(before: Sequence[bool], after: Sequence[bool]) -> float:
    """Exact two-sided McNemar p-value of paired binary outcomes (1.0 with no discordant pair)."""
    return float(mcnemar_exact(before, after)["p_value"])


def wilcoxon_p(before: Sequence[float], after: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``after - before``; 1.0 when every difference is zero."""
    a, b = np.asarray(before, float), np.asarray(after, float)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs equal lengths, got {a.shape} and {b.shape}")
    d = b - a
    if len(d) == 0:
        return float("nan")
    if np.all(d == 0):
        return 1.0
    return float(_st.wilcoxon(d).pvalue)


def paired_test(before: Sequence, after: Sequence, kind: str) -> Dict[str, float]:
    """``{"n", "diff", "p_value"}`` for paired outcomes: ``kind="flags"`` (binary, exact McNemar)
    or ``kind="values"`` (continuous, Wilcoxon signed-rank); ``diff`` = mean(after) - mean(before)."""
    if kind not in ("flags", "values"):
        raise ValueError(f"paired_test kind must be 'flags' or 'values', got {kind!r}")
    a, b = np.asarray(before, float), np.asarray(after, float)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs equal lengths, got {a.shape} and {b.shape}")
    if len(a) == 0:
        return {"n": 0, "diff": float("nan"), "p_value": float("nan")}
    p = mcnemar_p(a.astype(bool), b.astype(bool)) if kind == "flags" else wilcoxon_p(a, b)
    return {"n": int(len(a)), "diff": float(b.mean() - a.mean()), "p_value": p}

"""Paired significance tests on per-item outcomes."""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from ..infra.extras import require


def mcnemar_exact(before: Sequence[bool], after: Sequence[bool]) -> Dict[str, float]:
    """Exact McNemar test for paired binary outcomes (two-sided binomial on discordant pairs)."""
    before, after = np.asarray(before, bool), np.asarray(after, bool)
    if before.shape != after.shape:
        raise ValueError(f"paired test needs equal lengths, got {before.shape} and {after.shape}")
    b = int((before & ~after).sum())  # toxic before only
    c = int((~before & after).sum())  # toxic after only
    if b + c == 0:
        return {"only_before": b, "only_after": c, "p_value": 1.0}
    binomtest = require("scipy.stats", "harness", "McNemar's test").binomtest
    p = float(binomtest(b, b + c, 0.5).pvalue)
    return {"only_before": b, "only_after": c, "p_value": p}

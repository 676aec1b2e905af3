"""What single MLP neurons do on labelled texts, shared by the neuron-level methods (AurA's
expert scores, ModelSurgery's activation-based row selection)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

RANK_CHUNK = 2048  # columns ranked at once (float64 work of n_texts x RANK_CHUNK)


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of each column's values, ties sharing their average rank (as
    ``scipy.stats.rankdata(x, axis=0)``): ``(n, c)`` float64."""
    cols = x.double().t().contiguous()  # (c, n): searchsorted works row by row
    ordered = cols.sort(dim=1).values
    left = torch.searchsorted(ordered, cols, right=False)
    right = torch.searchsorted(ordered, cols, right=True)
    return ((left + right + 1).double() / 2).t()


def auroc_per_neuron(responses: torch.Tensor, labels: Any) -> torch.Tensor:
    """``(n_neurons,)`` float64: column j's AUROC at scoring class 1 above class 0, from the
    Mann-Whitney rank sum (ties share their average rank, as ``sklearn.metrics.roc_auc_score``).
    ``responses``: ``(n_texts, n_neurons)``; ``labels``: ``n_texts`` values in {0, 1}, both present."""
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if responses.dim() != 2 or responses.shape[0] != labels.shape[0]:
        raise ValueError(f"responses {tuple(responses.shape)} and labels ({labels.shape[0]},) do not match: "
                         "expected (n_texts, n_neurons) and n_texts labels")
    if not set(np.unique(labels).tolist()) <= {0, 1}:
        raise ValueError(f"labels must be 0 or 1, got values {sorted(set(np.unique(labels).tolist()))}")
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs texts of both classes; got {n_pos} toxic and {n_neg} non-toxic")
    x = responses.detach().cpu()
    pos = torch.from_numpy(labels.astype(bool))
    out = torch.empty(x.shape[1], dtype=torch.float64)
    for start in range(0, x.shape[1], RANK_CHUNK):
        ranks = average_ranks(x[:, start : start + RANK_CHUNK])
        out[start : start + RANK_CHUNK] = (ranks[pos].sum(dim=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


def mean_difference_per_neuron(responses: torch.Tensor, labels: Any) -> torch.Tensor:
    """``(n_neurons,)`` float64: each column's mean over class-1 texts minus its mean over class-0
    texts."""
    labels = torch.as_tensor(np.asarray(labels).astype(bool).reshape(-1))
    x = responses.detach().cpu().double()
    if x.dim() != 2 or x.shape[0] != labels.numel() or labels.all() or not labels.any():
        raise ValueError(f"responses {tuple(x.shape)} need one row per label and labels of both classes")
    return x[labels].mean(dim=0) - x[~labels].mean(dim=0)

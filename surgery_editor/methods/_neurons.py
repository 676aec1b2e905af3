"""What single MLP neurons do on labelled texts, shared by the neuron-level methods (AurA's
expert scores, ModelSurgery's activation-based row selection)."""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np
import torch
from torch import nn

from ..activations import activation_key, ensure_pad_token, pooled_module_outputs
from ..data import LabelledTexts
from ..infra.cache import TensorCache

logger = logging.getLogger(__name__)

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


STATISTICS: Dict[str, Callable[[torch.Tensor, Any], torch.Tensor]] = {
    "auroc": auroc_per_neuron, "mean_difference": mean_difference_per_neuron}


def cached_neuron_statistics(model: nn.Module, tok, texts: LabelledTexts, modules: Mapping[str, nn.Module], *,
                             statistic: str, pooling: str, max_length: int, batch_size: int,
                             cache_dir: Optional[str] = None, fingerprint: Optional[str] = None
                             ) -> Dict[str, torch.Tensor]:
    """``{name: (width,) float64}``: ``statistic`` (``auroc`` or ``mean_difference``) of each
    output unit of ``modules``, over its response pooled per text (``texts`` as the model reads
    them). The statistics are cached (``neuron_statistics``, keyed by model, texts, labels,
    modules, pooling and length), not the responses, which are ``len(texts)`` times larger."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic={statistic!r} is not valid; choose one of {sorted(STATISTICS)}")
    ensure_pad_token(tok)
    cache = TensorCache("neuron_statistics", cache_dir)
    key = activation_key(model, tok, sorted(modules), pooling, max_length, f"{texts.content_hash()}:{statistic}",
                         fingerprint)
    hit = cache.get(key)
    if hit is not None and set(hit[0]) == set(modules):
        logger.info("neuron statistics: cache hit %s", cache.path(key))
        return {name: hit[0][name] for name in modules}  # in the modules' order (callers draw seeded per module)
    responses = pooled_module_outputs(model, tok, texts.texts, modules, pooling=pooling, max_length=max_length,
                                      batch_size=batch_size)
    out = {name: STATISTICS[statistic](responses.pop(name), texts.labels) for name in list(modules)}
    cache.put(key, out, {"statistic": statistic, "pooling": pooling, "n": len(texts.texts),
                         "modules": sorted(modules)})
    return out

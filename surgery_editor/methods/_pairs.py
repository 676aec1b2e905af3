"""Shared by the methods that learn from preference pairs of texts (ProFS, steering): the pairs'
pooled residual-stream states at every block, from one cached forward pass."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from ..activations import cached_pooled_block_outputs
from ..data import ProbeDataConfig, load_probe_texts

PAIRS_HELP = ("preference pairs: a pair-mode data config (path, positive_column = the dispreferred/toxic text, "
              "negative_column = the preferred/non-toxic text, limit, seed), e.g. ParaDetox")


def check_pairs_config(pairs: Any, key: str = "pairs") -> None:
    if not isinstance(pairs, Mapping):
        raise ValueError(f"{key} must be a mapping (a pair-mode data config), got {type(pairs).__name__}")
    cfg = ProbeDataConfig.from_dict(dict(pairs))
    if cfg.positive_column is None:
        raise ValueError(f"{key}: needs positive_column (toxic text) and negative_column (non-toxic text), "
                         "one pair per row")


def pair_states(model, tok, pairs: Mapping[str, Any], layers: Sequence[int], *, data_dir: Optional[str],
                pooling: str, max_length: int, batch_size: int, cache_dir: Optional[str]
                ) -> Tuple[Dict[int, torch.Tensor], Dict[int, torch.Tensor], int]:
    """``(toxic, non_toxic, n)``: per layer, ``(n, d)`` pooled block outputs of the pairs' two
    texts, row i of both from the same pair."""
    texts = load_probe_texts(dict(pairs), data_dir)
    n = int(texts.labels.sum())
    if not (texts.labels[:n] == 1).all() or len(texts.texts) != 2 * n:
        raise ValueError(f"{texts.source}: expected pairs (positive_column/negative_column), got labelled rows")
    feats = cached_pooled_block_outputs(model, tok, texts.texts, texts.content_hash(), layers, pooling=pooling,
                                        max_length=max_length, batch_size=batch_size, cache_dir=cache_dir)
    return {i: f[:n] for i, f in feats.items()}, {i: f[n:] for i, f in feats.items()}, n

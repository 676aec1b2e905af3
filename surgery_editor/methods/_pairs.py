"""Shared by the methods that learn from preference pairs of texts (ProFS, steering): the pairs'
pooled residual-stream states at every block, from one cached forward pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from ..activations import cached_pooled_block_outputs
from ..data import ProbeDataConfig, load_probe_texts
from ..hparams import EasyEditKeys, _help

PAIRS_HELP = ("preference pairs: a pair-mode data config (path, positive_column = the dispreferred/toxic text, "
              "negative_column = the preferred/non-toxic text, limit, seed), e.g. ParaDetox")


def check_pairs_config(pairs: Any, key: str = "pairs") -> None:
    if not isinstance(pairs, Mapping):
        raise ValueError(f"{key} must be a mapping (a pair-mode data config), got {type(pairs).__name__}")
    cfg = ProbeDataConfig.from_dict(dict(pairs))
    if cfg.positive_column is None:
        raise ValueError(f"{key}: needs positive_column (toxic text) and negative_column (non-toxic text), "
                         "one pair per row")


@dataclass
class PairMethodKeys(EasyEditKeys):
    """The settings every method learning from text pairs shares (ProFS, steering): where the
    pairs are and how their states are read, plus the seed of the method's random control."""

    pairs: Dict[str, Any] = _help(PAIRS_HELP, {"path": "paradetox/paradetox.tsv", "positive_column": "toxic",
                                               "negative_column": "neutral1", "limit": 500})
    data_dir: Optional[str] = _help("root for relative data paths (default: $SURGERY_EDITOR_DATA_DIR, else ../shared/data)",
                                    None)
    pooling: str = _help("'mean' over real tokens, or 'rms_mean' (each token state scaled to unit RMS first)", "mean")
    embed_max_length: int = _help("pair texts are truncated to this many tokens (ProFS paper: 128)", 128)
    activation_batch_size: int = _help("texts per forward pass", 32)
    seed: int = _help("seed of the random control", 0)
    cache_dir: Optional[str] = _help("activation cache (default: $SURGERY_EDITOR_CACHE or ~/.cache/surgery_editor)",
                                     None)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_choice("pooling", ("mean", "rms_mean"))
        self.check_range("embed_max_length", 1)
        self.check_range("activation_batch_size", 1)
        check_pairs_config(self.pairs)

    def check_data(self) -> None:
        """The pairs are read as :meth:`states` reads them (a missing file or column, or no
        pair left, is an error naming the file)."""
        self.pair_count()

    def pair_count(self) -> int:
        """The number of pairs :meth:`states` embeds."""
        return int(load_probe_texts(dict(self.pairs), self.data_dir).labels.sum())

    def states(self, model, tok, layers: Sequence[int]):
        """:func:`pair_states` with these settings."""
        return pair_states(model, tok, self.pairs, layers, data_dir=self.data_dir, pooling=self.pooling,
                           max_length=self.embed_max_length, batch_size=self.activation_batch_size,
                           cache_dir=self.cache_dir)


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

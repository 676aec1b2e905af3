"""ProFS's settings (EasyEdit-style keys, checked on load)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List

from ...hparams import _help
from .._pairs import PairMethodKeys


ALG_NAME = "ProFS"


@dataclass
class ProFSHyperParams(PairMethodKeys):
    ALG_NAME: ClassVar[str] = ALG_NAME

    layers: List[int] = _help("blocks whose MLP output matrix is projected (paper, GPT-2 medium: 10..23 of 24)",
                              [])
    rank: int = _help("dimension k of the toxic subspace per layer (paper: 2 for GPT-2, 10 for 7B models)", 2)
    centering: bool = _help("remove the top singular vector of the non-toxic embeddings first (paper: true)", True)
    strength: float = _help("s in W <- (I - s U U^T) W; 1 = ProFS's projection", 1.0)
    subspace: str = _help("'toxic' (the method) or 'random' (control: same rank, seeded random directions)", "toxic")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_choice("subspace", ("toxic", "random"))
        self.check_range("rank", 1)
        self.check_range("strength", 0, 1, low_open=True)
        if not self.layers:
            raise ValueError("layers must list at least one block, e.g. [15, 16, ..., 29]")

    def check_data(self) -> None:
        """The pairs, at least ``rank`` of them for the toxic subspace (the random control
        reads none)."""
        if self.subspace == "toxic":
            n = self.pair_count()
            if n < self.rank:
                raise ValueError(f"pairs {self.pairs.get('path')!r}: {n} pair(s), fewer than rank={self.rank}; "
                                 "a rank-k toxic subspace needs at least k pairs")

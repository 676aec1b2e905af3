"""steer's settings (EasyEdit-style keys, checked on load)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...hparams import _help
from .._pairs import PairMethodKeys


ALG_NAME = "steer"
@dataclass
class SteerHyperParams(PairMethodKeys):
    ALG_NAME: ClassVar[str] = ALG_NAME

    layer: int = _help("the vector is added to the residual stream after this block; -1 = at the embedding output", 6)
    scale: float = _help("v = -scale * (mean toxic - mean non-toxic state); 0 < scale", 4.0)
    direction: str = _help("'mean_difference' (the method) or 'random' (control: same norm, seeded direction)",
                           "mean_difference")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_choice("direction", ("mean_difference", "random"))
        self.check_range("scale", 0, low_open=True)
        self.check_range("layer", -1)

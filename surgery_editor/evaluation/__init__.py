"""Evaluation: generation (:mod:`.generation`, :mod:`.sampling`), text and model metrics
(:mod:`.metrics`), RealToxicityPrompts (:mod:`.rtp`), the toxicity and safety judges
(:mod:`.judges`) and paired statistics (:mod:`.statistics`). The names below are re-exported so
that ``surgery_editor.evaluation.generate`` and the like stay where they were."""

from __future__ import annotations

from .generation import (cut_at_stop, format_prompts, generate, generate_shared_prefix, prefix_groups, sample,
                         tokenize_prompts, uses_chat)
from .metrics import (FLUENCY_INSTRUCTIONS, answer_token_accuracy, distinct_n, fluency_check, load_ppl_texts,
                      ngram_entropy, perplexity, repetition_rate)
from .rtp import RTP_DEFAULT_PATH, ToxicityResult, load_rtp_prompts, rtp_toxicity
from .statistics import mcnemar_exact

__all__ = [
    "uses_chat", "format_prompts", "cut_at_stop", "generate", "tokenize_prompts", "prefix_groups",
    "generate_shared_prefix", "sample", "FLUENCY_INSTRUCTIONS", "distinct_n", "repetition_rate", "ngram_entropy",
    "perplexity", "answer_token_accuracy", "fluency_check", "load_ppl_texts", "RTP_DEFAULT_PATH",
    "load_rtp_prompts", "ToxicityResult", "rtp_toxicity", "mcnemar_exact"
]

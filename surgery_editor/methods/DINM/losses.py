"""Tokenisation of prompt + response and DINM's two losses: the safe response's NLL and the KL
constraint on the knowledge prompt."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...activations import model_device
from .requests import _locality


def _join(prompt: str, response: str) -> str:
    if not prompt or not response or prompt[-1].isspace() or response[0].isspace():
        return prompt + response
    return prompt + " " + response


def encode_prompt_response(tok, prompt: str, response: str,
                           max_length: Optional[int] = None) -> Tuple[torch.Tensor, int]:
    """``(ids (1, N), start)``: ``prompt + ' ' + response`` tokenised together; tokens
    ``start:`` are the response's.

    ``start`` is the length of the common prefix of the prompt's and the full text's tokens,
    so a token merged across the boundary counts as response. When ``N > max_length`` the
    prompt loses tokens from its start (a leading BOS is kept): SafeEdit's harmful question
    sits at the end of the adversarial prompt.
    """
    p_ids = tok(prompt)["input_ids"]
    f_ids = list(tok(_join(prompt, response))["input_ids"])
    start = 0
    for a, b in zip(p_ids, f_ids):
        if a != b:
            break
        start += 1
    if start >= len(f_ids):
        raise ValueError(f"response {response[:40]!r} gives no tokens after the prompt")
    if max_length is not None and len(f_ids) > max_length:
        bos = getattr(tok, "bos_token_id", None)
        head = 1 if (bos is not None and f_ids[0] == bos) else 0
        excess = len(f_ids) - max_length
        if start - head - excess < 1:
            raise ValueError(f"response of {len(f_ids) - start} tokens does not fit in max_length={max_length} "
                             "with at least one prompt token")
        f_ids = f_ids[:head] + f_ids[head + excess:]
        start -= excess
    if start < 1:
        raise ValueError("the prompt gives no tokens; the response needs a context to be predicted from")
    return torch.tensor([f_ids], dtype=torch.long), start


def _keep_kwargs(model: nn.Module, n: int) -> Dict[str, Any]:
    """``logits_to_keep=n`` for models that take it (the LM head then skips the other positions)."""
    try:
        takes = "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        takes = False
    return {"logits_to_keep": n} if takes else {}


def _tail_logits(model: nn.Module, ids: torch.Tensor, n: int) -> torch.Tensor:
    """float32 logits of the last ``n`` positions, ``(n, vocab)``."""
    out = model(input_ids=ids, use_cache=False, **_keep_kwargs(model, n))
    return out.logits[0, -n:].float()


@dataclass
class _Encoded:
    edit_ids: torch.Tensor  # prompt + safe response
    edit_start: int
    loc_ids: torch.Tensor  # locality prompt + answer
    loc_start: int
    base_logprobs: Optional[torch.Tensor] = None  # original model, positions predicting the answer


def _encode_request(model: nn.Module, tok, request: Mapping[str, Any], max_length: Optional[int]) -> _Encoded:
    device = model_device(model)
    edit_ids, edit_start = encode_prompt_response(tok, request["prompt"], request["target_new"], max_length)
    loc_prompt, loc_answer = _locality(request)
    loc_ids, loc_start = encode_prompt_response(tok, loc_prompt, loc_answer, max_length)
    return _Encoded(edit_ids.to(device), edit_start, loc_ids.to(device), loc_start)


def target_nll(model: nn.Module, ids: torch.Tensor, start: int) -> torch.Tensor:
    """Mean negative log-likelihood of tokens ``ids[0, start:]`` given what precedes them."""
    n = ids.shape[1] - start
    logits = _tail_logits(model, ids, n + 1)[:-1]
    return F.cross_entropy(logits, ids[0, start:])


def constraint_logprobs(model: nn.Module, ids: torch.Tensor, start: int) -> torch.Tensor:
    """Next-token log-probabilities at the positions that predict ``ids[0, start:]``."""
    n = ids.shape[1] - start
    return torch.log_softmax(_tail_logits(model, ids, n + 1)[:-1], dim=-1)


def constraint_kl(model: nn.Module, ids: torch.Tensor, start: int, base_logprobs: torch.Tensor) -> torch.Tensor:
    """``KL(original || edited)`` of the next-token distributions at the positions predicting
    the knowledge-constraint answer ``ids[0, start:]``, averaged over those positions
    (differentiable; ``base_logprobs``: :func:`constraint_logprobs` of the original model)."""
    post = constraint_logprobs(model, ids, start)
    return (base_logprobs.exp() * (base_logprobs - post)).sum(-1).mean()

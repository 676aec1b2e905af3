"""Mean-pooled hidden states of a frozen model: the probe's features.

Forward passes only, under ``torch.inference_mode()``, batched, texts sorted by length to
waste little on padding, through the model's base (decoder) module so the LM head is not
computed. Results are cached on disk keyed by model weights, layer, pooling, truncation,
tokenizer and the texts themselves.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .cache import TensorCache, config_hash, stable_hash, weights_fingerprint

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "rms_mean")


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def ensure_pad_token(tok) -> None:
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise ValueError("tokenizer has neither a pad nor an eos token; set tok.pad_token first")
        tok.pad_token = tok.eos_token


def _decoder(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) else model


@torch.inference_mode()
def pooled_hidden_states(
    model: nn.Module,
    tok,
    texts: Sequence[str],
    layer: int = -1,
    pooling: str = "mean",
    max_length: int = 128,
    batch_size: int = 32,
    show_progress: bool = True,
) -> torch.Tensor:
    """``(len(texts), d)`` float32 features: hidden_states[layer] pooled over real tokens.

    ``pooling='mean'`` averages the hidden state over non-padding tokens (paper);
    ``'rms_mean'`` averages ``h / rms(h)`` (each token scaled to unit RMS first), which keeps
    a few massive-activation dimensions of middle layers from dominating the mean.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not valid; choose one of {list(POOLINGS)}")
    if len(texts) == 0:
        raise ValueError("no texts to embed (empty probe data)")
    ensure_pad_token(tok)
    device = model_device(model)
    decoder = _decoder(model)
    lengths = [len(t) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    out: List[Optional[torch.Tensor]] = [None] * len(texts)
    empty: List[int] = []
    batches = range(0, len(order), batch_size)
    side = tok.padding_side
    for start in tqdm(batches, desc="probe activations", disable=not show_progress, leave=False):
        idx = order[start : start + batch_size]
        tok.padding_side = "right"  # real tokens keep positions 0..n-1 whatever the batch
        try:
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                      max_length=max_length)
        finally:
            tok.padding_side = side
        mask = enc["attention_mask"].to(device)
        n_tokens = mask.sum(dim=1)
        empty += [i for i, n in zip(idx, n_tokens.tolist()) if n == 0]
        hidden = decoder(input_ids=enc["input_ids"].to(device), attention_mask=mask,
                         output_hidden_states=True, use_cache=False).hidden_states
        try:
            h = hidden[layer].float()
        except IndexError:
            raise ValueError(f"probe_layer={layer} is out of range: the model returns {len(hidden)} hidden states "
                             f"(valid: -{len(hidden)}..{len(hidden) - 1})") from None
        if pooling == "rms_mean":
            h = h * torch.rsqrt(h.square().mean(dim=-1, keepdim=True) + 1e-6)
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(dim=1) / n_tokens.clamp(min=1).unsqueeze(-1).to(h.dtype)
        for j, i in enumerate(idx):
            out[i] = pooled[j].cpu()
    if empty:
        shown = ", ".join(f"{i}: {texts[i]!r}" for i in empty[:5])
        raise ValueError(f"{len(empty)} probe text(s) have no tokens (all padding), e.g. {shown}; "
                         "drop empty texts from the probe data")
    return torch.stack(out)  # type: ignore[arg-type]


def activation_key(model: nn.Module, tok, layer: int, pooling: str, max_length: int, data_hash: str,
                   fingerprint: Optional[str] = None) -> str:
    return stable_hash({
        "config": config_hash(model),
        "weights": fingerprint or weights_fingerprint(model),
        "tokenizer": [getattr(tok, "name_or_path", ""), len(tok), tok.pad_token],
        "layer": layer, "pooling": pooling, "max_length": max_length, "data": data_hash,
    })


def cached_pooled_hidden_states(model, tok, texts, data_hash: str, *, layer: int, pooling: str,
                                max_length: int, batch_size: int, cache_dir: Optional[str] = None,
                                fingerprint: Optional[str] = None, use_cache: bool = True) -> torch.Tensor:
    """:func:`pooled_hidden_states`, read from / written to the activation cache."""
    ensure_pad_token(tok)
    cache = TensorCache("activations", cache_dir, enabled=use_cache)
    key = activation_key(model, tok, layer, pooling, max_length, data_hash, fingerprint)
    hit = cache.get(key)
    if hit is not None and hit[0]["features"].shape[0] == len(texts):
        logger.info("probe activations: cache hit %s", cache.path(key))
        return hit[0]["features"]
    feats = pooled_hidden_states(model, tok, texts, layer=layer, pooling=pooling, max_length=max_length,
                                 batch_size=batch_size)
    cache.put(key, {"features": feats}, {"layer": layer, "pooling": pooling, "n": len(texts)})
    return feats

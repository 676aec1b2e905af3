"""Mean-pooled hidden states of a frozen model: the probe's features.

Forward passes only, under ``torch.inference_mode()``, batched, texts sorted by length to
waste little on padding, through the model's base (decoder) module so the LM head is not
computed. Results are cached on disk keyed by model weights, layer, pooling, truncation,
tokenizer and the texts themselves.
"""

from __future__ import annotations

import logging
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from .architectures import hidden_size, num_layers
from .infra.cache import TensorCache, config_hash, stable_hash, weights_fingerprint

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "rms_mean", "last", "max")
# where pooled_block_outputs reads: a block's output (the residual stream after it), or the
# input of its MLP as the gate sees it (the output of the norm in front of the MLP)
SITES = ("block_out", "mlp_in")


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


def _right_padded_batches(tok, texts: Sequence[str], max_length: int, batch_size: int, device, desc: str,
                          show_progress: bool) -> Iterator[Tuple[List[int], dict, torch.Tensor]]:
    """``(indices, encoding, attention mask)`` per batch, texts sorted longest first (little
    padding), padded on the right (real tokens keep positions 0..n-1 whatever the batch).
    A text with no tokens is an error naming it."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    side = tok.padding_side
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not show_progress, leave=False):
        idx = order[start : start + batch_size]
        tok.padding_side = "right"
        try:
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                      max_length=max_length)
        finally:
            tok.padding_side = side
        mask = enc["attention_mask"].to(device)
        empty = [i for i, n in zip(idx, mask.sum(dim=1).tolist()) if n == 0]
        if empty:
            shown = ", ".join(f"{i}: {texts[i]!r}" for i in empty[:5])
            raise ValueError(f"{len(empty)} probe text(s) have no tokens (all padding), e.g. {shown}; "
                             "drop empty texts from the probe data")
        yield idx, enc, mask


def _pool(h: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Mean over real tokens of ``h`` (``rms_mean``: of ``h / rms(h)``; ``last``: the last real
    token's state, which predicts what comes next; ``max``: each unit's largest value over the
    real tokens), float32. Padding is on the right."""
    h = h.float()
    if pooling == "max":
        return h.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(dim=1)
    if pooling == "last":
        last = mask.sum(dim=1).long().clamp(min=1) - 1
        return h[torch.arange(h.shape[0], device=h.device), last.to(h.device)]
    if pooling == "rms_mean":
        h = h * torch.rsqrt(h.square().mean(dim=-1, keepdim=True) + 1e-6)
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


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
    a few massive-activation dimensions of middle layers from dominating the mean. The last
    entry (``layer`` -1, the final norm's output) is read as the decoder's
    ``last_hidden_state``, so a batch never holds every layer's hidden states at once.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not valid; choose one of {list(POOLINGS)}")
    if len(texts) == 0:
        raise ValueError("no texts to embed (empty probe data)")
    n_states = num_layers(model) + 1
    if not -n_states <= layer < n_states:
        raise ValueError(f"probe_layer={layer} is out of range: the model returns {n_states} hidden states "
                         f"(valid: -{n_states}..{n_states - 1})")
    last = layer in (-1, n_states - 1)
    ensure_pad_token(tok)
    device = model_device(model)
    decoder = _decoder(model)
    out = torch.empty(len(texts), hidden_size(model))
    for idx, enc, mask in _right_padded_batches(tok, texts, max_length, batch_size, device, "probe activations",
                                                show_progress):
        res = decoder(input_ids=enc["input_ids"].to(device), attention_mask=mask, output_hidden_states=not last,
                      use_cache=False)
        h = res.last_hidden_state if last else res.hidden_states[layer]
        out[idx] = _pool(h, mask, pooling).cpu()
    return out


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


@torch.inference_mode()
def pooled_block_outputs(model: nn.Module, tok, texts: Sequence[str], layers: Sequence[int], *,
                         pooling: str = "mean", max_length: int = 128, batch_size: int = 32,
                         show_progress: bool = True, site: str = "block_out") -> dict:
    """``{layer: (len(texts), d) float32}``: the output of decoder block ``layer`` (the residual
    stream after it, before any final norm: ``hidden_states[layer + 1]`` for every block but the
    last, whose ``hidden_states`` entry has the final norm applied) pooled over real tokens, for
    all ``layers`` from one forward pass per batch (forward hooks on the blocks). ``layer = -1``
    gives the embedding output (``hidden_states[0]``).

    ``site='mlp_in'``: instead, the input of block ``layer``'s MLP as its gate reads it (the
    output of the norm in front of the MLP, ``γ_l ⊙ x/rms(x)`` for RMSNorm models)."""
    layers = sorted(set(int(i) for i in layers))
    stacked = _pooled_block_stack(model, tok, texts, layers, pooling=pooling, max_length=max_length,
                                  batch_size=batch_size, show_progress=show_progress, site=site)
    return {i: stacked[j] for j, i in enumerate(layers)}


@torch.inference_mode()
def _pooled_block_stack(model: nn.Module, tok, texts: Sequence[str], layers: Sequence[int], *, pooling: str,
                        max_length: int, batch_size: int, show_progress: bool, site: str) -> torch.Tensor:
    """:func:`pooled_block_outputs` as one ``(len(layers), len(texts), d)`` float32 CPU tensor
    (``layers`` sorted), filled in place: every layer of a batch is pooled on the model's device
    and copied to the host in one transfer, and no second copy of the result is made. States are
    read by hooks (the embedding output as the first block's input), so the forward pass never
    keeps every layer's hidden states at once."""
    from .architectures import get_module, layer_module, resolve_spec

    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not valid; choose one of {list(POOLINGS)}")
    if len(texts) == 0:
        raise ValueError("no texts to embed")
    if site not in SITES:
        raise ValueError(f"site={site!r} is not valid; choose one of {list(SITES)}")
    if site == "mlp_in" and any(i < 0 for i in layers):
        raise ValueError(f"site='mlp_in' reads blocks 0..n-1, got layers {list(layers)}")
    spec = resolve_spec(model)
    ensure_pad_token(tok)
    device = model_device(model)
    decoder = _decoder(model)
    captured: dict = {}

    def hook(layer):
        def fn(_module, _inputs, output):
            captured[layer] = output[0] if isinstance(output, tuple) else output
        return fn

    def module(i):
        if site == "block_out":
            return layer_module(model, spec, i)
        if not spec.mlp_norm_tmp:
            raise ValueError("site='mlp_in' needs the norm in front of each MLP: set `mlp_norm_tmp`")
        return get_module(model, spec.mlp_norm_tmp.format(i), "norm in front of the MLP")

    def embedding_output(_module, args, kwargs):  # the first block's input is hidden_states[0]
        captured[-1] = args[0] if args else kwargs["hidden_states"]

    handles = [module(i).register_forward_hook(hook(i)) for i in layers if i >= 0]
    if -1 in layers:
        handles.append(layer_module(model, spec, 0).register_forward_pre_hook(embedding_output, with_kwargs=True))
    out = torch.empty(len(layers), len(texts), hidden_size(model))
    try:
        for idx, enc, mask in _right_padded_batches(tok, texts, max_length, batch_size, device, "block outputs",
                                                    show_progress):
            decoder(input_ids=enc["input_ids"].to(device), attention_mask=mask, use_cache=False)
            out[:, idx] = torch.stack([_pool(captured[i], mask, pooling) for i in layers]).cpu()
            captured.clear()
    finally:
        for handle in handles:
            handle.remove()
    return out


def cached_pooled_block_outputs(model, tok, texts: Sequence[str], data_hash: str, layers: Sequence[int], *,
                                pooling: str, max_length: int, batch_size: int,
                                cache_dir: Optional[str] = None, site: str = "block_out",
                                fingerprint: Optional[str] = None) -> dict:
    """:func:`pooled_block_outputs` for every block at once, read from / written to the
    activation cache, so another layer choice, rank or scale costs no forward pass
    (``fingerprint``: the model's weights fingerprint when the caller has it already)."""
    from .architectures import num_layers

    ensure_pad_token(tok)
    cache = TensorCache("block_outputs", cache_dir)
    first = -1 if site == "block_out" else 0  # block outputs include the embeddings (-1)
    key = activation_key(model, tok, "all-blocks" if site == "block_out" else f"all-blocks:{site}", pooling,
                         max_length, data_hash, fingerprint)
    hit = cache.get(key)
    all_layers = list(range(first, num_layers(model)))
    if hit is None or hit[0]["features"].shape[1] != len(texts):
        stacked = _pooled_block_stack(model, tok, texts, all_layers, pooling=pooling, max_length=max_length,
                                      batch_size=batch_size, show_progress=True, site=site)  # index 0 = `first`
        cache.put(key, {"features": stacked}, {"pooling": pooling, "site": site, "n": len(texts)})
    else:
        logger.info("%s: cache hit %s", site, cache.path(key))
        stacked = hit[0]["features"]
    bad = [i for i in layers if not first <= int(i) < all_layers[-1] + 1]
    if bad:
        valid = f"0..{all_layers[-1]}" + (" (-1 = embeddings)" if first == -1 else "")
        raise ValueError(f"layer(s) {bad} out of range: blocks are {valid}")
    return {int(i): stacked[int(i) - first] for i in layers}


@torch.inference_mode()
def pooled_module_outputs(model: nn.Module, tok, texts: Sequence[str], modules: Mapping[str, nn.Module], *,
                          pooling: str = "max", max_length: int = 128, batch_size: int = 32,
                          show_progress: bool = True) -> Dict[str, torch.Tensor]:
    """``{name: (len(texts), width) float32}``: the output of each of ``modules`` (``name`` ->
    module, e.g. MLP projections) pooled over each text's real tokens (:data:`POOLINGS`), all
    from one forward pass per batch (forward hooks)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not valid; choose one of {list(POOLINGS)}")
    if len(texts) == 0:
        raise ValueError("no texts to embed")
    ensure_pad_token(tok)
    device = model_device(model)
    decoder = _decoder(model)
    batch: dict = {}
    out: Dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_module, _inputs, output):  # pooled at once: a batch never holds every module's output
            pooled = _pool(output[0] if isinstance(output, tuple) else output, batch["mask"], pooling).cpu()
            if name not in out:
                out[name] = torch.empty(len(texts), pooled.shape[-1])
            out[name][batch["idx"]] = pooled
        return fn

    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        for idx, enc, mask in _right_padded_batches(tok, texts, max_length, batch_size, device, "module outputs",
                                                    show_progress):
            batch.update(idx=idx, mask=mask)
            decoder(input_ids=enc["input_ids"].to(device), attention_mask=mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return out


"""Toxic-layer location: the layer whose hidden states differ most between the safe and the
unsafe response."""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Tuple

import torch
from torch import nn

from ...activations import ensure_pad_token, model_device
from .hparams import LOCATE_MEASURES
from .losses import _keep_kwargs, encode_prompt_response


logger = logging.getLogger(__name__)


@torch.no_grad()
def _hidden_states(model: nn.Module, **inputs) -> Tuple[torch.Tensor, ...]:
    out = model(**inputs, output_hidden_states=True, use_cache=False, **_keep_kwargs(model, 1))
    if out.hidden_states is None:
        raise ValueError("the model returned no hidden_states; it must accept output_hidden_states=True")
    return out.hidden_states


def layer_distances(model: nn.Module, tok, request: Mapping[str, Any], measure: str = "response_mean",
                    max_length: Optional[int] = None) -> torch.Tensor:
    """float32 ``(n_layers,)``: how much layer ``l``'s hidden states differ between the safe
    and the unsafe response to the request's adversarial prompt.

    Layer ``l``'s hidden state is ``hidden_states[l + 1]`` of a transformers forward pass (the
    output of decoder layer ``l``; for the last layer transformers returns it after the final
    norm) -- the entries and the indexing EasyEdit's ``SafetyEditor._locate_toxic_layer`` uses.

    ``measure='response_mean'`` (default; the paper's "adversarial input + safe / unsafe
    response"): the text ``prompt + ' ' + response`` is run once with the safe
    (``target_new``) and once with the unsafe (``ground_truth``) response; each run's hidden
    states are averaged over the response's tokens (the prompt's positions are identical in
    both runs of a causal model, so they carry no difference), and the distance is the L2
    norm of the difference of the two means. Averaging makes responses of different lengths
    comparable.

    ``measure='easyedit'``: EasyEdit's measure -- the two responses *without* the prompt,
    tokenised together (padded with the tokenizer's padding side), the Frobenius norm of the
    difference of the two ``(positions, d)`` hidden-state blocks, padding positions included.
    It gives the same layer as EasyEdit's ``_locate_toxic_layer``.
    """
    if measure not in LOCATE_MEASURES:
        raise ValueError(f"measure={measure!r} is not valid; choose one of {list(LOCATE_MEASURES)}")
    for key in ("prompt", "target_new", "ground_truth"):
        if not isinstance(request.get(key), str) or not request[key].strip():
            raise ValueError(f"locating the toxic layer needs a non-empty string {key!r} in the request")
    device = model_device(model)
    if measure == "easyedit":
        ensure_pad_token(tok)
        enc = tok([request["target_new"], request["ground_truth"]], return_tensors="pt", padding=True,
                  truncation=True)
        hs = _hidden_states(model, input_ids=enc["input_ids"].to(device),
                            attention_mask=enc["attention_mask"].to(device))
        return torch.stack([(h[0].float() - h[1].float()).flatten().norm() for h in hs[1:]]).cpu()
    means = []
    for response in (request["target_new"], request["ground_truth"]):
        ids, start = encode_prompt_response(tok, request["prompt"], response, max_length)
        hs = _hidden_states(model, input_ids=ids.to(device))
        means.append(torch.stack([h[0, start:].float().mean(0) for h in hs[1:]]))
    return (means[0] - means[1]).norm(dim=-1).cpu()


def locate_toxic_layer(model: nn.Module, tok, request: Mapping[str, Any], measure: str = "response_mean",
                       max_length: Optional[int] = None) -> int:
    """The toxic layer of one request: ``argmax`` of :func:`layer_distances` (the first
    layer on a tie, as EasyEdit's strict ``>`` scan)."""
    dist = layer_distances(model, tok, request, measure=measure, max_length=max_length)
    layer = int(torch.argmax(dist))
    logger.info("DINM: toxic layer %d (distance %.4g; measure %s)", layer, float(dist[layer]), measure)
    return layer

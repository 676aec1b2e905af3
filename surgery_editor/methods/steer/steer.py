"""Activation steering as a revertible weight edit (ActAdd, Turner et al. 2023; contrastive
activation addition, Rimsky et al. 2024).

From the same preference pairs as ProFS: the steering vector is
``v = −scale · (mean_i h_l(toxic_i) − mean_i h_l(non-toxic_i))``, where ``h_l`` is the residual
stream after block ``l`` (``layer``) mean-pooled over a text's tokens; ``v`` is added to the
residual stream after block ``l`` at every position of every input.

How it becomes a weight edit: the vector goes into the bias of block ``l``'s MLP output
projection (``down_proj``; GPT-2's ``c_proj``), whose output is added straight to the residual
stream. Llama-style models have no bias there: the edit creates one (zeros + ``v``) and
``weights_copy`` holds zeros for it, so EasyEdit's restore loop leaves a zero bias whose outputs
are bit-identical to the model without one (tested); :func:`remove_created_bias` takes it away.
Gemma-2/3 normalise the MLP (and attention) output before adding it to the residual stream, so
no bias adds a constant there; for them, ``layer: -1`` puts ``v`` into every row of the input
embedding (divided by the embedding's ``embed_scale``), i.e. steering at the embedding output.
With tied input/output embeddings that also adds ``h·v/scale`` to every logit of a position
alike, which leaves the next-token distribution unchanged.

``direction: random`` is the control: a seeded random direction of the same norm as ``v``.
"""

from __future__ import annotations

import logging
from typing import Any, Dict

import torch
from torch import nn

from ... import architectures as arch
from .._common import keep_weights, originals, restore_weights, start_edit
from .hparams import SteerHyperParams


logger = logging.getLogger(__name__)


CREATED_BIAS = "_surgery_editor_created_bias"  # marks a bias this method added to a module without one


def steering_vector(model: nn.Module, tok, hparams: SteerHyperParams) -> torch.Tensor:
    """The fp32 ``(d,)`` vector added to the residual stream (the control's when ``direction: random``)."""
    n_layers = arch.num_layers(model)
    if not -1 <= hparams.layer < n_layers:
        raise ValueError(f"layer {hparams.layer} out of range: -1 (embeddings) .. {n_layers - 1}")
    toxic, non_toxic, n = hparams.states(model, tok, [hparams.layer])
    v = -hparams.scale * (toxic[hparams.layer].mean(0) - non_toxic[hparams.layer].mean(0))
    if hparams.direction == "random":
        gen = torch.Generator().manual_seed(hparams.seed)
        r = torch.randn(v.shape, generator=gen)
        v = r / r.norm() * v.norm()
    logger.info("steer: %d pairs, layer %d, |v| = %.3f (%s)", n, hparams.layer, float(v.norm()), hparams.direction)
    return v.float()


def steering_parameter(model: nn.Module, spec: arch.ArchSpec, layer: int) -> str:
    """Name of the parameter the vector goes into (the bias is created when missing)."""
    if layer == -1:
        return f"{spec.embed_module}.weight"
    if spec.mlp_out_norm_tmp:
        raise ValueError(f"layer {layer}: this model ({model.config.model_type}) normalises the MLP output "
                         f"({spec.mlp_out_norm_tmp.format(layer)}) before adding it to the residual stream, so no "
                         "bias adds a constant there; use layer: -1 (the embedding output)")
    module = arch.mlp_out_module(model, spec, layer)
    if getattr(module, "bias", None) is None:
        out_features = module.weight.shape[1] if spec.mlp_out_transposed else module.weight.shape[0]
        module.bias = nn.Parameter(torch.zeros(out_features, dtype=module.weight.dtype, device=module.weight.device),
                                   requires_grad=module.weight.requires_grad)
        setattr(module, CREATED_BIAS, True)
    return f"{spec.mlp_out_tmp.format(layer)}.bias"


def remove_created_bias(model: nn.Module) -> int:
    """Drop the biases this method created (after a restore); returns how many."""
    removed = 0
    for module in model.modules():
        if getattr(module, CREATED_BIAS, False):
            module.bias = None
            delattr(module, CREATED_BIAS)
            removed += 1
    return removed


@torch.no_grad()
def apply_steer_to_model(model: nn.Module, tok, requests: Any, hparams: SteerHyperParams, copy: bool = False,
                         return_orig_weights: bool = False, keep_original_weight: bool = False, **kwargs: Any):
    """EasyEdit entry point: add the steering vector as a weight (see the module docstring).
    ``requests`` are not used (the vector comes from the method's pairs)."""
    model = start_edit(model, copy)
    spec = arch.resolve_spec(model)
    v = steering_vector(model, tok, hparams)
    name = steering_parameter(model, spec, hparams.layer)
    weights_copy = originals(model, [name]) if keep_weights(return_orig_weights, keep_original_weight) else {}
    param = model.get_parameter(name)
    if hparams.layer == -1:
        param.data += (v / arch.embed_scale(model, spec)).to(param.device, param.dtype).unsqueeze(0)
    else:
        param.data += v.to(param.device, param.dtype)
    info = kwargs.get("info")
    if isinstance(info, dict):
        info.update({"parameter": name, "vector_norm": float(v.norm())})
    return model, weights_copy


def restore_steer(model: nn.Module, weights_copy: Dict[str, torch.Tensor]) -> None:
    """Copy ``weights_copy`` back and drop a bias the edit created: the model as it was."""
    restore_weights(model, weights_copy)
    remove_created_bias(model)

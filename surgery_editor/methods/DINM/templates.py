"""Which parameters DINM tunes: the module-name templates of the architecture and the layers."""

from __future__ import annotations

import difflib
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ... import architectures as arch
from .hparams import DINMHyperParams


def default_module_templates(model: nn.Module) -> Dict[str, Optional[str]]:
    """EasyEdit's DINM module templates for ``model``, derived from its
    :class:`~surgery_editor.architectures.ArchSpec`: the MLP is the gate projection's parent,
    and the rewrite matrix is the MLP's one projection from the intermediate width back to
    ``hidden_size`` (``down_proj``, GPT-2's ``c_proj``)."""
    spec = arch.resolve_spec(model)
    mlp_tmp = spec.gate_module_tmp.rsplit(".", 1)[0]
    layer_tmp = spec.layers_module + ".{}"
    d = arch.hidden_size(model)
    mlp = model.get_submodule(mlp_tmp.format(0))
    found = []
    for name, child in mlp.named_children():
        weight = getattr(child, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            continue
        d_out, d_in = weight.shape[::-1] if spec.rows_are_columns else weight.shape
        if d_out == d and d_in != d:
            found.append(name)
    if len(found) != 1:
        raise ValueError(f"could not tell the MLP output projection of {mlp_tmp.format(0)!r} (candidates: {found}); "
                         "set rewrite_module_tmp in the hparams YAML")
    layer = model.get_submodule(layer_tmp.format(0))
    attn = next((n for n in ("self_attn", "attn", "attention") if hasattr(layer, n)), None)
    head = model.get_output_embeddings()
    head_name = next((n for n, m in model.named_modules() if m is head), None) if head is not None else None
    return {
        "rewrite_module_tmp": f"{mlp_tmp}.{found[0]}.weight",
        "layer_module_tmp": layer_tmp,
        "mlp_module_tmp": mlp_tmp,
        "attn_module_tmp": f"{layer_tmp}.{attn}" if attn else None,
        "ln_f_module": spec.final_norm_module,
        "lm_head_module": head_name,
    }


def rewrite_param_names(model: nn.Module, hparams: DINMHyperParams, layers: Sequence[int]) -> List[str]:
    """Parameter names of the tuned matrices of ``layers`` (``rewrite_module_tmp``, or the
    derived template when it is empty)."""
    template = hparams.rewrite_module_tmp or default_module_templates(model)["rewrite_module_tmp"]
    params = dict(model.named_parameters())
    names = []
    for layer in layers:
        name = template.format(layer)
        if name not in params and name + ".weight" in params:
            name += ".weight"
        if name not in params:
            close = difflib.get_close_matches(name, list(params), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"rewrite_module_tmp={template!r} names no parameter of this model for layer {layer}: "
                             f"{name!r}{hint}")
        if params[name].dim() != 2:
            raise ValueError(f"DINM tunes a matrix; {name!r} has shape {tuple(params[name].shape)}")
        if name not in names:
            names.append(name)
    return names


def _resolve_layers(model: nn.Module, layers: Sequence[int]) -> List[int]:
    n = arch.num_layers(model)
    out = []
    for layer in layers:
        if not -n <= layer < n:
            raise ValueError(f"layer {layer} is out of range for a model with {n} layers")
        out.append(layer % n)
    return list(dict.fromkeys(out))

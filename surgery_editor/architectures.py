"""Architecture facts, in one place.

Model Surgery edits the rows of each layer's MLP *gate* projection: the matrix whose
rows are dotted with the (normalised) residual stream to decide which MLP neurons fire.
Everything the method needs to know about an architecture is one :class:`ArchSpec`:
where that matrix lives, how its rows are laid out, and which RMSNorm/LayerNorm feeds it
(only the norm-aware variant uses the norms). Interventions never name module paths.

Add a family with :func:`register_architecture`; a YAML can override any template
(``gate_module_tmp``, ``mlp_norm_tmp``, ``final_norm_module``) for a model that is not
listed, in EasyEdit's ``{}``-template style.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Dict, Optional, Tuple

import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """Where the editable matrix lives in one architecture family.

    gate_module_tmp: module path of layer ``{}``'s gate projection.
    rows_are_columns: ``True`` for GPT-2's ``Conv1D``, whose weight is stored
        ``(d_in, d_out)``: one "row" (a neuron's input weights) is then a column.
    mlp_norm_tmp: the norm whose output the gate reads (for the norm-aware variant).
    final_norm_module: the final norm (``hidden_states[-1]`` is its output).
    norm_gain_offset: the gain is ``offset + weight`` (Gemma's RMSNorm uses ``1 + w``).
    mlp_out_tmp: layer ``{}``'s MLP output ("value") projection, whose output is what the MLP
        writes (ProFS projects it; steering puts its bias there).
    mlp_out_transposed: ``True`` for GPT-2's ``Conv1D`` ``c_proj``, stored ``(d_in, d_out)``.
    mlp_out_norm_tmp: a norm between the MLP output and the residual stream (Gemma-2/3's
        ``post_feedforward_layernorm``), or ``None`` when the MLP output is added as it is.
    embed_module: the input embedding (its forward may scale by ``embed_scale``, as Gemma's does).
    mlp_up_tmp: layer ``{}``'s MLP input projection that is not a gate: a gated MLP's up
        projection (its output multiplies the activated gate), or, for a plain MLP (GPT-2),
        the input projection whose output goes through the activation (then equal to
        ``gate_module_tmp``, and the family has no separate gate). Stored like the gate
        (``rows_are_columns``).
    """

    gate_module_tmp: str
    mlp_norm_tmp: Optional[str] = None
    final_norm_module: Optional[str] = None
    layers_module: str = "model.layers"
    rows_are_columns: bool = False
    norm_gain_offset: float = 0.0
    mlp_out_tmp: Optional[str] = "model.layers.{}.mlp.down_proj"
    mlp_out_transposed: bool = False
    mlp_out_norm_tmp: Optional[str] = None
    embed_module: Optional[str] = "model.embed_tokens"
    mlp_up_tmp: Optional[str] = "model.layers.{}.mlp.up_proj"


_LLAMA_LIKE = ArchSpec(
    gate_module_tmp="model.layers.{}.mlp.gate_proj",
    mlp_norm_tmp="model.layers.{}.post_attention_layernorm",
    final_norm_module="model.norm",
)
_GEMMA = dataclasses.replace(_LLAMA_LIKE, norm_gain_offset=1.0)
_GEMMA2_3 = dataclasses.replace(
    _LLAMA_LIKE, mlp_norm_tmp="model.layers.{}.pre_feedforward_layernorm", norm_gain_offset=1.0,
    mlp_out_norm_tmp="model.layers.{}.post_feedforward_layernorm",
)
# GPT-2 has no gated MLP: we edit the first MLP projection c_fc (Conv1D, weight d x 4d),
# whose column j is neuron j's input weights; see README "Architectures".
_GPT2 = ArchSpec(
    gate_module_tmp="transformer.h.{}.mlp.c_fc",
    mlp_norm_tmp="transformer.h.{}.ln_2",
    final_norm_module="transformer.ln_f",
    layers_module="transformer.h",
    rows_are_columns=True,
    mlp_out_tmp="transformer.h.{}.mlp.c_proj",
    mlp_out_transposed=True,
    embed_module="transformer.wte",
    mlp_up_tmp="transformer.h.{}.mlp.c_fc",
)

ARCHITECTURES: Dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "granite": _LLAMA_LIKE,
    "gemma": _GEMMA,
    "gemma2": _GEMMA2_3,
    "gemma3": _GEMMA2_3,
    "gemma3_text": _GEMMA2_3,
    "gpt2": _GPT2,
}


def register_architecture(model_type: str, spec: ArchSpec, overwrite: bool = False) -> None:
    """Register the layout of a transformers ``model_type``."""
    if model_type in ARCHITECTURES and not overwrite:
        raise ValueError(f"architecture {model_type!r} is already registered; pass overwrite=True")
    ARCHITECTURES[model_type] = spec


def _get_module(model: nn.Module, path: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _config_int(model: nn.Module, *names: str) -> int:
    """The first of ``names`` the model's config (a multimodal config's text part) has."""
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    for name in names:
        if getattr(cfg, name, None):
            return int(getattr(cfg, name))
    raise ValueError(f"model config has none of {list(names)}")


def num_layers(model: nn.Module) -> int:
    return _config_int(model, "num_hidden_layers", "n_layer")


def hidden_size(model: nn.Module) -> int:
    """The residual-stream width (``hidden_size``, GPT-2's ``n_embd``; a multimodal config's text part)."""
    return _config_int(model, "hidden_size", "n_embd")


def _has_weight(model: nn.Module, path: str) -> bool:
    return getattr(_get_module(model, path), "weight", None) is not None


def resolve_spec(model: nn.Module, overrides: Optional[Dict[str, Optional[str]]] = None) -> ArchSpec:
    """The :class:`ArchSpec` of ``model``: the registered one for its ``model_type`` (for an
    unregistered type, the first known layout whose gate exists), with any non-empty template
    in ``overrides`` (``gate_module_tmp``, ``mlp_norm_tmp``, ``final_norm_module``) applied.

    Raises ``ValueError`` naming the model type and every path looked for when no gate is found.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v and k in _OVERRIDABLE}
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in ARCHITECTURES:
        candidates = [ARCHITECTURES[model_type]]
    elif "gate_module_tmp" in overrides:
        candidates = [ArchSpec(gate_module_tmp=overrides["gate_module_tmp"])]
    else:
        candidates = list(dict.fromkeys(ARCHITECTURES.values()))
    candidates = [dataclasses.replace(c, **overrides) for c in candidates]
    for spec in candidates:
        if _has_weight(model, spec.gate_module_tmp.format(0)):
            return spec
    looked_for = ", ".join(repr(c.gate_module_tmp.format(0)) for c in candidates)
    raise ValueError(
        f"no gated-MLP gate projection found in model_type={model_type!r}: looked for {looked_for}. "
        "Model Surgery edits the rows of each layer's MLP gate projection; set `gate_module_tmp` "
        "in the hparams YAML (e.g. 'model.layers.{}.mlp.gate_proj') to the module that holds it, "
        "or register the family with surgery_editor.architectures.register_architecture()."
    )


_OVERRIDABLE = {"gate_module_tmp", "mlp_norm_tmp", "final_norm_module"}


def gate_param_name(spec: ArchSpec, layer: int) -> str:
    return spec.gate_module_tmp.format(layer) + ".weight"


def gate_rows(weight: torch.Tensor, spec: ArchSpec) -> torch.Tensor:
    """A ``(n_neurons, d_model)`` view of a gate weight (no copy)."""
    return weight.t() if spec.rows_are_columns else weight


def get_module(model: nn.Module, path: str, what: str) -> nn.Module:
    """The module at ``path``, or a ``ValueError`` naming ``what`` it should be and the path."""
    module = _get_module(model, path) if path else None
    if module is None:
        raise ValueError(f"{what}: this model ({getattr(model.config, 'model_type', '?')}) has no module "
                         f"{path!r}; register its layout with register_architecture()")
    return module


def layer_module(model: nn.Module, spec: ArchSpec, layer: int) -> nn.Module:
    """Decoder block ``layer`` (its output is ``hidden_states[layer + 1]`` before any final norm)."""
    return get_module(model, f"{spec.layers_module}.{layer}", f"decoder block {layer}")


def mlp_out_module(model: nn.Module, spec: ArchSpec, layer: int) -> nn.Module:
    """Layer ``layer``'s MLP output projection (``nn.Linear`` or GPT-2's ``Conv1D``)."""
    if not spec.mlp_out_tmp:
        raise ValueError(f"no MLP output projection known for {getattr(model.config, 'model_type', '?')}")
    return get_module(model, spec.mlp_out_tmp.format(layer), "MLP output projection")


MLP_PROJECTIONS = ("gate", "up", "down")


def mlp_projections(spec: ArchSpec) -> Dict[str, Tuple[str, bool]]:
    """The MLP linear layers this architecture has, by abstract name: ``{name: (module path
    template, stored (d_in, d_out))}``. ``gate``: a gated MLP's gate (its output goes through
    the activation); ``up``: the input projection that is not a gate (a gated MLP's up
    projection; GPT-2's ``c_fc``); ``down``: the output projection."""
    found: Dict[str, Tuple[str, bool]] = {}
    if spec.mlp_up_tmp and spec.mlp_up_tmp != spec.gate_module_tmp:
        found["gate"] = (spec.gate_module_tmp, spec.rows_are_columns)
    if spec.mlp_up_tmp:
        found["up"] = (spec.mlp_up_tmp, spec.rows_are_columns)
    if spec.mlp_out_tmp:
        found["down"] = (spec.mlp_out_tmp, spec.mlp_out_transposed)
    return found


def mlp_projection(model: nn.Module, spec: ArchSpec, name: str, layer: int, key: str = "modules") -> Tuple[str, bool]:
    """``(module path, stored (d_in, d_out))`` of layer ``layer``'s MLP projection ``name`` (one of
    :data:`MLP_PROJECTIONS`), or a ``ValueError`` naming ``key``, the model type and the names
    this architecture has; the module must exist in ``model``."""
    known = mlp_projections(spec)
    if name not in known:
        raise ValueError(f"{key}: {name!r} is not an MLP projection of model_type "
                         f"{getattr(model.config, 'model_type', '?')!r}; valid: {list(known)} "
                         "(register the family's layout with register_architecture())")
    template, transposed = known[name]
    path = template.format(layer)
    get_module(model, path, f"{key}: MLP projection {name!r}")
    return path, transposed


def mlp_out_gain(model: nn.Module, spec: ArchSpec, layer: int) -> Optional[torch.Tensor]:
    """fp32 gain of the norm between layer ``layer``'s MLP output and the residual stream, or
    ``None`` where the MLP output is added unnormalised."""
    if not spec.mlp_out_norm_tmp:
        return None
    module = get_module(model, spec.mlp_out_norm_tmp.format(layer), "post-MLP norm")
    return module.weight.detach().float() + spec.norm_gain_offset


def embed_scale(model: nn.Module, spec: ArchSpec) -> float:
    """The factor the input embedding's forward multiplies rows by (Gemma: sqrt(d)), else 1."""
    module = get_module(model, spec.embed_module or "", "input embedding")
    scale = getattr(module, "embed_scale", 1.0)
    return float(scale.item() if torch.is_tensor(scale) else scale)


def norm_gain(model: nn.Module, spec: ArchSpec, layer: Optional[int]) -> torch.Tensor:
    """fp32 gain vector of the norm feeding layer ``layer``'s gate (``None``: final norm)."""
    path = spec.final_norm_module if layer is None else (spec.mlp_norm_tmp or "").format(layer)
    module = _get_module(model, path) if path else None
    weight = getattr(module, "weight", None)
    if weight is None:
        raise ValueError(
            f"norm-aware scoring needs the norm module {path!r}, which this model does not have; "
            "set `mlp_norm_tmp` / `final_norm_module` in the hparams YAML"
        )
    return weight.detach().float() + spec.norm_gain_offset

"""``ModelSurgeryHyperParams``: the Model Surgery settings, checked fields (see
:mod:`surgery_editor.hparams` for the shared loading and type checks).

A YAML in ``hparams/ModelSurgery/<model>.yaml`` holds EasyEdit's common keys
(``alg_name``, ``model_name``, ``device``, ``model_parallel``, ``max_length``,
``max_output_length``, ``batch_size``, ...) plus the method's own, documented on each field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional

from ...hparams import EasyEditKeys, _help

ALG_NAME = "ModelSurgery"

_CHOICES = {
    "probe_source": ("dataset", "request"),
    "probe_pooling": ("mean", "rms_mean", "last"),
    "probe_mode": ("single", "layerwise"),
    "layer_direction": ("mean_difference", "probe"),
    "budget": ("global", "per_layer"),
    "probe_direction": ("toxic_row", "row_difference"),
    "select": ("most_opposed", "most_aligned"),
    "scoring": ("cosine", "norm_aware", "activation_auroc", "activation_difference", "writes"),
    "neuron_pooling": ("max", "mean"),
    "step": ("absolute", "row_norm"),
    "edit_direction": ("probe", "random"),
}


@dataclass
class ModelSurgeryHyperParams(EasyEditKeys):
    ALG_NAME: ClassVar[str] = ALG_NAME

    # ---- probe ------------------------------------------------------------------------
    probe_source: str = _help(
        "'dataset': probe trained on probe_data, edit computed once and reused for every request; "
        "'request': direction from each request's own unsafe vs safe response", "dataset"
    )
    probe_data: Optional[Dict[str, Any]] = _help(
        "data-set config, see surgery_editor.data.ProbeDataConfig (path + text/label fields, or "
        "positive_column/negative_column pairs)", None
    )
    data_dir: Optional[str] = _help(
        "root for relative probe_data paths (default: $SURGERY_EDITOR_DATA_DIR, else ../shared/data)", None
    )
    probe_layer: int = _help("index into hidden_states; -1 = last entry (after the final norm)", -1)
    probe_pooling: str = _help("'mean' over non-padding tokens (paper), 'rms_mean': token mean of h/rms(h), or "
                               "'last': the last token's state", "mean")
    probe_mode: str = _help(
        "'single': one probe on hidden_states[probe_layer] scores every layer's gate rows (paper); 'layerwise': "
        "each edited layer gets its own direction, read at the input of its MLP as its gate sees it "
        "(gamma_l * x/rms(x)), and its rows are scored and moved in that space (probe_layer unused)", "single")
    layer_direction: str = _help(
        "probe_mode=layerwise: 'mean_difference' (mean of class-1 minus mean of class-0 features) or 'probe' "
        "(a linear probe per layer, its probe_direction)", "mean_difference")
    probe_max_length: int = _help("probe texts are truncated to this many tokens", 128)
    activation_batch_size: int = _help("texts per forward pass when collecting activations", 32)
    probe_lr: float = _help("Adam learning rate (paper: 1e-4)", 1e-4)
    probe_batch_size: int = _help("probe training batch size (paper: 16)", 16)
    probe_epochs: int = _help("probe training epochs (paper: 9)", 9)
    probe_val_fraction: float = _help("held-out share for probe accuracy (paper: 0.1)", 0.1)
    seed: int = _help("seed for the split, the probe init and the random control", 0)
    probe_direction: str = _help("'toxic_row': w = W[1] (paper); 'row_difference': w = W[1] - W[0]", "toxic_row")
    request_direction_norm: float = _help(
        "probe_source=request: norm given to the per-request direction h(unsafe) - h(safe)", 1.0
    )

    # ---- selection and edit -----------------------------------------------------------
    top_k: Optional[int] = _help("number of gate rows edited, over all layers (paper: 16384 on LLaMA-2-7B)", None)
    top_k_fraction: Optional[float] = _help("or: share of all candidate rows (paper: 0.0465)", None)
    alpha: float = _help("step size: row <- row + alpha * w (paper detox: 1.08); negative reverses", 1.08)
    select: str = _help("'most_opposed': top-K of -cos(row, w) (paper); 'most_aligned': top-K of +cos", "most_opposed")
    scoring: str = _help(
        "how rows are ranked (each score says how much the neuron goes with the behaviour; 'select' takes the "
        "lowest or highest): 'cosine': cos(row, w) in weight space (paper); 'norm_aware': cos(row*gain_l, w_res) "
        "through the RMSNorm gains that feed the gate and produce the probed state; by what the neuron does on "
        "probe_data: 'activation_auroc': AUROC - 0.5 of its gate response (pooled per neuron_pooling) at telling "
        "class 1 from class 0, as AurA scores neurons; 'activation_difference': its mean response on class 1 "
        "minus class 0; by what it writes: 'writes': cos(its down-projection column, w)", "cosine"
    )
    neuron_pooling: str = _help("activation_* scoring: the gate response pooled over a text's tokens, 'max' (AurA) "
                                "or 'mean'", "max")
    step: str = _help("'absolute': alpha * w (paper); 'row_norm': alpha * |row| * w/|w|", "absolute")
    budget: str = _help("'global': the top-K rows over all candidate layers (paper); 'per_layer': K split evenly "
                        "over the candidate layers, the top of each", "global")
    edit_layers: Optional[List[int]] = _help("layers whose gate rows are candidates (default: all)", None)
    edit_direction: str = _help(
        "'probe' (the method) or 'random': same rows, moved by a seeded random direction of the same "
        "norm (control)", "probe"
    )
    gain_floor: float = _help(
        "norm_aware: dimensions whose gain is below gain_floor * median(|gain|) are left unedited", 0.05
    )

    # ---- module templates (EasyEdit style; empty = detected from model_type) -----------
    gate_module_tmp: Optional[str] = _help("e.g. 'model.layers.{}.mlp.gate_proj'", None)
    mlp_norm_tmp: Optional[str] = _help("norm feeding the gate, e.g. 'model.layers.{}.post_attention_layernorm'", None)
    final_norm_module: Optional[str] = _help("final norm, e.g. 'model.norm'", None)
    cache_dir: Optional[str] = _help("activation/probe cache (default: $SURGERY_EDITOR_CACHE or ~/.cache/surgery_editor)", None)

    def __post_init__(self) -> None:
        super().__post_init__()  # alg_name and field types
        for key, choices in _CHOICES.items():
            if getattr(self, key) not in choices:
                raise ValueError(f"{key}={getattr(self, key)!r} is not valid; choose one of {list(choices)}")
        if (self.top_k is None) == (self.top_k_fraction is None):
            raise ValueError(
                "set exactly one of top_k (a count, e.g. 2143) and top_k_fraction (a share of all "
                f"candidate rows, e.g. 0.0465); got top_k={self.top_k}, top_k_fraction={self.top_k_fraction}"
            )
        if self.top_k is not None and (int(self.top_k) != self.top_k or self.top_k < 1):
            raise ValueError(f"top_k must be a positive integer, got {self.top_k!r}")
        if self.top_k_fraction is not None and not 0 < self.top_k_fraction <= 1:
            raise ValueError(f"top_k_fraction must be in (0, 1], got {self.top_k_fraction!r}")
        if not 0 <= self.probe_val_fraction < 1:
            raise ValueError(f"probe_val_fraction must be in [0, 1), got {self.probe_val_fraction!r}")
        for key in ("probe_batch_size", "probe_epochs", "probe_max_length", "activation_batch_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        if self.probe_source == "dataset" and not self.probe_data:
            raise ValueError("probe_source: dataset needs probe_data (a data-set config with at least `path`)")
        if self.probe_data is not None and not isinstance(self.probe_data, dict):
            raise ValueError(f"probe_data must be a mapping, got {type(self.probe_data).__name__}")
        if self.scoring.startswith("activation_") and self.probe_source != "dataset":
            raise ValueError(f"scoring={self.scoring!r} scores neurons on probe_data; it needs probe_source: dataset")
        if self.probe_mode == "layerwise" and self.scoring == "norm_aware":
            raise ValueError(f"scoring={self.scoring!r} does not apply to probe_mode=layerwise (its directions "
                             "already live in each gate's own input space); use scoring: cosine")
        if self.probe_mode == "layerwise" and self.probe_source != "dataset":
            raise ValueError("probe_mode=layerwise needs probe_source: dataset (a direction per layer from probe_data)")
        if self.edit_layers is not None and not all(isinstance(i, int) for i in self.edit_layers):
            raise ValueError(f"edit_layers must be a list of layer indices, got {self.edit_layers!r}")

    # ------------------------------------------------------------------------------------
    def check_data(self) -> None:
        """``probe_source: dataset``: ``probe_data`` is read and checked as the edit reads it
        (:func:`~surgery_editor.methods.ModelSurgery.surgery.probe_texts`)."""
        if self.probe_source == "dataset":
            from .surgery import probe_texts

            probe_texts(self)

    def method_key(self) -> str:
        """Hash of every field the edit depends on (not the EasyEdit runtime keys)."""
        skip = {"model_name", "device", "model_parallel", "max_length", "max_output_length", "batch_size",
                "fp16", "model_class", "tokenizer_class", "cache_dir"}
        items = {k: v for k, v in self.to_dict().items() if k not in skip}
        return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:16]

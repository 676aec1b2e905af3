"""Model Surgery (Wang et al. 2024, arXiv 2407.08770): a linear probe picks MLP gate rows, which
move along the probe direction. The implementation is the package's core
(:mod:`surgery_editor.methods.model_surgery.surgery`, :mod:`surgery_editor.hparams`, patches, probes); this folder
registers it like every other method."""

from __future__ import annotations

from .hparams import ModelSurgeryHyperParams
from .surgery import apply_model_surgery_to_model
from .. import Algorithm, register_algorithm


def _per_instance(hparams: ModelSurgeryHyperParams) -> bool:
    return hparams.probe_source == "request"


register_algorithm(Algorithm(
    name=ModelSurgeryHyperParams.ALG_NAME, hparams_cls=ModelSurgeryHyperParams, apply=apply_model_surgery_to_model,
    description="Model Surgery (Wang et al. 2024): probe-guided gate-row edit",
    per_instance=_per_instance,
    controls={"random": {"edit_direction": "random"}},
    exclusive=(("top_k", "top_k_fraction"),),
    info_keys=("probe_source", "probe_mode", "probe_layer", "probe_pooling", "top_k", "top_k_fraction", "alpha",
               "scoring", "step", "budget", "select", "edit_direction", "edit_layers"),
))

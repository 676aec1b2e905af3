"""Model Surgery (Wang et al. 2024, arXiv 2407.08770): a linear probe picks MLP gate rows, which
move along the probe direction: the probe (:mod:`.probe`), the row selection and edit
(:mod:`.surgery`), the edit as a saved, revertible patch (:mod:`.patch`), the settings
(:mod:`.hparams`). Its control, ``ModelSurgery_random`` (formerly ``random``, still accepted),
moves the same rows by the same amount along a random direction."""

from __future__ import annotations

from .. import Algorithm, Timing, register_algorithm, register_alias
from .hparams import ModelSurgeryHyperParams
from .patch import RowEdit, SurgeryPatch
from .probe import LinearProbe, train_probe
from .surgery import (apply_model_surgery_to_model, build_patch, clear_patch_cache, compute_patch, forward_floor,
                      sweep_step, train_behaviour_probe)


def _per_instance(hparams: ModelSurgeryHyperParams) -> bool:
    return hparams.probe_source == "request"


class ModelSurgeryAlgorithm(Algorithm):
    exclusive = (("top_k", "top_k_fraction"),)
    timing = Timing(data_limit="probe_data.limit", floor=forward_floor, sweep_step=sweep_step,
                    forget=clear_patch_cache)


register_algorithm(ModelSurgeryAlgorithm(
    name=ModelSurgeryHyperParams.ALG_NAME, hparams_cls=ModelSurgeryHyperParams, apply=apply_model_surgery_to_model,
    description="Model Surgery (Wang et al. 2024): probe-guided gate-row edit",
    per_instance=_per_instance,
    controls={"ModelSurgery_random": {"edit_direction": "random"}},
    info_keys=("probe_source", "probe_mode", "probe_layer", "probe_pooling", "top_k", "top_k_fraction", "alpha",
               "scoring", "neuron_pooling", "step", "budget", "select", "edit_direction", "edit_layers"),
))
register_alias("random", "ModelSurgery_random")

__all__ = ["ModelSurgeryHyperParams", "apply_model_surgery_to_model", "compute_patch", "build_patch",
           "train_behaviour_probe", "SurgeryPatch", "RowEdit", "LinearProbe", "train_probe"]

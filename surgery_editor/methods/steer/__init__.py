"""Activation steering (ActAdd / CAA) as a revertible weight edit: a mean-difference vector from
preference pairs added to the residual stream through a bias (:mod:`.steer`; settings in
:mod:`.hparams`)."""

from __future__ import annotations

from .. import Algorithm, register_algorithm
from .hparams import ALG_NAME, SteerHyperParams
from .steer import apply_steer_to_model, remove_created_bias, restore_steer, steering_vector

class SteerAlgorithm(Algorithm):
    def restore(self, model, weights_copy) -> None:
        restore_steer(model, weights_copy)  # also drops a bias the edit created


register_algorithm(SteerAlgorithm(
    name=ALG_NAME, hparams_cls=SteerHyperParams, apply=apply_steer_to_model,
    description="activation steering (ActAdd/CAA): a mean-difference vector added to the residual stream",
    controls={"steer_random": {"direction": "random"}},
    info_keys=("layer", "scale", "direction", "pooling"),
))

__all__ = ["SteerHyperParams", "apply_steer_to_model", "steering_vector", "remove_created_bias"]

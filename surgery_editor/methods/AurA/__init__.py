"""AurA (Suau et al., ICML 2024): neurons damped in proportion to how well they tell toxic from
non-toxic text (:mod:`.aura`, settings in :mod:`.hparams`)."""

from __future__ import annotations

from .. import Algorithm, register_algorithm
from .aura import apply_aura_to_model
from .hparams import ALG_NAME, AurAHyperParams

register_algorithm(Algorithm(
    name=ALG_NAME, hparams_cls=AurAHyperParams, apply=apply_aura_to_model,
    description="AurA (Suau et al. 2024): damp MLP neurons by their AUROC on toxic vs non-toxic text",
    controls={"AurA_random": {"selection": "random"}},
    info_keys=("modules", "layers", "pooling", "intervention", "num_experts", "damp_alpha", "selection"),
))

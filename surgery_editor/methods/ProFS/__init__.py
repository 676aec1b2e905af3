"""ProFS (Uppaal et al., ICLR 2025): project a toxic subspace, found from preference pairs, out
of the MLP output matrices (:mod:`.profs`; settings in :mod:`.hparams`)."""

from __future__ import annotations

from .. import Algorithm, register_algorithm
from .hparams import ALG_NAME, ProFSHyperParams
from .profs import apply_profs_to_model, compute_subspaces, output_basis, project_out, random_subspace, toxic_subspace

register_algorithm(Algorithm(
    name=ALG_NAME, hparams_cls=ProFSHyperParams, apply=apply_profs_to_model,
    description="ProFS (Uppaal et al. 2025): project a toxic subspace out of the MLP output matrices",
    controls={"ProFS_random": {"subspace": "random"}},
    info_keys=("layers", "rank", "centering", "strength", "pooling", "subspace"),
))

__all__ = ["ProFSHyperParams", "apply_profs_to_model", "toxic_subspace", "project_out", "output_basis",
           "compute_subspaces", "random_subspace"]

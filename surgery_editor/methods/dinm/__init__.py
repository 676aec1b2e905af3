"""DINM (Wang et al. 2024, SafeEdit): per instance, locate the toxic layer and tune its MLP
output matrix towards the safe response with a KL constraint (:mod:`surgery_editor.methods.dinm.dinm`).

EasyEdit has its own DINM in ``ALG_DICT``, so this registration feeds only the harness
(``in_alg_dict=False``); its ``backend`` option (``method.backend=auto|ours|easyeditor``) picks
EasyEdit's implementation when importable (``auto``) or this project's."""

from __future__ import annotations

import copy
from typing import Any, Mapping

from .dinm import DINMHyperParams, apply_dinm_to_model, dinm_backend, with_system_prompt
from .. import Algorithm, register_algorithm


def _make_apply(options: Mapping[str, Any]):
    """The harness's DINM, as EasyEdit's SafetyEditor runs it: the toxic layer located on the
    request itself, the tuning done on the request with ``suffix_system_prompt`` appended."""
    apply, locate, _cls, name = dinm_backend(options.get("backend", "auto"))

    def harness_apply(model, tok, requests, hparams, **kwargs):
        hp = copy.copy(hparams)
        if not hp.layers:
            hp.layers = [int(locate(model, tok, requests[0]))]
        suffix = _suffix(hp)
        return apply(model, tok, [with_system_prompt(r, suffix) for r in requests], hp, **kwargs)

    return harness_apply, {"dinm_backend": name}


def _suffix(hparams: DINMHyperParams) -> str:
    return getattr(hparams, "suffix_system_prompt", None) or ""


register_algorithm(Algorithm(
    name="DINM", hparams_cls=DINMHyperParams, apply=apply_dinm_to_model,
    description="DINM (Wang et al. 2024), EasyEdit's when importable",
    per_instance=lambda hparams: True,
    eval_suffix=_suffix,
    info_keys=("layers", "num_steps", "lr", "weight_decay", "kl_factor", "norm_constraint", "rewrite_module_tmp"),
    options={"backend": "auto"}, make_apply=_make_apply, in_alg_dict=False,
))

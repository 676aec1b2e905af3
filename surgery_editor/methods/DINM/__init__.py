"""DINM (Wang et al. 2024, SafeEdit): per instance, locate the toxic layer and tune its MLP
output matrix towards the safe response with a KL constraint (:mod:`.dinm`; settings in
:mod:`.hparams`, requests in :mod:`.requests`, the losses in :mod:`.losses`, the layer location
in :mod:`.locate`, the tuned parameters in :mod:`.templates`).

EasyEdit has its own DINM in ``ALG_DICT``, so this registration feeds only the harness
(``in_alg_dict=False``); its ``backend`` option (``method.backend=auto|ours|easyeditor``) picks
EasyEdit's implementation when importable (``auto``) or this project's (:mod:`.easyedit_backend`)."""

from __future__ import annotations

import copy
from typing import Any, Mapping

from .. import Algorithm, register_algorithm, register_legacy_key
from .._common import restore_weights
from .dinm import apply_dinm_to_model
from .easyedit_backend import dinm_backend
from .hparams import DINMHyperParams
from .locate import layer_distances, locate_toxic_layer
from .losses import constraint_kl, encode_prompt_response, target_nll
from .requests import request_from_safeedit, to_easyedit_request, validate_requests, with_system_prompt
from .templates import default_module_templates, rewrite_param_names


def _suffix(hparams: DINMHyperParams) -> str:
    return getattr(hparams, "suffix_system_prompt", None) or ""


class DINMAlgorithm(Algorithm):
    options = {"backend": "auto"}  # method.backend=auto|ours|easyeditor
    in_alg_dict = False  # EasyEdit has its own DINM

    def harness_apply(self, options: Mapping[str, Any]):
        """The harness's DINM, as EasyEdit's SafetyEditor runs it: the toxic layer located on the
        request itself, the tuning done on the request with ``suffix_system_prompt`` appended."""
        apply, locate, _cls, name = dinm_backend(options.get("backend", "auto"))

        def harness_apply(model, tok, requests, hparams, **kwargs):
            hp = copy.copy(hparams)
            if not hp.layers:
                hp.layers = [int(locate(model, tok, requests[0]))]
            suffix = _suffix(hp)
            return apply(model, tok, [with_system_prompt(r, suffix) for r in requests], hp, **kwargs)

        return harness_apply, {"backend": name}

    def eval_suffix(self, hparams: DINMHyperParams) -> str:
        return _suffix(hparams)


register_algorithm(DINMAlgorithm(
    name="DINM", hparams_cls=DINMHyperParams, apply=apply_dinm_to_model,
    description="DINM (Wang et al. 2024), EasyEdit's when importable",
    per_instance=lambda hparams: True,
    info_keys=("layers", "num_steps", "lr", "weight_decay", "kl_factor", "norm_constraint", "rewrite_module_tmp"),
))

# runs made before the backend became an edit fact recorded it at the top of metrics.json
register_legacy_key("dinm_backend", "edit_facts.backend")

__all__ = [
    "DINMHyperParams", "apply_dinm_to_model", "locate_toxic_layer", "layer_distances", "restore_weights",
    "dinm_backend", "validate_requests", "request_from_safeedit", "with_system_prompt", "to_easyedit_request",
    "default_module_templates", "rewrite_param_names", "encode_prompt_response", "target_nll", "constraint_kl",
]

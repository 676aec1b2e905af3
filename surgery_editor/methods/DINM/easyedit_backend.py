"""EasyEdit's own DINM as the harness's backend: used when a real ``easyeditor`` is importable
(``backend=auto``), else this package's implementation."""

from __future__ import annotations

import copy as copy_module
import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Tuple

from torch import nn

from ...activations import ensure_pad_token, model_device
from .dinm import apply_dinm_to_model
from .hparams import DINMHyperParams, TEMPLATE_KEYS
from .locate import locate_toxic_layer
from .requests import to_easyedit_request, validate_requests
from .templates import default_module_templates


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _EasyEditDINM:
    apply: Callable[..., Any]
    hparams_cls: type
    locate_method: Callable[..., Any]  # SafetyEditor._locate_toxic_layer (an unbound function)


def _load_easyedit_dinm() -> _EasyEditDINM:
    """EasyEdit's DINM pieces, or ``EasyEditUnavailable`` saying why (the import goes through
    :func:`surgery_editor.integration.easyedit_compat.import_easyeditor_alg_dict`, which copes with the
    torchvision-op failure of CPU-only torch)."""
    import importlib

    from ...integration.easyedit_compat import EasyEditUnavailable, import_easyeditor_alg_dict

    alg_dict = import_easyeditor_alg_dict()
    if "DINM" not in getattr(alg_dict, "ALG_DICT", {}):
        raise EasyEditUnavailable("the importable easyeditor has no DINM in ALG_DICT")
    try:
        dinm = importlib.import_module("easyeditor.models.dinm")
        safety = importlib.import_module("easyeditor.editors.safety_editor")
        return _EasyEditDINM(dinm.apply_dinm_to_model, dinm.DINMHyperParams,
                             safety.SafetyEditor._locate_toxic_layer)
    except Exception as err:  # noqa: BLE001 - any failure means "not usable"
        raise EasyEditUnavailable(f"easyeditor's DINM could not be imported ({type(err).__name__}: {err})") from err


def _easyedit_locate_fn(ee: _EasyEditDINM) -> Callable[..., int]:
    def locate(model: nn.Module, tok, request: Mapping[str, Any], **_: Any) -> int:
        """EasyEdit's ``SafetyEditor._locate_toxic_layer`` for one request, called without an
        editor (it reads only ``self.hparams.device``); the model's config is switched to
        ``output_hidden_states`` for the call, as SafetyEditor loads its models."""
        validate_requests([request], need_ground_truth=True)
        ensure_pad_token(tok)
        stand_in = SimpleNamespace(hparams=SimpleNamespace(device=model_device(model)))
        config = model.config
        before = config.output_hidden_states
        config.output_hidden_states = True
        try:
            layer = int(ee.locate_method(stand_in, model, tok, [dict(request)])[0])
        finally:
            config.output_hidden_states = before
        logger.info("DINM (easyeditor): toxic layer %d", layer)
        return layer

    return locate


def _easyedit_apply_fn(ee: _EasyEditDINM, locate: Callable[..., int]) -> Callable[..., Any]:
    def apply(model: nn.Module, tok, requests, hparams, copy: bool = False, return_orig_weights: bool = False,
              keep_original_weight: bool = False, **kwargs: Any):
        """EasyEdit's ``apply_dinm_to_model`` with this module's conventions: flat requests get
        EasyEdit's nested ``locality`` entry; empty ``hparams.layers`` are located per request
        (EasyEdit's locate) and empty module templates derived (:func:`default_module_templates`),
        both on a copy of ``hparams``; ``weights_copy`` is returned whenever
        either flag is set (EasyEdit itself needs both); ``requires_grad`` flags are restored."""
        reqs = validate_requests(requests, need_ground_truth=not hparams.layers)
        missing = [k for k in TEMPLATE_KEYS if not getattr(hparams, k, None)]
        if not hparams.layers or missing:
            hparams = copy_module.copy(hparams)
            for key in missing:  # EasyEdit formats them all
                setattr(hparams, key, default_module_templates(model)[key])
            if not hparams.layers:
                hparams.layers = list(dict.fromkeys(locate(model, tok, r) for r in reqs))
        ensure_pad_token(tok)
        info = kwargs.pop("info", None)
        if isinstance(info, dict):
            info["layers"] = list(hparams.layers)
        keep = return_orig_weights or keep_original_weight
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        try:
            edited, weights_copy = ee.apply(model, tok, [to_easyedit_request(r) for r in reqs], hparams, copy=copy,
                                            return_orig_weights=keep, keep_original_weight=keep, **kwargs)
        finally:  # EasyEdit leaves requires_grad switched off on every other parameter
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])
        if edited is not model:
            for n, p in edited.named_parameters():
                p.requires_grad_(flags.get(n, p.requires_grad))
        return edited, weights_copy

    apply.__wrapped__ = ee.apply  # type: ignore[attr-defined]
    return apply


def dinm_backend(prefer: str = "auto") -> Tuple[Callable[..., Any], Callable[..., int], type, str]:
    """``(apply_fn, locate_fn, hparams_cls, name)`` of the DINM implementation to run.

    ``prefer='auto'``: EasyEdit's own DINM (``name='easyeditor'``) when a real ``easyeditor``
    with DINM is importable, else this module's (``name='surgery_editor'``);
    ``'easyeditor'`` requires EasyEdit (``EasyEditUnavailable`` otherwise); ``'ours'`` (or
    ``'surgery_editor'``) never imports it. ``apply_fn`` has EasyEdit's
    ``apply_dinm_to_model`` signature and ``locate_fn(model, tok, request) -> int``; for
    EasyEdit they wrap its ``apply_dinm_to_model`` and ``SafetyEditor._locate_toxic_layer``.
    """
    if prefer not in ("auto", "ours", "surgery_editor", "easyeditor"):
        raise ValueError(f"prefer={prefer!r} is not valid; choose 'auto', 'ours' or 'easyeditor'")
    if prefer != "ours" and prefer != "surgery_editor":
        from ...integration.easyedit_compat import EasyEditUnavailable

        try:
            ee = _load_easyedit_dinm()
        except EasyEditUnavailable as err:
            if prefer == "easyeditor":
                raise EasyEditUnavailable(f"dinm_backend('easyeditor'): {err}") from err
            logger.info("DINM backend: surgery_editor (EasyEdit unavailable: %s)", err)
        else:
            locate = _easyedit_locate_fn(ee)
            logger.info("DINM backend: easyeditor")
            return _easyedit_apply_fn(ee, locate), locate, ee.hparams_cls, "easyeditor"
    return apply_dinm_to_model, locate_toxic_layer, DINMHyperParams, "surgery_editor"


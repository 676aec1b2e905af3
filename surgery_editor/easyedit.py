"""EasyEdit plugin: ``import surgery_editor.easyedit`` registers ``ModelSurgery``.

EasyEdit's editors (``BaseEditor``, ``SafetyEditor``) look an algorithm up with
``ALG_DICT[hparams.alg_name]`` in ``easyeditor.util.alg_dict``, and hold a reference to
that same dict object; :func:`register` therefore adds ``ModelSurgery`` to it *in place*, so
editors built afterwards run :func:`~surgery_editor.apply_model_surgery_to_model`.
It also makes :class:`~surgery_editor.ModelSurgeryHyperParams` a subclass of EasyEdit's
``HyperParams``.

EasyEdit is installed from its source (``git clone`` of zjunlp/EasyEdit, then put it on
``PYTHONPATH`` or ``pip install -e``); the PyPI ``easyeditor`` is a 2023 build without
SafetyEditor or DINM. Without EasyEdit, importing this module logs that registration was
skipped and the rest of ``surgery_editor`` works; calling :func:`register` raises
:class:`EasyEditUnavailable` with the reason.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, MutableMapping, Optional

import torch

from .hparams import ALG_NAME, ModelSurgeryHyperParams, _HyperParamsBase
from .surgery import apply_model_surgery_to_model

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "install EasyEdit from its source (clone zjunlp/EasyEdit and add it to PYTHONPATH, or `pip install -e` it); "
    "the PyPI package `easyeditor` is a stale 2023 build without SafetyEditor/DINM"
)

# torchvision's CPU-less PyPI wheels register fake kernels for these ops at import time and
# fail when the C++ ops are missing; declaring their schemas (no kernels) lets it import.
_TORCHVISION_OPS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_torchvision_fragment: Optional[torch.library.Library] = None


class EasyEditUnavailable(ImportError):
    """EasyEdit (``easyeditor`` with ``util.alg_dict``) cannot be imported."""


def _declare_torchvision_ops() -> None:
    global _torchvision_fragment
    for name, schema in _TORCHVISION_OPS.items():
        try:
            torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        except RuntimeError:
            if _torchvision_fragment is None:
                _torchvision_fragment = torch.library.Library("torchvision", "FRAGMENT")
            _torchvision_fragment.define(name + schema)


def import_easyeditor_alg_dict():
    """``easyeditor.util.alg_dict`` or :class:`EasyEditUnavailable` saying why."""
    try:
        return importlib.import_module("easyeditor.util.alg_dict")
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "easyeditor":
            raise EasyEditUnavailable(f"easyeditor is not installed: {INSTALL_HINT}") from err
        error: Exception = err
    except Exception as err:  # noqa: BLE001 - EasyEdit's import chain raises many kinds
        error = err
    if "torchvision::" in str(error):
        logger.info("declaring torchvision ops missing from a CPU-only torch before importing easyeditor")
        _declare_torchvision_ops()
        try:
            return importlib.import_module("easyeditor.util.alg_dict")
        except Exception as err:  # noqa: BLE001
            error = err
    raise EasyEditUnavailable(f"easyeditor could not be imported ({type(error).__name__}: {error}); "
                              f"{INSTALL_HINT}") from error


def _adopt_easyedit_hyperparams() -> None:
    try:
        base = importlib.import_module("easyeditor.util.hparams").HyperParams
    except Exception as err:  # noqa: BLE001
        logger.warning("could not import easyeditor.util.hparams.HyperParams: %s", err)
        return
    if not issubclass(ModelSurgeryHyperParams, base):
        ModelSurgeryHyperParams.__bases__ = (_HyperParamsBase, base)


def register(alg_dict: Optional[MutableMapping[str, Any]] = None) -> MutableMapping[str, Any]:
    """Add ``ModelSurgery`` to EasyEdit's ``ALG_DICT`` in place and return that dict.

    ``alg_dict`` defaults to ``easyeditor.util.alg_dict.ALG_DICT``; pass another mapping to
    register into it instead (no EasyEdit needed).
    """
    if alg_dict is None:
        alg_dict = import_easyeditor_alg_dict().ALG_DICT
        _adopt_easyedit_hyperparams()
    alg_dict[ALG_NAME] = apply_model_surgery_to_model
    logger.info("registered %s in EasyEdit's ALG_DICT", ALG_NAME)
    return alg_dict


REGISTERED: bool
try:
    register()
    REGISTERED = True
except EasyEditUnavailable as _err:
    REGISTERED = False
    logger.warning("ModelSurgery not registered with EasyEdit: %s", _err)

__all__ = ["register", "EasyEditUnavailable", "REGISTERED", "ModelSurgeryHyperParams",
           "apply_model_surgery_to_model"]

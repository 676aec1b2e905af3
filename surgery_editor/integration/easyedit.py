"""EasyEdit plugin: ``import surgery_editor.easyedit`` registers this project's methods.

EasyEdit's editors (``BaseEditor``, ``SafetyEditor``) look an algorithm up with
``ALG_DICT[hparams.alg_name]`` in ``easyeditor.util.alg_dict``, and hold a reference to
that same dict object; :func:`register` therefore adds every method registered in
:mod:`surgery_editor.methods` (``ModelSurgery``, ``ProFS``, ``steer``, ``prompt``, ``DPO``; not
DINM, which EasyEdit has itself) to it *in place*, so editors built afterwards run them. It also
makes each method's hparams class a subclass of EasyEdit's ``HyperParams``.

Import this module before ``easyeditor``: on a CPU-only torch, PyPI's torchvision (which
``easyeditor`` imports) fails to load its operators; the import here prepares it
(:func:`surgery_editor.integration.easyedit_compat.prepare_torchvision`, a no-op where torchvision is
whole), and cleans up after a failed ``import easyeditor`` made earlier.

EasyEdit is installed from its source (``git clone`` of zjunlp/EasyEdit, then put it on
``PYTHONPATH`` or ``pip install -e``); the PyPI ``easyeditor`` is a 2023 build without
SafetyEditor or DINM. When EasyEdit cannot be imported, importing this module warns
(``warnings.warn``) that ``ModelSurgery`` was not registered and the rest of ``surgery_editor``
works; calling :func:`register` raises :class:`EasyEditUnavailable` with the reason.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from typing import Any, MutableMapping, Optional

from .easyedit_compat import INSTALL_HINT, EasyEditUnavailable, import_easyeditor_alg_dict, prepare_torchvision
from ..methods.ModelSurgery.hparams import ModelSurgeryHyperParams
from ..methods import load_methods
from ..methods.ModelSurgery.surgery import apply_model_surgery_to_model

logger = logging.getLogger(__name__)


def _adopt_easyedit_hyperparams(classes) -> None:
    try:
        base = importlib.import_module("easyeditor.util.hparams").HyperParams
    except Exception as err:  # noqa: BLE001
        logger.warning("could not import easyeditor.util.hparams.HyperParams: %s", err)
        return
    for cls in classes:
        if not issubclass(cls, base):
            cls.__bases__ = cls.__bases__ + (base,)


def register(alg_dict: Optional[MutableMapping[str, Any]] = None) -> MutableMapping[str, Any]:
    """Add every registered method (but DINM, EasyEdit's own) to EasyEdit's ``ALG_DICT`` in
    place and return that dict.

    ``alg_dict`` defaults to ``easyeditor.util.alg_dict.ALG_DICT``; pass another mapping to
    register into it instead (no EasyEdit needed).
    """
    algorithms = [a for a in load_methods().values() if a.in_alg_dict]
    if alg_dict is None:
        alg_dict = import_easyeditor_alg_dict().ALG_DICT
        _adopt_easyedit_hyperparams([a.hparams_cls for a in algorithms])
    for algo in algorithms:
        alg_dict[algo.name] = algo.apply
    logger.info("registered %s in EasyEdit's ALG_DICT", [a.name for a in algorithms])
    return alg_dict


REGISTERED: bool
try:
    register()
    REGISTERED = True
except EasyEditUnavailable as _err:
    REGISTERED = False
    warnings.warn(f"ModelSurgery (and this project's other methods) not registered with EasyEdit: {_err}",
                  RuntimeWarning, stacklevel=2)

__all__ = ["register", "EasyEditUnavailable", "REGISTERED", "ModelSurgeryHyperParams",
           "apply_model_surgery_to_model", "import_easyeditor_alg_dict", "prepare_torchvision"]

"""Importing a real EasyEdit (``easyeditor``) without registering anything.

:func:`import_easyeditor_alg_dict` is what :mod:`surgery_editor.easyedit` (the plugin) and the
DINM backend use. It copes with the one failure every CPU-only install of EasyEdit hits:
``easyeditor`` imports torchvision (through transformers' ``AutoProcessor`` and timm), and
PyPI's torchvision wheel is a CUDA build whose C++ operators do not load next to the CPU torch
wheel, so ``import torchvision`` fails with ``RuntimeError: operator torchvision::nms does not
exist``. Depending on the transformers version, that error reaches the caller as itself or as
the ``__cause__`` of ``ModuleNotFoundError: Could not import module 'AutoProcessor'``.

:func:`prepare_torchvision` imports torchvision on its own first; only when that fails with
this error does it declare the two operator schemas torchvision's fake kernels need
(``torchvision::nms``, ``torchvision::qnms``; declarations without kernels: nothing in EasyEdit's
text editors runs them), drop the half-imported ``torchvision.*`` modules and import it again.
Where torchvision is whole (a matching CPU or GPU build), or absent, it changes nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from typing import Iterable, Iterator, Optional

import torch

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "install EasyEdit from its source (clone zjunlp/EasyEdit and add it to PYTHONPATH, or `pip install -e` it); "
    "the PyPI package `easyeditor` is a stale 2023 build without SafetyEditor/DINM"
)

# The operators whose fake kernels torchvision registers at import (torchvision/_meta_registrations.py).
TORCHVISION_OPS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_torchvision_fragment: Optional[torch.library.Library] = None


class EasyEditUnavailable(ImportError):
    """EasyEdit (``easyeditor`` with ``util.alg_dict``) cannot be imported."""


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from or during, outermost first."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def is_torchvision_op_error(err: BaseException) -> bool:
    """Whether ``err`` (or anything in its chain) is torchvision's missing-operator failure."""
    return any("torchvision::" in str(e) for e in _chain(err))


def root_cause(err: BaseException) -> BaseException:
    *_, last = _chain(err)
    return last


def _has_schema(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def declare_torchvision_ops() -> list:
    """Declare the schemas of :data:`TORCHVISION_OPS` that do not exist yet; returns their names."""
    global _torchvision_fragment
    declared = []
    for name, schema in TORCHVISION_OPS.items():
        if not _has_schema(name):
            if _torchvision_fragment is None:
                _torchvision_fragment = torch.library.Library("torchvision", "FRAGMENT")
            _torchvision_fragment.define(name + schema)
            declared.append(name)
    return declared


def _forget_modules(packages: Iterable[str]) -> None:
    """Drop half-imported modules of ``packages`` so the next import starts clean."""
    packages = tuple(packages)  # (a None entry blocks an import on purpose and stays)
    for name in [m for m, mod in sys.modules.items() if m.split(".")[0] in packages and mod is not None]:
        del sys.modules[name]


def prepare_torchvision() -> bool:
    """Make ``import torchvision`` work on a CPU-only torch whose torchvision lacks its C++ ops.

    Returns True when the operator schemas had to be declared; False when torchvision is not
    installed, already imported, or imports as it is. Any other torchvision failure propagates.
    """
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision")
        return False
    except Exception as err:  # noqa: BLE001 - only one failure is handled, the rest re-raised
        if not is_torchvision_op_error(err):
            raise
        logger.info("torchvision's C++ operators are missing (%s); declaring their schemas", root_cause(err))
    _forget_modules(["torchvision"])
    declare_torchvision_ops()
    importlib.import_module("torchvision")
    return True


def _import_alg_dict():
    try:
        return importlib.import_module("easyeditor.util.alg_dict")
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "easyeditor":
            raise EasyEditUnavailable(f"easyeditor is not installed: {INSTALL_HINT}") from err
        raise


def import_easyeditor_alg_dict():
    """``easyeditor.util.alg_dict`` (the module whose ``ALG_DICT`` editors use), or
    :class:`EasyEditUnavailable` saying why. Half-imported ``easyeditor.*`` modules left by an
    earlier failed import (for instance a user's own ``import easyeditor`` before this) are
    dropped first, so a retry does not reuse them."""
    loaded = sys.modules.get("easyeditor.util.alg_dict")
    if loaded is not None and sys.modules.get("easyeditor") is not None:  # imported whole before
        return loaded
    _forget_modules(["easyeditor"])
    try:
        prepare_torchvision()
    except Exception as err:  # noqa: BLE001 - report below if easyeditor then fails too
        logger.info("torchvision could not be prepared: %s: %s", type(err).__name__, err)
    try:
        return _import_alg_dict()
    except EasyEditUnavailable:
        raise
    except Exception as err:  # noqa: BLE001 - EasyEdit's import chain raises many kinds
        error: BaseException = err
    if is_torchvision_op_error(error):  # torchvision was imported broken before we could prepare it
        _forget_modules(["easyeditor", "torchvision"])
        declare_torchvision_ops()
        try:
            return _import_alg_dict()
        except Exception as err:  # noqa: BLE001
            error = err
    _forget_modules(["easyeditor"])
    cause = root_cause(error)
    because = f" (caused by {type(cause).__name__}: {cause})" if cause is not error else ""
    raise EasyEditUnavailable(f"easyeditor could not be imported ({type(error).__name__}: {error}{because}); "
                              f"{INSTALL_HINT}") from error


__all__ = ["EasyEditUnavailable", "INSTALL_HINT", "import_easyeditor_alg_dict", "prepare_torchvision",
           "declare_torchvision_ops", "is_torchvision_op_error"]

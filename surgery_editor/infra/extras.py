"""Optional dependencies: the editing methods and the EasyEdit plugin need only the packages
``pip install surgery_editor`` brings; the rest come with an extra (setup.cfg): ``embedded``
(the GGUF models), ``dpo`` (trl, peft), ``harness`` (judges, lm-eval, plots), ``hub``, ``gemma``.
:func:`require` imports a module of an extra where it is used, and fails with the command that
installs it."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """A module of one of the package's extras is not installed."""


def install_command(extra: str) -> str:
    return f'pip install "surgery_editor[{extra}]"'


def require(module: str, extra: str, what: str) -> ModuleType:
    """``import module``, or :class:`MissingExtra` saying that ``what`` needs it and how to
    install it (the extra ``extra``)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if isinstance(err, MissingExtra):
            raise
        raise MissingExtra(f"{what} needs the package {module.split('.')[0]!r} ({type(err).__name__}: {err}); "
                           f"install it with: {install_command(extra)}") from err

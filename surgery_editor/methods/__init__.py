"""Editing methods: one folder each, registering itself here.

A method is a subpackage of ``surgery_editor.methods`` named as its ``alg_name``
(``ModelSurgery/``, ``DINM/``, ``ProFS/``, ``steer/``, ``prompt/``, ``DPO/``): an ``__init__.py``
that registers it, an ``hparams.py`` and the method's own modules. It defines an EasyEdit-style hparams
dataclass (``ALG_NAME`` = its ``alg_name``, fields checked on load) and an
``apply_<alg>_to_model(model, tok, requests, hparams, copy=False, return_orig_weights=False,
keep_original_weight=False, **kwargs) -> (model, weights_copy)``, and calls
:func:`register_algorithm` with an :class:`Algorithm`. That one registry feeds both
EasyEdit's ``ALG_DICT`` (:func:`surgery_editor.easyedit.register`) and the benchmark harness's
Hydra ``method`` group (``benchmarks/methods.py``); neither names a method.

Adding a method: a new folder here with its ``__init__.py`` calling ``register_algorithm`` (the
folders are found by listing this package: no list names them), and its YAMLs in ``hparams/<ALG_NAME>/<model>.yaml``. Methods outside this package register
the same way and are picked up if imported before the harness builds its config (or listed in
``$SURGERY_EDITOR_PLUGINS``, comma-separated module names).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import pkgutil
import warnings
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from ..infra.registry import lookup, register

logger = logging.getLogger(__name__)


def _never(hparams: Any) -> bool:
    return False


def _no_suffix(hparams: Any) -> str:
    return ""


@dataclasses.dataclass(frozen=True)
class InputTransform:
    """How a prompt-only method changes what the model reads (no weight change).

    ``system``: the system message of chat-formatted inputs; ``prefix``: text before a raw
    (non-chat) input; ``suffix``: text after an instruction (a chat user turn or a raw
    instruction such as a SafeEdit query), never after a text to be continued (RTP, ToxiGen)."""

    system: str = ""
    prefix: str = ""
    suffix: str = ""

    def instruction(self, text: str) -> str:
        """A raw instruction input (no chat template)."""
        return f"{self.prefix}{text}{self.suffix}"

    def continuation(self, text: str) -> str:
        """A raw text to be continued."""
        return f"{self.prefix}{text}"

    def user_turn(self, text: str) -> str:
        """The user message of a chat input (the system message goes separately)."""
        return f"{text}{self.suffix}"


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """One editing method, as EasyEdit and the harness see it.

    name: ``alg_name`` and the harness's ``method=<name>``.
    hparams_cls: the hparams dataclass (``ALG_NAME == name``; ``from_hparams`` reads a YAML).
    apply: ``apply_<alg>_to_model`` with EasyEdit's signature.
    description: one line for listings.
    per_instance: ``hparams -> bool``: whether an edit depends on the request (then the
        harness edits and restores around every SafeEdit instance, and edits once with one
        SafeEdit record elsewhere) or is made once per run from the method's own data.
    controls: control variants run as methods of their own: ``{name: fixed hparams}``, e.g.
        ``{"ProFS_random": {"subspace": "random"}}`` (same size, random direction).
    exclusive: groups of hparams keys of which a YAML sets one (a Hydra override of one clears
        the others), e.g. ``(("top_k", "top_k_fraction"),)``.
    info_keys: hparams recorded in each run's ``metrics.json``.
    eval_suffix: ``hparams -> str`` appended to SafeEdit inputs after the edit (DINM's protocol).
    input_transform: ``hparams -> InputTransform`` for methods that change the inputs instead of
        (or besides) the weights; ``None`` for weight edits.
    options: harness options this method takes from ``method.<key>`` (e.g. DINM's ``backend``)
        with their defaults; ``make_apply(options) -> (apply, facts)`` builds the apply function
        from them, ``facts`` (a dict) being recorded in the run's ``metrics.json``.
    restore: ``(model, weights_copy) -> None`` when undoing the edit needs more than copying
        ``weights_copy`` back (steering removes the bias it created); ``None``: copy back.
    in_alg_dict: registered into EasyEdit's ``ALG_DICT`` (False where EasyEdit has its own, DINM).
    """

    name: str
    hparams_cls: type
    apply: Callable[..., Tuple[Any, Dict[str, Any]]]
    description: str = ""
    per_instance: Callable[[Any], bool] = _never
    controls: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    exclusive: Tuple[Tuple[str, ...], ...] = ()
    info_keys: Sequence[str] = ()
    eval_suffix: Callable[[Any], str] = _no_suffix
    input_transform: Optional[Callable[[Any], InputTransform]] = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    make_apply: Optional[Callable[[Mapping[str, Any]], Tuple[Callable[..., Any], Dict[str, Any]]]] = None
    restore: Optional[Callable[[Any, Dict[str, Any]], None]] = None
    in_alg_dict: bool = True

    def __post_init__(self) -> None:
        if getattr(self.hparams_cls, "ALG_NAME", None) != self.name:
            raise ValueError(f"algorithm {self.name!r}: {self.hparams_cls.__name__}.ALG_NAME is "
                             f"{getattr(self.hparams_cls, 'ALG_NAME', None)!r}, expected {self.name!r}")


ALGORITHMS: Dict[str, Algorithm] = {}
ALIASES: Dict[str, str] = {}  # a former name of a method or control -> its name now


def register_algorithm(algorithm: Algorithm) -> Algorithm:
    """Add a method to the registry (a name registered twice is an error)."""
    return register(ALGORITHMS, algorithm.name, algorithm, "algorithm")


def register_alias(old: str, new: str) -> None:
    """Keep a former name working: ``method=<old>`` runs ``new``, and run directories recorded
    under ``old`` read (and are reported) as ``new``."""
    register(ALIASES, old, new, "method alias")


def canonical_name(name: str) -> str:
    """The name a method or control has now (``random`` -> ``ModelSurgery_random``)."""
    load_methods()
    return ALIASES.get(name, name)


def get_algorithm(name: str) -> Algorithm:
    load_methods()
    return lookup(ALGORITHMS, name, "algorithm")


_LOADED = False


def load_methods() -> Dict[str, Algorithm]:
    """Import every method folder of this package (and ``$SURGERY_EDITOR_PLUGINS``) once; a
    folder that fails to import is skipped with a warning naming it and the error."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        names = [f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__) if m.ispkg]
        names += [n.strip() for n in os.environ.get("SURGERY_EDITOR_PLUGINS", "").split(",") if n.strip()]
        for module in names:
            try:
                importlib.import_module(module)
            except Exception as err:  # noqa: BLE001 - one broken method must not hide the others
                warnings.warn(f"editing method {module} not registered: {type(err).__name__}: {err}",
                              RuntimeWarning, stacklevel=2)
    return ALGORITHMS


__all__ = ["Algorithm", "InputTransform", "ALGORITHMS", "ALIASES", "register_algorithm", "register_alias",
           "canonical_name", "get_algorithm", "load_methods"]

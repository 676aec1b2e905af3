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
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Sequence, Tuple

from ..infra.registry import lookup, register

logger = logging.getLogger(__name__)


def _never(hparams: Any) -> bool:
    return False


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
class Timing:
    """What timing a method's edit needs beyond ``apply`` (``python -m benchmarks.perf``).

    data_limit: the dotted setting that caps how many pairs of its own data an edit reads
        (``probe_data.limit``), varied to time the edit at several data sizes.
    floor: ``(model, tok, hparams, limit) -> items``: the forward passes alone over the first
        ``limit`` (``None``: all) texts of that data, the least an edit from them costs; returns
        how many texts it read.
    sweep_step: ``hparams -> {setting: value}``: a sweep step's settings, another edit that reuses
        what the first one cached on disk.
    forget: drop what the method memoises in memory, so that the next edit starts cold.
    """

    data_limit: str
    floor: Callable[..., int]
    sweep_step: Callable[[Any], Dict[str, Any]]
    forget: Callable[[], None]


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """One editing method, as EasyEdit and the harness see it: what every method has.

    name: ``alg_name`` and the harness's ``method=<name>``.
    hparams_cls: the hparams dataclass (``ALG_NAME == name``; ``from_hparams`` reads a YAML).
    apply: ``apply_<alg>_to_model`` with EasyEdit's signature.
    description: one line for listings.
    per_instance: ``hparams -> bool``: whether an edit depends on the request (then the
        harness edits and restores around every SafeEdit instance, and edits once with one
        SafeEdit record elsewhere) or is made once per run from the method's own data.
    controls: control variants run as methods of their own: ``{name: fixed hparams}``, e.g.
        ``{"ProFS_random": {"subspace": "random"}}`` (same size, random direction).
    info_keys: hparams recorded in each run's ``metrics.json``.

    What only some methods need, a method states in a subclass of its own (the defaults below
    are a weight edit with nothing special): :attr:`options` and :meth:`harness_apply` (harness
    options such as DINM's ``backend``), :attr:`exclusive` (hparams keys a YAML sets one of),
    :meth:`eval_suffix`, :meth:`input_transform` (prompt methods), :meth:`restore` (an undo
    beyond copying the weights back), :attr:`in_alg_dict` (False where EasyEdit has its own),
    :attr:`timing` (what timing its edit against its floor needs).
    """

    name: str
    hparams_cls: type
    apply: Callable[..., Tuple[Any, Dict[str, Any]]]
    description: str = ""
    per_instance: Callable[[Any], bool] = _never
    controls: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    info_keys: Sequence[str] = ()

    # harness options this method takes from ``method.<key>``, with their defaults
    options: ClassVar[Mapping[str, Any]] = {}
    # groups of hparams keys of which a YAML sets one (a Hydra override of one clears the others)
    exclusive: ClassVar[Tuple[Tuple[str, ...], ...]] = ()
    # registered into EasyEdit's ``ALG_DICT``
    in_alg_dict: ClassVar[bool] = True
    # what timing an edit against the forward passes it needs takes (None: not timed that way)
    timing: ClassVar[Optional[Timing]] = None

    def __post_init__(self) -> None:
        if getattr(self.hparams_cls, "ALG_NAME", None) != self.name:
            raise ValueError(f"algorithm {self.name!r}: {self.hparams_cls.__name__}.ALG_NAME is "
                             f"{getattr(self.hparams_cls, 'ALG_NAME', None)!r}, expected {self.name!r}")

    def harness_apply(self, options: Mapping[str, Any]) -> Tuple[Callable[..., Any], Dict[str, Any]]:
        """``(apply, facts)`` for the harness given :attr:`options`; ``facts`` are recorded with
        the run's edit facts (``edit_facts`` in ``metrics.json``)."""
        return self.apply, {}

    def eval_suffix(self, hparams: Any) -> str:
        """Text appended to SafeEdit inputs after the edit (DINM's protocol)."""
        return ""

    def input_transform(self, hparams: Any) -> Optional[InputTransform]:
        """How the method changes what the model reads (prompt methods); ``None``: it does not."""
        return None

    def restore(self, model: Any, weights_copy: Mapping[str, Any]) -> None:
        """Undo the edit: copy ``weights_copy`` back."""
        from ._common import restore_weights

        restore_weights(model, weights_copy)


ALGORITHMS: Dict[str, Algorithm] = {}
ALIASES: Dict[str, str] = {}  # a former name of a method or control -> its name now
LEGACY_KEYS: Dict[str, str] = {}  # a key of older runs' metrics -> where it is now ("a.b": key b of a)


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


def register_legacy_key(old: str, new: str) -> None:
    """A key a method's runs recorded at the top of ``metrics.json`` before it moved to ``new``
    (e.g. ``dinm_backend`` -> ``edit_facts.backend``): :func:`current_record` moves it."""
    register(LEGACY_KEYS, old, new, "legacy metrics key")


def current_record(metrics: Mapping[str, Any]) -> Dict[str, Any]:
    """A run's ``metrics.json`` as runs record it now: a method recorded under a former name
    (``random``) under its name now, in ``method`` and at the start of ``label``; a legacy key
    moved where it is now (a null one dropped). The one place that reads older runs."""
    load_methods()
    data = dict(metrics)
    old = data.get("method")
    new = ALIASES.get(old, old) if isinstance(old, str) else old
    if new != old:
        data["method"] = new
        label = data.get("label")
        if isinstance(label, str) and (label == old or label.startswith((f"{old} ", f"{old}["))):
            data["label"] = new + label[len(old):]
    for key, target in LEGACY_KEYS.items():
        if key in data:
            value = data.pop(key)
            if value is not None:
                head, _, tail = target.partition(".")
                if tail:
                    data[head] = {**(data.get(head) or {}), tail: value}
                else:
                    data[head] = value
    return data


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


__all__ = ["Algorithm", "InputTransform", "Timing", "ALGORITHMS", "ALIASES", "LEGACY_KEYS", "register_algorithm",
           "register_alias", "canonical_name", "register_legacy_key", "current_record", "get_algorithm", "load_methods"]

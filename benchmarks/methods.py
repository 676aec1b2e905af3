"""The editing methods the benchmarks run: every algorithm registered in
:mod:`surgery_editor.methods` (each method folder registers itself there, the same registry
that feeds EasyEdit's ``ALG_DICT``), each of its controls (e.g. ``ModelSurgery_random``, ``ProFS_random``:
the method's settings with a few fixed, such as a random direction of the same size), and
``none`` (the unedited model). The harness names no method.

A method reads its settings from the EasyEdit-style YAML users give EasyEdit
(``hparams/<ALG>/<model><-variant>.yaml``, shipped with the package; a control reads its method's), with Hydra's
``hparams.<key>=value`` overrides on top. Its operations are ``edit(model, tok, requests) ->
handle`` and ``restore(model, handle)``; ``per_instance`` says whether the edit depends on the
SafeEdit instance (then the benchmarks edit and restore around every instance) or is made once
per run; ``input_transform`` (prompt methods) says how the inputs change; ``check_data`` reads the
method's own data (probe texts, preference pairs) before the model loads, under the run's
``data_dir`` unless its YAML or ``hparams.data_dir`` names another folder. The Hydra config
group ``method/<name>`` is generated from this table (see :func:`method_config_nodes`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any, Dict, List, Mapping, Optional, Type

from surgery_editor.methods._common import restore_weights
from surgery_editor.methods import ALIASES, Algorithm, InputTransform, canonical_name, load_methods
from surgery_editor.hparams import resolve_hparams_file
from surgery_editor.infra.registry import did_you_mean, lookup, register

logger = logging.getLogger(__name__)

METHODS: Dict[str, Type["Method"]] = {}


def register_method(cls: Type["Method"]) -> Type["Method"]:
    """Add a harness-only method (one that is no EasyEdit algorithm, e.g. ``none``)."""
    return register(METHODS, cls.name, cls, "method")


def _table() -> Dict[str, Type["Method"]]:
    """:data:`METHODS`, with a class for every registered algorithm and control added."""
    for algo in load_methods().values():
        for name, fixed in [(algo.name, {}), *algo.controls.items()]:
            if name not in METHODS:
                METHODS[name] = type(name, (AlgorithmMethod,), {
                    "name": name, "algorithm": algo, "fixed": dict(fixed),
                    "description": algo.description if not fixed else
                    f"control for {algo.name}: its settings with {dict(fixed)}"})
    return METHODS


def get_method_class(name: str) -> Type["Method"]:
    """The method ``name`` (a former name, e.g. ``random``, gives the method it is now)."""
    return lookup(_table(), canonical_name(name), "method")


class Method:
    """Base class: a method without settings (``none``)."""

    name: str = ""
    description: str = ""

    def __init__(self, model_name: str, variant: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None,
                 hparams_file: Optional[str] = None, device: str = "cpu",
                 options: Optional[Mapping[str, Any]] = None, data_dir: Optional[str] = None):
        self.model_name, self.variant = model_name, variant
        self.hparams = None
        self.base_settings: Dict[str, Any] = {}
        self.overrides: Dict[str, Any] = {}
        self.last_info: Dict[str, Any] = {}

    # settings that do not change what the method does, left out of labels
    bookkeeping = ("cache_dir", "data_dir", "batch_size", "activation_batch_size", "model_parallel")

    @property
    def label(self) -> str:
        """``name[variant]`` plus the overrides that change the YAML's values (dicts by their
        changed sub-keys), e.g. ``ModelSurgery alpha=0.5 probe_data.limit=150``."""
        label = self.name + (f"[{self.variant}]" if self.variant else "")
        changed = _changed(self.base_settings, {k: v for k, v in self.overrides.items() if k not in self.bookkeeping})
        return " ".join([label, *(f"{k}={v}" for k, v in sorted(changed.items()))])

    @property
    def per_instance(self) -> bool:
        return False

    @property
    def input_transform(self) -> Optional[InputTransform]:
        return None

    @property
    def last_layers(self) -> Optional[List[int]]:
        """The layers the last per-instance edit changed (recorded per SafeEdit row)."""
        layers = self.last_info.get("layers")
        return list(layers) if self.per_instance and layers is not None else None

    def check_data(self) -> None:
        """Read the method's own data (probe texts, preference pairs) and refuse what cannot
        give a meaningful edit; the harness calls it before the model loads."""
        if self.hparams is not None:
            self.hparams.check_data()

    def edit(self, model, tok, requests: List[Dict[str, Any]]) -> Any:
        return None

    def restore(self, model, handle: Any) -> None:
        if handle:
            restore_weights(model, handle)

    def eval_suffix(self) -> str:
        """Text the method's published protocol appends to SafeEdit inputs after editing."""
        return ""

    def info(self) -> Dict[str, Any]:
        """Facts recorded in ``metrics.json`` (effective settings, backend)."""
        return {"hparams": {}}


@register_method
class NoEdit(Method):
    name = "none"
    description = "the unedited model"


class AlgorithmMethod(Method):
    """A registered algorithm (or one of its controls) as the harness runs it."""

    algorithm: Algorithm
    fixed: Dict[str, Any] = {}

    def __init__(self, model_name: str, variant: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None,
                 hparams_file: Optional[str] = None, device: str = "cpu",
                 options: Optional[Mapping[str, Any]] = None, data_dir: Optional[str] = None):
        super().__init__(model_name, variant, overrides, hparams_file, device, options, data_dir)
        algo = self.algorithm
        self.options = {**algo.options, **{k: v for k, v in (options or {}).items() if k in algo.options}}
        self._apply, self.facts = algo.harness_apply(self.options)
        fields = set(hparams_fields(algo.hparams_cls))
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        ignored = sorted(set(given) - fields)
        if ignored:
            logger.info("method %s has no setting(s) %s; ignored for this run", self.name, ignored)
        self.overrides = {k: v for k, v in given.items() if k in fields}
        stem = f"{model_name}-{variant}" if variant else model_name
        try:
            path = resolve_hparams_file(hparams_file or f"{algo.name}/{stem}", algo.name)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"method {self.name!r}, model {model_name!r}"
                                    f"{f' variant {variant!r}' if variant else ''}: {err}") from None
        self.hparams_file = str(path)
        base = algo.hparams_cls.from_hparams(str(path))
        self.base_settings = base.to_dict()
        merged = {**base.to_dict(), **self.overrides, **self.fixed, "device": device}
        if data_dir is not None and "data_dir" in fields and merged.get("data_dir") is None:
            merged["data_dir"] = data_dir  # the run's, where neither the YAML nor hparams.data_dir names one
        for group in algo.exclusive:  # setting one key of a group clears the YAML's other
            set_here = [k for k in group if k in self.overrides]
            merged.update({k: None for k in group if set_here and k not in set_here})
        self.hparams = algo.hparams_cls.from_dict(merged, source=f"{path} + overrides")

    @property
    def per_instance(self) -> bool:
        return bool(self.algorithm.per_instance(self.hparams))

    @property
    def input_transform(self) -> Optional[InputTransform]:
        return self.algorithm.input_transform(self.hparams)

    def eval_suffix(self) -> str:
        return self.algorithm.eval_suffix(self.hparams)

    def edit(self, model, tok, requests):
        requests = copy.deepcopy(list(requests))  # a method may rewrite its requests (the prompt method does)
        self.last_info = {}
        _, weights_copy = self._apply(model, tok, requests, self.hparams, return_orig_weights=True,
                                      info=self.last_info)
        return weights_copy

    def restore(self, model, handle: Any) -> None:
        self.algorithm.restore(model, handle or {})

    def info(self) -> Dict[str, Any]:
        keys = self.algorithm.info_keys
        facts = {k: v for k, v in self.last_info.items() if isinstance(v, (int, float, str, bool))}
        return {"hparams": {k: getattr(self.hparams, k, None) for k in keys}, "hparams_file": self.hparams_file,
                "edit_facts": {**self.facts, **facts}}


def _changed(base: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """The entries of ``new`` that differ from ``base``, nested dicts flattened to dotted keys."""
    out: Dict[str, Any] = {}
    for key, value in new.items():
        old = base.get(key) if isinstance(base, Mapping) else None
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out.update(_changed(old, value, f"{prefix}{key}."))
        elif value != old:
            out[f"{prefix}{key}"] = value
    return out


def hparams_fields(cls: Optional[type]) -> List[str]:
    return [f.name for f in dataclasses.fields(cls)] if cls is not None and dataclasses.is_dataclass(cls) else []


def _hparams_classes() -> List[type]:
    return list(dict.fromkeys(m.algorithm.hparams_cls for m in _table().values() if issubclass(m, AlgorithmMethod)))


def all_hparams_keys() -> List[str]:
    """Every field of every registered method's hparams class."""
    keys: Dict[str, None] = {}
    for cls in _hparams_classes():
        keys.update(dict.fromkeys(hparams_fields(cls)))
    return sorted(keys)


def method_options() -> Dict[str, Any]:
    """Every harness option (``method.<key>``) of every registered algorithm, with its default."""
    options: Dict[str, Any] = {}
    for cls in _table().values():
        if issubclass(cls, AlgorithmMethod):
            options.update(cls.algorithm.options)
    return options


def check_hparams_keys(hparams: Optional[Mapping[str, Any]]) -> None:
    """Refuse a key of the run's ``hparams`` node that no registered method has (e.g. one
    added with ``+hparams.alpah=1``, which Hydra itself suggests for a misspelt key and which
    would otherwise be ignored), with a did-you-mean hint and the valid keys."""
    valid = all_hparams_keys()
    for key in (hparams or {}):
        if key not in valid:
            close = did_you_mean(str(key), valid)
            hint = f" (did you mean 'hparams.{close}'?)" if close else ""
            raise KeyError(f"hparams.{key}: no registered method ({', '.join(sorted(_table()))}) has a setting "
                           f"{key!r}{hint}; valid keys: {valid}")


def method_config_nodes() -> Dict[str, Dict[str, Any]]:
    """One Hydra node per method, packaged at the config root: ``method`` (name, variant,
    hparams_file, and every algorithm's harness options such as DINM's ``backend``) and
    ``hparams``: every settable key of every registered method's hparams class, set to null
    (= keep the YAML's value). So ``hparams.alpha=0.5`` is an ordinary override, a misspelt key
    is refused by Hydra, and a sweep over methods with ``hparams.alpha=...`` runs (a method
    ignores the keys it does not have)."""
    keys = {f: None for f in all_hparams_keys() if f not in ("alg_name", "model_name", "device")}
    options = method_options()
    nodes = {name: {"method": {"name": name, "variant": None, "hparams_file": None, **options},
                    "hparams": dict(keys)} for name in _table()}
    # a former name selects the method under its name now (method=ModelSurgery_random runs ModelSurgery_random)
    nodes.update({old: copy.deepcopy(nodes[new]) for old, new in ALIASES.items() if new in nodes})
    return nodes

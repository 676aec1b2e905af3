"""Editing methods the benchmarks can run, registered by name.

A method reads its settings from the same EasyEdit-style YAML users give EasyEdit
(``hparams/<hparams_dir>/<model><-variant>.yaml``), with Hydra's ``hparams.<key>=value``
overrides on top. Its two operations are ``edit(model, tok, requests) -> handle`` and
``restore(model, handle)``; ``per_instance`` says whether the edit depends on the SafeEdit
instance (then the benchmarks edit and restore around every instance) or is made once per
run. Add a method with ``@register_method`` on a subclass; the Hydra config group
``method/<name>`` is generated from the registry (see :func:`method_config_nodes`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Type

from surgery_editor.dinm import restore_weights
from surgery_editor.registry import did_you_mean, lookup, register

logger = logging.getLogger(__name__)

METHODS: Dict[str, Type["Method"]] = {}
REPO = Path(__file__).resolve().parent.parent


def register_method(cls: Type["Method"]) -> Type["Method"]:
    return register(METHODS, cls.name, cls, "method")


def get_method_class(name: str) -> Type["Method"]:
    return lookup(METHODS, name, "method")


class Method:
    """Base class. ``hparams_cls`` is None for methods without settings (``none``)."""

    name: str = ""
    hparams_dir: Optional[str] = None  # folder under hparams/
    fixed: Dict[str, Any] = {}  # settings this method forces on top of the YAML (controls)
    exclusive: tuple = ()  # groups of keys of which the YAML sets one, e.g. (("top_k", "top_k_fraction"),)
    description: str = ""

    def __init__(self, model_name: str, variant: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None,
                 hparams_file: Optional[str] = None, device: str = "cpu"):
        self.model_name, self.variant = model_name, variant
        self.hparams = None
        self.base_settings: Dict[str, Any] = {}
        self.hparams_cls = self.hparams_class()
        fields = set(hparams_fields(self.hparams_cls))
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        ignored = sorted(set(given) - fields)
        if ignored:
            logger.info("method %s has no setting(s) %s; ignored for this run", self.name, ignored)
        self.overrides = {k: v for k, v in given.items() if k in fields}
        if self.hparams_cls is not None:
            path = Path(hparams_file) if hparams_file else self.default_hparams_file(model_name, variant)
            if not path.is_absolute() and not path.exists():
                path = REPO / path
            if not path.exists():
                folder = path.parent
                options = sorted(p.stem for p in folder.glob("*.yaml")) if folder.exists() else []
                raise FileNotFoundError(f"method {self.name!r}: no hparams file {path} for model {model_name!r}"
                                        f"{f' variant {variant!r}' if variant else ''}; files in {folder}: {options}")
            self.hparams_file = str(path)
            base = self.hparams_cls.from_hparams(str(path))
            self.base_settings = base.to_dict()
            merged = {**base.to_dict(), **self.overrides, **self.fixed, "device": device}
            for group in self.exclusive:  # setting one key of a group clears the YAML's other
                given = [k for k in group if k in self.overrides]
                merged.update({k: None for k in group if given and k not in given})
            self.hparams = self.hparams_cls.from_dict(merged, source=f"{path} + overrides")

    @classmethod
    def hparams_class(cls) -> Optional[type]:
        """The dataclass the YAML is read into (None: the method has no settings)."""
        return None

    @classmethod
    def default_hparams_file(cls, model_name: str, variant: Optional[str]) -> Path:
        stem = f"{model_name}-{variant}" if variant else model_name
        return REPO / "hparams" / str(cls.hparams_dir) / f"{stem}.yaml"

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


@register_method
class ModelSurgery(Method):
    name = "ModelSurgery"
    hparams_dir = "ModelSurgery"
    exclusive = (("top_k", "top_k_fraction"),)
    description = "Model Surgery (Wang et al. 2024): probe-guided gate-row edit"

    @classmethod
    def hparams_class(cls):
        from surgery_editor import ModelSurgeryHyperParams

        return ModelSurgeryHyperParams

    @property
    def per_instance(self) -> bool:
        return self.hparams.probe_source == "request"

    def edit(self, model, tok, requests):
        from surgery_editor import apply_model_surgery_to_model

        _, weights_copy = apply_model_surgery_to_model(model, tok, requests, self.hparams, return_orig_weights=True)
        return weights_copy

    def info(self):
        keys = ("probe_source", "probe_layer", "probe_pooling", "top_k", "top_k_fraction", "alpha", "scoring",
                "step", "select", "edit_direction", "edit_layers")
        return {"hparams": {k: getattr(self.hparams, k) for k in keys}, "hparams_file": self.hparams_file}


@register_method
class RandomDirection(ModelSurgery):
    """Control: ModelSurgery's rows and step size, a seeded random direction instead of the
    probe's, so a toxicity drop caused only by perturbing the model shows up here too."""

    name = "random"
    fixed = {"edit_direction": "random"}
    description = "control: same rows and size as ModelSurgery, random direction"


@register_method
class DINM(Method):
    """DINM (Wang et al. 2024, SafeEdit): per instance, locate the toxic layer and tune its MLP
    output matrix towards the safe response with a KL constraint. EasyEdit's own DINM runs when
    an importable ``easyeditor`` has it (``backend: auto``), otherwise this project's."""

    name = "DINM"
    hparams_dir = "DINM"
    description = "DINM (Wang et al. 2024), EasyEdit's when importable"

    def __init__(self, *args, backend: str = "auto", **kwargs):
        from surgery_editor.dinm import dinm_backend

        self._apply, self._locate, _, self.backend = dinm_backend(backend)  # hparams: ours, same keys
        super().__init__(*args, **kwargs)

    @classmethod
    def hparams_class(cls):
        from surgery_editor.dinm import DINMHyperParams

        return DINMHyperParams

    @property
    def per_instance(self) -> bool:
        return True

    def edit(self, model, tok, requests):
        hp = copy.copy(self.hparams)
        if not hp.layers:  # EasyEdit's SafetyEditor: locate the toxic layer per instance
            hp.layers = [int(self._locate(model, tok, requests[0]))]
        from surgery_editor.dinm import with_system_prompt

        edit_requests = [with_system_prompt(r, self.eval_suffix()) for r in requests]
        _, weights_copy = self._apply(model, tok, edit_requests, hp, return_orig_weights=True)
        self.last_layers = list(hp.layers)
        return weights_copy

    def eval_suffix(self) -> str:
        return getattr(self.hparams, "suffix_system_prompt", None) or ""

    def info(self):
        keys = ("layers", "num_steps", "lr", "weight_decay", "kl_factor", "norm_constraint", "rewrite_module_tmp")
        return {"hparams": {k: getattr(self.hparams, k, None) for k in keys}, "dinm_backend": self.backend,
                "hparams_file": self.hparams_file}


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


def all_hparams_keys() -> List[str]:
    """Every field of every registered method's hparams class."""
    keys: Dict[str, None] = {}
    for cls in METHODS.values():
        keys.update(dict.fromkeys(hparams_fields(cls.hparams_class())))
    return sorted(keys)


def check_hparams_keys(hparams: Optional[Mapping[str, Any]]) -> None:
    """Refuse a key of the run's ``hparams`` node that no registered method has (e.g. one
    added with ``+hparams.alpah=1``, which Hydra itself suggests for a misspelt key and which
    would otherwise be ignored), with a did-you-mean hint and the valid keys."""
    valid = all_hparams_keys()
    for key in (hparams or {}):
        if key not in valid:
            close = did_you_mean(str(key), valid)
            hint = f" (did you mean 'hparams.{close}'?)" if close else ""
            raise KeyError(f"hparams.{key}: no registered method ({', '.join(sorted(METHODS))}) has a setting "
                           f"{key!r}{hint}; valid keys: {valid}")


def method_config_nodes() -> Dict[str, Dict[str, Any]]:
    """One Hydra node per registered method, packaged at the config root: ``method`` (name,
    variant, hparams_file, backend) and ``hparams``: every settable key of every registered
    method's hparams class, set to null (= keep the YAML's value). So ``hparams.alpha=0.5`` is
    an ordinary override, a misspelt key is refused by Hydra, and a sweep over methods with
    ``hparams.alpha=...`` runs (a method ignores the keys it does not have)."""
    keys: Dict[str, None] = {}
    for cls in METHODS.values():
        keys.update({f: None for f in hparams_fields(cls.hparams_class())
                     if f not in ("alg_name", "model_name", "device")})
    return {name: {"method": {"name": name, "variant": None, "hparams_file": None, "backend": "auto"},
                   "hparams": dict(keys)} for name in METHODS}

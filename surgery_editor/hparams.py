"""``ModelSurgeryHyperParams``: EasyEdit-style hparams with checked fields.

A YAML in ``hparams/ModelSurgery/<model>.yaml`` holds EasyEdit's common keys
(``alg_name``, ``model_name``, ``device``, ``model_parallel``, ``max_length``,
``max_output_length``, ``batch_size``, ...) plus the method's own, documented on each field.
``from_hparams`` reads it the way EasyEdit's ``HyperParams.from_hparams`` does (``.yaml`` is
appended when the path has none; strings in scientific notation such as ``1e-4`` become
floats) but rejects a wrong ``alg_name`` or an unknown key with a message naming it.

Every field's value is checked against its annotation when the hparams are built (from a
file, a dict or directly): ``int`` fields take integers (an integral float such as ``4.0``
becomes ``4``; ``True`` and ``0.5`` are refused), ``float`` fields take any number, ``bool``
fields ``true``/``false``, ``str`` fields strings, ``Optional`` allows ``null``, and
``List[int]`` / ``Dict[str, ...]`` check their elements. A quoted number (``alpha: "0.1"``)
is refused with a hint to drop the quotes; only EasyEdit's scientific-notation strings
(``1e-4``, which YAML reads as a string) become floats.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import numbers
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Union

import numpy as np
import yaml

ALG_NAME = "ModelSurgery"
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")

_CHOICES = {
    "probe_source": ("dataset", "request"),
    "probe_pooling": ("mean", "rms_mean"),
    "probe_direction": ("toxic_row", "row_difference"),
    "select": ("most_opposed", "most_aligned"),
    "scoring": ("cosine", "norm_aware"),
    "step": ("absolute", "row_norm"),
    "edit_direction": ("probe", "random"),
}


_NO = object()  # "does not fit" marker of _coerce


def _describe(tp: Any) -> str:
    """``tp`` in words, for error messages: ``a number (float) or null``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "anything"
    if tp is type(None):
        return "null"
    if origin is Union:
        return " or ".join(_describe(a) for a in args)
    if origin in (list, List, tuple, Tuple):
        return f"a list of {_plural(args[0])}" if args and args[0] is not Any else "a list"
    if origin in (dict, Dict):
        return "a mapping"
    return {int: "an integer (int)", float: "a number (float)", bool: "true or false (bool)",
            str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", bool: "booleans", str: "strings"}.get(tp, _describe(tp))


def _is_number_string(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return value.strip().lower() in ("true", "false", "null", "none")
    return True


def _coerce(tp: Any, value: Any) -> Any:
    """``value`` as a ``tp`` (an integral float for an int becomes an int), or ``_NO``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if tp is type(None):
        return value if value is None else _NO
    if origin is Union:
        # exact types first, so a bool in Union[bool, float] stays a bool and 2 in Union[int, str] an int
        for arg in args:
            if arg in (bool, int, float, str) and type(value) is arg:
                return value
        for arg in args:
            out = _coerce(arg, value)
            if out is not _NO:
                return out
        return _NO
    if origin in (list, List, tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            return _NO
        item_tp = args[0] if args else Any
        out = [_coerce(item_tp, v) for v in value]
        return _NO if any(v is _NO for v in out) else type(value)(out)
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            return _NO
        key_tp, val_tp = args if args else (Any, Any)
        ok = all(_coerce(key_tp, k) is not _NO and _coerce(val_tp, v) is not _NO for k, v in value.items())
        return value if ok else _NO
    if tp is bool:
        return value if isinstance(value, bool) else bool(value) if isinstance(value, np.bool_) else _NO
    if isinstance(value, (bool, np.bool_)) and tp in (int, float):
        return _NO
    if tp is int:
        if isinstance(value, int):
            return value
        if isinstance(value, numbers.Integral):  # e.g. numpy.int64
            return int(value)
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(value)
        return _NO
    if tp is float:
        if isinstance(value, (int, float)):
            return value
        return float(value) if isinstance(value, numbers.Real) else _NO
    if isinstance(tp, type):
        return value if isinstance(value, tp) else _NO
    return value  # an annotation this checker does not know: left to the class's own checks


def _admits_numbers(tp: Any) -> bool:
    return _coerce(tp, 1.5) is not _NO or _coerce(tp, 1) is not _NO


def check_field_types(cls: type, values: Dict[str, Any], what: str = "") -> Dict[str, Any]:
    """``values`` (field name -> value) checked against ``cls``'s dataclass field annotations;
    returns them with integral floats in int fields made ints and scientific-notation strings
    (``1e-4``) in numeric fields made floats. Unknown names are passed through (the caller
    checks them). A mismatch is a ``ValueError`` naming ``what`` (e.g. ``probe_data``), the
    key, the type it needs and the value it got."""
    hints = typing.get_type_hints(cls)
    out = dict(values)
    prefix = f"{what}." if what else ""
    for f in dataclasses.fields(cls):
        if f.name not in values or f.name not in hints:
            continue
        tp, value = hints[f.name], values[f.name]
        if isinstance(value, str) and _NUMBER.match(value.strip()) and _admits_numbers(tp) \
                and _coerce(tp, value) is _NO:
            value = float(value)  # EasyEdit's construct_float_from_scientific_notation
        fixed = _coerce(tp, value)
        if fixed is _NO:
            if isinstance(value, str):
                got = f"the string {value!r}"
                if _is_number_string(value):
                    got += "; write it without quotes"
            else:
                got = f"{value!r} ({type(value).__name__})"
            raise ValueError(f"{prefix}{f.name} must be {_describe(tp)}, got {got}")
        out[f.name] = fixed
    return out


class _HyperParamsBase:
    """EasyEdit's ``HyperParams`` interface, without importing EasyEdit. Subclasses set
    ``ALG_NAME`` (the only ``alg_name`` their files may carry).

    :func:`surgery_editor.easyedit.register` additionally makes
    :class:`ModelSurgeryHyperParams` a subclass of ``easyeditor.util.hparams.HyperParams``,
    so ``isinstance`` checks in EasyEdit accept it.
    """

    def __post_init__(self) -> None:
        """The field-type check every hparams class shares (subclasses call it first)."""
        self.check_types()

    def check_types(self) -> None:
        """Check (and normalise, see :func:`check_field_types`) every field's value against
        its annotation; ``ValueError`` naming the key otherwise."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key, value in check_field_types(type(self), values).items():
            if value is not values[key]:
                object.__setattr__(self, key, value)

    @staticmethod
    def construct_float_from_scientific_notation(config: Dict[str, Any]) -> Dict[str, Any]:
        return {k: (float(v) if isinstance(v, str) and _NUMBER.match(v.strip()) else v) for k, v in config.items()}

    def to_dict(self) -> Dict[str, Any]:
        # Shallow on purpose: model_name may be a (model, tokenizer) pair, never deep-copied.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, fpath: Union[str, Path]):
        with open(fpath) as f:
            return cls.from_dict(json.load(f), source=str(fpath))

    @classmethod
    def field_names(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, config: Dict[str, Any], source: str = "<dict>"):
        """Checked construction: the subclass's ``ALG_NAME`` as ``alg_name``, no unknown key
        (with a did-you-mean hint), ``model_name`` present, then the fields' own checks."""
        if not isinstance(config, dict) or not config:
            raise ValueError(f"{source}: hparams must be a non-empty mapping of keys to values")
        if config.get("alg_name") != cls.ALG_NAME:
            raise ValueError(
                f"{source}: alg_name is {config.get('alg_name')!r}; {cls.__name__} loads only "
                f"alg_name: {cls.ALG_NAME}"
            )
        known = set(cls.field_names())
        for key in config:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{source}: unknown key {key!r}{hint}; valid keys: {sorted(known)}")
        if "model_name" not in config:
            raise ValueError(f"{source}: missing required key 'model_name'")
        try:
            # checked here too, so a subclass whose __post_init__ skips check_types is covered
            checked = check_field_types(cls, cls.construct_float_from_scientific_notation(config))
            return cls(**checked)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from err

    @classmethod
    def from_hparams(cls, hparams_name_or_path: Union[str, Path]):
        """Read a YAML (``.yaml`` appended when the path has no extension) or JSON file."""
        path = str(hparams_name_or_path)
        if not path.endswith((".yaml", ".yml", ".json")):
            path += ".yaml"
        if not Path(path).is_file():
            raise FileNotFoundError(f"hparams file not found: {path}")
        with open(path) as stream:
            config = json.load(stream) if path.endswith(".json") else yaml.safe_load(stream)
        return cls.from_dict(config, source=path)


def _help(text: str, default: Any = dataclasses.MISSING, **kw) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": text}, **kw)
    return field(default=default, metadata={"help": text}, **kw)


@dataclass
class ModelSurgeryHyperParams(_HyperParamsBase):
    ALG_NAME: ClassVar[str] = ALG_NAME

    # ---- EasyEdit's common keys -------------------------------------------------------
    model_name: Any = _help("embedded name (smollm2-135m, gemma3-270m), local path, hub id, or a (model, tok) pair")
    alg_name: str = _help("must be 'ModelSurgery'", ALG_NAME)
    device: Union[int, str] = _help("EasyEdit device: an int is cuda:<n>; or 'cpu', 'cuda:0'", "cpu")
    model_parallel: bool = _help("EasyEdit: load with device_map='auto'", False)
    max_length: int = _help("EasyEdit: max prompt tokens at evaluation (inputs truncated from the left)", 1024)
    max_output_length: int = _help("EasyEdit: max new tokens at evaluation", 600)
    batch_size: int = _help("EasyEdit: requests per edit call (SafetyEditor forces 1)", 1)
    fp16: bool = _help("EasyEdit: load the model in float16", False)
    model_class: Optional[str] = _help("EasyEdit bookkeeping only (unused here)", None)
    tokenizer_class: Optional[str] = _help("EasyEdit bookkeeping only (unused here)", None)

    # ---- probe ------------------------------------------------------------------------
    probe_source: str = _help(
        "'dataset': probe trained on probe_data, edit computed once and reused for every request; "
        "'request': direction from each request's own unsafe vs safe response", "dataset"
    )
    probe_data: Optional[Dict[str, Any]] = _help(
        "data-set config, see surgery_editor.data.ProbeDataConfig (path + text/label fields, or "
        "positive_column/negative_column pairs)", None
    )
    data_dir: Optional[str] = _help(
        "root for relative probe_data paths (default: $SURGERY_EDITOR_DATA_DIR, else ../shared/data)", None
    )
    probe_layer: int = _help("index into hidden_states; -1 = last entry (after the final norm)", -1)
    probe_pooling: str = _help("'mean' over non-padding tokens (paper), or 'rms_mean': token mean of h/rms(h)", "mean")
    probe_max_length: int = _help("probe texts are truncated to this many tokens", 128)
    activation_batch_size: int = _help("texts per forward pass when collecting activations", 32)
    probe_lr: float = _help("Adam learning rate (paper: 1e-4)", 1e-4)
    probe_batch_size: int = _help("probe training batch size (paper: 16)", 16)
    probe_epochs: int = _help("probe training epochs (paper: 9)", 9)
    probe_val_fraction: float = _help("held-out share for probe accuracy (paper: 0.1)", 0.1)
    seed: int = _help("seed for the split, the probe init and the random control", 0)
    probe_direction: str = _help("'toxic_row': w = W[1] (paper); 'row_difference': w = W[1] - W[0]", "toxic_row")
    request_direction_norm: float = _help(
        "probe_source=request: norm given to the per-request direction h(unsafe) - h(safe)", 1.0
    )

    # ---- selection and edit -----------------------------------------------------------
    top_k: Optional[int] = _help("number of gate rows edited, over all layers (paper: 16384 on LLaMA-2-7B)", None)
    top_k_fraction: Optional[float] = _help("or: share of all candidate rows (paper: 0.0465)", None)
    alpha: float = _help("step size: row <- row + alpha * w (paper detox: 1.08); negative reverses", 1.08)
    select: str = _help("'most_opposed': top-K of -cos(row, w) (paper); 'most_aligned': top-K of +cos", "most_opposed")
    scoring: str = _help(
        "'cosine': cos(row, w) in weight space (paper); 'norm_aware': cos(row*gain_l, w_res) through "
        "the RMSNorm gains that feed the gate and produce the probed state", "cosine"
    )
    step: str = _help("'absolute': alpha * w (paper); 'row_norm': alpha * |row| * w/|w|", "absolute")
    edit_layers: Optional[List[int]] = _help("layers whose gate rows are candidates (default: all)", None)
    edit_direction: str = _help(
        "'probe' (the method) or 'random': same rows, moved by a seeded random direction of the same "
        "norm (control)", "probe"
    )
    gain_floor: float = _help(
        "norm_aware: dimensions whose gain is below gain_floor * median(|gain|) are left unedited", 0.05
    )

    # ---- module templates (EasyEdit style; empty = detected from model_type) -----------
    gate_module_tmp: Optional[str] = _help("e.g. 'model.layers.{}.mlp.gate_proj'", None)
    mlp_norm_tmp: Optional[str] = _help("norm feeding the gate, e.g. 'model.layers.{}.post_attention_layernorm'", None)
    final_norm_module: Optional[str] = _help("final norm, e.g. 'model.norm'", None)
    cache_dir: Optional[str] = _help("activation/probe cache (default: $SURGERY_EDITOR_CACHE or ~/.cache/surgery_editor)", None)

    def __post_init__(self) -> None:
        super().__post_init__()  # field types
        if self.alg_name != ALG_NAME:
            raise ValueError(f"alg_name is {self.alg_name!r}; ModelSurgeryHyperParams needs alg_name: {ALG_NAME}")
        for key, choices in _CHOICES.items():
            if getattr(self, key) not in choices:
                raise ValueError(f"{key}={getattr(self, key)!r} is not valid; choose one of {list(choices)}")
        if (self.top_k is None) == (self.top_k_fraction is None):
            raise ValueError(
                "set exactly one of top_k (a count, e.g. 2143) and top_k_fraction (a share of all "
                f"candidate rows, e.g. 0.0465); got top_k={self.top_k}, top_k_fraction={self.top_k_fraction}"
            )
        if self.top_k is not None and (int(self.top_k) != self.top_k or self.top_k < 1):
            raise ValueError(f"top_k must be a positive integer, got {self.top_k!r}")
        if self.top_k_fraction is not None and not 0 < self.top_k_fraction <= 1:
            raise ValueError(f"top_k_fraction must be in (0, 1], got {self.top_k_fraction!r}")
        if not 0 <= self.probe_val_fraction < 1:
            raise ValueError(f"probe_val_fraction must be in [0, 1), got {self.probe_val_fraction!r}")
        for key in ("probe_batch_size", "probe_epochs", "probe_max_length", "activation_batch_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        if self.probe_source == "dataset" and not self.probe_data:
            raise ValueError("probe_source: dataset needs probe_data (a data-set config with at least `path`)")
        if self.probe_data is not None and not isinstance(self.probe_data, dict):
            raise ValueError(f"probe_data must be a mapping, got {type(self.probe_data).__name__}")
        if self.edit_layers is not None and not all(isinstance(i, int) for i in self.edit_layers):
            raise ValueError(f"edit_layers must be a list of layer indices, got {self.edit_layers!r}")

    # ------------------------------------------------------------------------------------
    def method_key(self) -> str:
        """Hash of every field the edit depends on (not the EasyEdit runtime keys)."""
        skip = {"model_name", "device", "model_parallel", "max_length", "max_output_length", "batch_size",
                "fp16", "model_class", "tokenizer_class", "cache_dir"}
        items = {k: v for k, v in self.to_dict().items() if k not in skip}
        return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:16]

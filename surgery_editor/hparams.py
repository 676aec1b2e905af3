"""EasyEdit-style hparams with checked fields: the base every method's hparams class shares.

A YAML in ``hparams/ModelSurgery/<model>.yaml`` holds EasyEdit's common keys
(``alg_name``, ``model_name``, ``device``, ``model_parallel``, ``max_length``,
``max_output_length``, ``batch_size``, ...) plus the method's own, documented on each field.
``from_hparams`` reads it the way EasyEdit's ``HyperParams.from_hparams`` does (``.yaml`` is
appended when the path has none; strings in scientific notation such as ``1e-4`` become
floats) but rejects a wrong ``alg_name`` or an unknown key with a message naming it. The files
shipped with the package also load by name, ``from_hparams("ModelSurgery/llama2-7b-chat")``
(or ``"llama2-7b-chat"`` on the class of that method), wherever the package is installed.

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
import json
import numbers
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import yaml

from .infra.fileio import read_text

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")
_EXTENSIONS = (".yaml", ".yml", ".json")


def hparams_dir() -> Path:
    """The folder of the shipped ``<ALG>/<model>.yaml`` files: ``surgery_editor/hparams_files``
    in an installed copy (setup.py maps the repository's ``hparams/`` there), else the
    checkout's ``hparams/`` (a source tree or an editable install)."""
    package = Path(__file__).resolve().parent
    installed = package / "hparams_files"
    return installed if installed.is_dir() else package.parent / "hparams"


def shipped_hparams(alg_name: Optional[str] = None) -> List[str]:
    """The names of the shipped hparams files (``ModelSurgery/llama2-7b-chat``, ...), of one
    method when ``alg_name`` is given."""
    root = hparams_dir()
    pattern = f"{alg_name}/*.yaml" if alg_name else "*/*.yaml"
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.glob(pattern))


def resolve_hparams_file(name_or_path: Union[str, Path], alg_name: Optional[str] = None) -> Path:
    """The hparams file that ``name_or_path`` means: a path as given (``.yaml`` appended when it
    has no extension), else a shipped file by name (``ModelSurgery/llama2-7b-chat``; also
    ``hparams/ModelSurgery/llama2-7b-chat.yaml`` read from another folder, and a bare
    ``llama2-7b-chat`` for ``alg_name``). ``FileNotFoundError`` lists the shipped names."""
    path = str(name_or_path)
    if not path.endswith(_EXTENSIONS):
        path += ".yaml"
    if Path(path).exists():
        return Path(path)
    if not Path(path).is_absolute():
        name = Path(path).as_posix()
        name = name[len("hparams/"):] if name.startswith("hparams/") else name
        candidates = [hparams_dir() / name]
        if alg_name and "/" not in name:
            candidates.append(hparams_dir() / alg_name / name)
        for candidate in candidates:
            if candidate.is_file():
                return candidate
    names = shipped_hparams(alg_name) or shipped_hparams()
    raise FileNotFoundError(f"hparams file not found: {path} (nor a shipped file of that name); shipped"
                            f"{f' for {alg_name}' if alg_name and shipped_hparams(alg_name) else ''}: {names}")



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

    def check_data(self) -> None:
        """Read the data the method learns from (probe texts, preference pairs) and refuse what
        cannot give a meaningful edit, with an error naming the file; callers run it before
        a model loads (the benchmark harness and the command line do). Methods without data
        files have nothing to check."""

    @staticmethod
    def construct_float_from_scientific_notation(config: Dict[str, Any]) -> Dict[str, Any]:
        return {k: (float(v) if isinstance(v, str) and _NUMBER.match(v.strip()) else v) for k, v in config.items()}

    def to_dict(self) -> Dict[str, Any]:
        # Shallow on purpose: model_name may be a (model, tokenizer) pair, never deep-copied.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, fpath: Union[str, Path]):
        return cls.from_dict(_read_config(str(fpath), "JSON"), source=str(fpath))

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
        """Read a YAML (``.yaml`` appended when the path has no extension) or JSON file, or a
        shipped file by name (see :func:`resolve_hparams_file`)."""
        path = str(resolve_hparams_file(hparams_name_or_path, getattr(cls, "ALG_NAME", None)))
        return cls.from_dict(_read_config(path, "JSON" if path.endswith(".json") else "YAML"), source=path)


def _read_config(path: str, kind: str) -> Any:
    """The content of an hparams file (``kind`` JSON or YAML); errors name the file."""
    text = read_text(path, "hparams file")
    try:
        return json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"hparams file {path}: not valid {kind} ({' '.join(str(err).split())})") from err


def _help(text: str, default: Any = dataclasses.MISSING, **kw) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": text}, **kw)
    return field(default=default, metadata={"help": text}, **kw)


@dataclass
class EasyEditKeys(_HyperParamsBase):
    """EasyEdit's keys that every ``hparams/<ALG>/<model>.yaml`` may carry."""

    model_name: Any = _help("embedded name (smollm2-135m, gemma3-270m), local path, hub id, or a (model, tok) pair")
    alg_name: str = _help("the method's name", "")
    device: Union[int, str] = _help("EasyEdit device: an int is cuda:<n>; or 'cpu', 'cuda:0'", "cpu")
    model_parallel: bool = _help("EasyEdit: load with device_map='auto'", False)
    max_length: int = _help("EasyEdit: max prompt tokens at evaluation", 1024)
    max_output_length: int = _help("EasyEdit: max new tokens at evaluation", 600)
    batch_size: int = _help("EasyEdit: requests per edit call (SafetyEditor forces 1)", 1)
    fp16: bool = _help("EasyEdit: load the model in float16", False)
    model_class: Optional[str] = _help("EasyEdit bookkeeping only (unused here)", None)
    tokenizer_class: Optional[str] = _help("EasyEdit bookkeeping only (unused here)", None)

    def __post_init__(self) -> None:
        if not self.alg_name:
            self.alg_name = self.ALG_NAME
        if self.alg_name != self.ALG_NAME:
            raise ValueError(f"alg_name is {self.alg_name!r}; {type(self).__name__} needs alg_name: {self.ALG_NAME}")
        super().__post_init__()

    def check_choice(self, key: str, choices: Iterable[Any]) -> None:
        choices = list(choices)
        if getattr(self, key) not in choices:
            raise ValueError(f"{key}={getattr(self, key)!r} is not valid; choose one of {choices}")

    def check_range(self, key: str, low: Optional[float] = None, high: Optional[float] = None,
                    low_open: bool = False) -> None:
        value = getattr(self, key)
        if value is None:
            return
        bad = (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high)
        if bad:
            lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
            hi = "" if high is None else f"<= {high}"
            raise ValueError(f"{key} must be {' and '.join(x for x in (lo, hi) if x)}, got {value!r}")

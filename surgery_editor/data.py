"""Probe data: labelled texts (1 = the behaviour to avoid, 0 = not) from a data-set config.

Two shapes of config, both given as ``probe_data`` in the hparams YAML:

* labelled rows::

      path: toxigen/toxigen_annotated_train_8960.csv
      text_field: text
      label_field: label
      positive_values: [hate]       # values meaning class 1; everything else is class 0

* pairs of columns, one text of each class per row (ParaDetox)::

      path: paradetox/paradetox.tsv
      positive_column: toxic
      negative_column: neutral1

Files may be ``.csv``, ``.tsv``, ``.jsonl`` or ``.json``; a relative path is looked up in
the current directory, then under ``data_dir``. A path that is no local file is loaded as a
hub data set with ``datasets.load_dataset(path, split=split)`` when ``datasets`` is installed.
``limit`` keeps that many rows after a seeded shuffle (``shuffle: false`` keeps file order).

Nested JSON fields are reached with dots (``continuation.text``); ``query`` keeps the rows a
pandas ``DataFrame.query`` expression selects (dotted names in backticks); ``label_threshold``
makes a numeric label column binary (class 1 at or above it); ``prefix_field`` puts another
column's text before the text. E.g. RealToxicityPrompts continuations labelled by Perspective,
from prompts that the RTP benchmark never evaluates (it keeps prompt toxicity >= 0.5)::

      path: realtoxicityprompts/rtp_random5000_quark_val.jsonl
      prefix_field: prompt.text
      text_field: continuation.text
      label_field: continuation.toxicity
      label_threshold: 0.5
      query: "`prompt.toxicity` < 0.5"

``prompt_field`` makes each text the answer to a user turn; methods join the two with the
model's chat template (:meth:`LabelledTexts.for_model`). E.g. JailbreakBench's answers, harmful
(jailbroken) or refused, to the plain request::

      path: jailbreakbench/jbb_judged_responses.jsonl
      prompt_field: goal
      text_field: response
      label_field: jailbroken
      positive_values: [true]
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from .infra.fileio import read_text

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = "../shared/data"
# The RealToxicityPrompts sample of the offline data, and the prompt toxicity from which the RTP
# benchmark evaluates its prompts: rows below it are never scored, so judges and methods may
# learn from them.
RTP_PATH = "realtoxicityprompts/rtp_random5000_quark_val.jsonl"
RTP_EVAL_MIN_TOXICITY = 0.5


@dataclass
class ProbeDataConfig:
    path: str = field(metadata={"help": "file (csv/tsv/jsonl/json) or hub data-set id"})
    text_field: Optional[str] = field(default=None, metadata={"help": "column with the text"})
    label_field: Optional[str] = field(default=None, metadata={"help": "column with the label"})
    positive_values: List[Any] = field(
        default_factory=lambda: [1, True, "1", "true", "True"],
        metadata={"help": "label values meaning class 1 (the behaviour to avoid)"},
    )
    positive_column: Optional[str] = field(default=None, metadata={"help": "pair mode: class-1 text column"})
    negative_column: Optional[str] = field(default=None, metadata={"help": "pair mode: class-0 text column"})
    prefix_field: Optional[str] = field(default=None, metadata={"help": "column whose text goes before text_field's"})
    prompt_field: Optional[str] = field(
        default=None, metadata={"help": "column with a user turn; text_field is then the model's answer to it, and "
                                        "the two are joined by the model's chat template (see `chat`)"})
    chat: Any = field(default="auto", metadata={
        "help": "with prompt_field: true / false / 'auto' (the template when the tokenizer has one); without "
                "a template the answer follows the prompt after a blank line"})
    label_threshold: Optional[float] = field(
        default=None, metadata={"help": "numeric labels: class 1 at or above this value (replaces positive_values)"})
    query: Optional[str] = field(
        default=None, metadata={"help": "pandas DataFrame.query expression selecting rows (dotted names in backticks)"})
    limit: Optional[int] = field(default=None, metadata={"help": "rows kept (after shuffling)"})
    shuffle: bool = field(default=True, metadata={"help": "seeded shuffle before `limit`"})
    seed: int = field(default=0, metadata={"help": "shuffle seed"})
    split: str = field(default="train", metadata={"help": "hub data sets: split to load"})

    def __post_init__(self) -> None:
        from .hparams import check_field_types

        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key, value in check_field_types(type(self), values, what="probe_data").items():
            setattr(self, key, value)
        pair = self.positive_column is not None or self.negative_column is not None
        rows = self.text_field is not None or self.label_field is not None
        if pair == rows:
            raise ValueError(
                f"probe_data for {self.path!r}: give either text_field + label_field (labelled rows) or "
                "positive_column + negative_column (pairs), not both and not neither"
            )
        if pair and (self.positive_column is None or self.negative_column is None):
            raise ValueError(f"probe_data for {self.path!r}: pair mode needs both positive_column and negative_column")
        if rows and (self.text_field is None or self.label_field is None):
            raise ValueError(f"probe_data for {self.path!r}: labelled rows need both text_field and label_field")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"probe_data for {self.path!r}: limit must be >= 1, got {self.limit}")
        if pair and (self.prefix_field is not None or self.label_threshold is not None
                     or self.prompt_field is not None):
            raise ValueError(f"probe_data for {self.path!r}: prefix_field, prompt_field and label_threshold belong to "
                             "labelled rows (text_field + label_field), not to pairs")
        if self.prefix_field is not None and self.prompt_field is not None:
            raise ValueError(f"probe_data for {self.path!r}: give prefix_field (plain text before the text) or "
                             "prompt_field (a user turn, joined by the chat template), not both")
        if self.chat not in (True, False, "auto"):
            raise ValueError(f"probe_data for {self.path!r}: chat must be true, false or 'auto', got {self.chat!r}")

    @classmethod
    def from_dict(cls, config: Dict[str, Any]) -> "ProbeDataConfig":
        return checked_data_config(cls, config, "probe_data")


def checked_data_config(cls: type, config: Any, what: str):
    """``cls(**config)`` for a data-set config dataclass, after refusing a non-mapping, unknown
    keys (naming the valid ones) and a missing ``path``; ``what`` names the config in errors."""
    if not isinstance(config, dict):
        raise ValueError(f"{what} must be a mapping (a data-set config), got {type(config).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    if "path" not in config:
        raise ValueError(f"{what} needs `path` (a csv/tsv/jsonl/json file or a hub data-set id)")
    return cls(**config)


@dataclass
class LabelledTexts:
    """Texts with labels. With ``prompts`` (probe data given a ``prompt_field``) each text is the
    answer to its prompt, and :meth:`for_model` joins the two as the model reads a conversation;
    code that feeds texts to a model calls it first."""
    texts: List[str]
    labels: np.ndarray  # int64, 1 = behaviour to avoid
    source: str
    prompts: Optional[List[str]] = None
    chat: Any = "auto"

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for i, (text, label) in enumerate(zip(self.texts, self.labels.tolist())):
            h.update(f"{label}\t{len(text)}\t".encode())
            h.update(text.encode("utf-8", "surrogatepass"))
            if self.prompts is not None:
                h.update(f"\tprompt {self.chat}\t{self.prompts[i]}".encode("utf-8", "surrogatepass"))
        return h.hexdigest()[:16]

    def for_model(self, tok) -> "LabelledTexts":
        """The texts as the model sees them: unchanged without prompts; otherwise each (prompt,
        answer) as one user turn and the assistant's reply in ``tok``'s chat template (when
        ``chat`` says so), or ``prompt + "\n\n" + answer``. The template's own leading BOS is
        dropped where the tokenizer adds one, so a text holds a single BOS."""
        if self.prompts is None:
            return self
        from .evaluation.generation import uses_chat

        if uses_chat(tok, self.chat):
            if getattr(tok, "chat_template", None) is None:
                raise ValueError(f"{self.source}: probe_data chat: true, but the tokenizer has no chat template; "
                                 "use chat: auto or false")
            texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": a}],
                                             tokenize=False) for p, a in zip(self.prompts, self.texts)]
            bos = getattr(tok, "bos_token", None)
            if bos and tok("x").input_ids[:1] == [tok.bos_token_id]:
                texts = [t[len(bos):] if t.startswith(bos) else t for t in texts]
        else:
            texts = [f"{p}\n\n{a}" for p, a in zip(self.prompts, self.texts)]
        return LabelledTexts(texts=texts, labels=self.labels, source=self.source)


_REPO_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def resolve_data_dir(data_dir: Optional[str] = None) -> Path:
    """``data_dir``, else ``$SURGERY_EDITOR_DATA_DIR``, else ``../shared/data`` from the
    working directory, or, when that does not exist, next to this source checkout (so a
    notebook run from ``notebooks/`` finds the same files)."""
    chosen = data_dir or os.environ.get("SURGERY_EDITOR_DATA_DIR")
    if chosen:
        return Path(chosen)
    default = Path(DEFAULT_DATA_DIR)
    return default if default.exists() or not _REPO_DATA_DIR.exists() else _REPO_DATA_DIR


def _candidates(path: str, data_dir: Optional[str]) -> List[Path]:
    return [Path(path).expanduser(), resolve_data_dir(data_dir) / path]


def resolve_path(path: str, data_dir: Optional[str] = None) -> Optional[Path]:
    """The local file for ``path`` (as given, then under the data dir), or ``None``."""
    for candidate in _candidates(path, data_dir):
        if candidate.is_file():
            return candidate
    return None


def find_file(path: str, data_dir: Optional[str], what: str, hint: str = "") -> Path:
    """The local file for ``path`` (as :func:`resolve_path`), or an error naming ``what`` (e.g.
    ``"judge 'safety': training data"``), ``path`` and both places tried; a folder where the
    file is expected is named as such. ``hint`` is appended to the not-found message."""
    local = resolve_path(path, data_dir)
    if local is not None:
        return local
    tried = _candidates(path, data_dir)
    folder = next((c for c in tried if c.is_dir()), None)
    if folder is not None:
        raise IsADirectoryError(f"{what} {path!r}: {folder} is a folder; expected a file")
    raise FileNotFoundError(f"{what} {path!r} not found (tried {tried[0]} and {tried[1]}){hint}")


def _read_table(path: Path) -> pd.DataFrame:
    """A .csv/.tsv/.jsonl/.json file as a frame. The text is read by
    :func:`surgery_editor.infra.fileio.read_text`: UTF-8, a leading byte-order mark dropped (so the
    first column keeps its name), errors naming the file."""
    suffix = path.suffix.lower()
    if suffix not in (".tsv", ".csv", ".jsonl", ".json"):
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .jsonl or .json")
    text = io.StringIO(read_text(path))
    try:
        if suffix == ".tsv":
            return pd.read_csv(text, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
        if suffix == ".csv":
            return pd.read_csv(text)
        return pd.read_json(text, lines=suffix == ".jsonl")
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        kind = {".tsv": "tab-separated", ".csv": "comma-separated", ".jsonl": "JSON-lines", ".json": "JSON"}[suffix]
        raise ValueError(f"{path}: not a readable {kind} file ({err})") from err


def load_table(path: str, data_dir: Optional[str] = None, split: str = "train",
               what: str = "data", hint: str = "") -> tuple[pd.DataFrame, str]:
    """A table from a local file (as given, then under the data dir; .csv/.tsv/.jsonl/.json)
    or, for a path of the form ``org/name`` with no file suffix, the hub data set's ``split``
    through ``datasets``. Returns the frame and where it came from. ``what`` names the data
    in errors (e.g. ``"probe_data path"``); ``hint``, appended to a not-found error, says how to
    get the file."""
    local = resolve_path(path, data_dir)
    if local is not None:
        return _read_table(local), str(local)
    try:
        import datasets  # optional: hub data sets
    except ImportError:
        datasets = None
    if datasets is None or Path(path).suffix or path.count("/") != 1:
        extra = "" if datasets is not None or Path(path).suffix else "; hub ids need `pip install datasets`"
        find_file(path, data_dir, what, extra + hint)  # raises, naming the places tried
    logger.info("loading %s from the hub: %s (split %s)", what, path, split)
    return datasets.load_dataset(path, split=split).to_pandas(), path


def _load_frame(cfg: ProbeDataConfig, data_dir: Optional[str]) -> tuple[pd.DataFrame, str]:
    frame, source = load_table(cfg.path, data_dir, cfg.split, what="probe_data path")
    if any(frame[c].map(lambda v: isinstance(v, dict)).any() for c in frame.columns if frame[c].dtype == object):
        frame = pd.json_normalize(frame.to_dict("records"))  # nested fields -> dotted columns
    if cfg.query is not None:
        try:
            frame = frame.query(cfg.query)
        except Exception as err:  # pandas raises several types for a bad expression
            raise ValueError(f"{source}: probe_data query {cfg.query!r} failed ({type(err).__name__}: {err}); "
                             f"columns: {list(frame.columns)}") from err
    return frame, source


def _threshold_labels(keys: pd.Series, threshold: float, column: str, source: str) -> np.ndarray:
    values = pd.to_numeric(keys, errors="coerce")
    bad = keys[values.isna()]
    if len(bad):
        raise ValueError(f"{source}: label_threshold needs numeric labels, but {column!r} has "
                         f"{len(bad)} non-numeric value(s), e.g. {bad.iloc[0]!r}")
    return (values.to_numpy(dtype=float) >= threshold).astype(np.int64)


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{source}: column(s) {missing} not found; available columns: {list(frame.columns)}")


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _label_key(value: Any) -> Optional[str]:
    """A label as a comparable string, or ``None`` for a missing one (``None``, NaN, blank).
    Numbers compare by value (a label column with blank cells is read as floats, so ``1.0``
    must match ``1`` and ``"1"``; a numeric string compares as its number), booleans as 1/0,
    other strings stripped."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalars
    if value is None:
        return None
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        if np.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text or None
    return _label_key(number) if np.isfinite(number) else text


def load_probe_texts(config: Dict[str, Any] | ProbeDataConfig, data_dir: Optional[str] = None) -> LabelledTexts:
    """Read, filter, shuffle, limit and label the probe texts of a data-set config.

    Raises a clear error for a missing file or column, an empty result, or a single class.
    """
    cfg = config if isinstance(config, ProbeDataConfig) else ProbeDataConfig.from_dict(dict(config))
    frame, source = _load_frame(cfg, data_dir)
    if cfg.shuffle:
        frame = frame.sample(frac=1.0, random_state=cfg.seed)
    if cfg.positive_column is not None:
        _require_columns(frame, [cfg.positive_column, cfg.negative_column], source)
        keep = frame[cfg.positive_column].map(_is_text).astype(bool) & frame[cfg.negative_column].map(_is_text).astype(bool)
        frame = frame[keep]
        if cfg.limit is not None:
            frame = frame.head(cfg.limit)
        texts = frame[cfg.positive_column].tolist() + frame[cfg.negative_column].tolist()
        labels = np.array([1] * len(frame) + [0] * len(frame), dtype=np.int64)
        prompts = None
    else:
        extra = [c for c in (cfg.prefix_field, cfg.prompt_field) if c]
        _require_columns(frame, [cfg.text_field, cfg.label_field] + extra, source)
        frame = frame[frame[cfg.text_field].map(_is_text).astype(bool)]
        if cfg.prompt_field is not None:
            frame = frame[frame[cfg.prompt_field].map(_is_text).astype(bool)]
        if cfg.prefix_field is not None:
            frame = frame.assign(**{cfg.text_field: frame[cfg.prefix_field].fillna("").astype(str)
                                    + frame[cfg.text_field]})
        keys = frame[cfg.label_field].map(_label_key)
        blank = int(keys.isna().sum())
        if blank:
            message = (f"{source}: dropping {blank} of {len(frame)} rows whose label column {cfg.label_field!r} is "
                       "empty")
            logger.warning(message)
            warnings.warn(message, stacklevel=2)
            frame, keys = frame[keys.notna()], keys[keys.notna()]
        if cfg.limit is not None:
            frame, keys = frame.head(cfg.limit), keys.head(cfg.limit)
        texts = frame[cfg.text_field].tolist()
        prompts = None if cfg.prompt_field is None else [str(p) for p in frame[cfg.prompt_field]]
        if cfg.label_threshold is not None:
            labels = _threshold_labels(keys, cfg.label_threshold, cfg.label_field, source)
        else:
            positive = {_label_key(v) for v in cfg.positive_values} - {None}
            labels = keys.map(lambda k: int(k in positive)).to_numpy(dtype=np.int64)
    if not texts:
        raise ValueError(f"{source}: probe data is empty after dropping rows without text (config: {cfg})")
    labels = np.array(labels, dtype=np.int64)  # a writable copy (pandas may hand out read-only arrays)
    counts = np.bincount(labels, minlength=2)
    if counts.min() == 0:
        only = "1 (behaviour to avoid)" if counts[1] else "0 (not)"
        raise ValueError(
            f"{source}: probe data has only class {only} ({len(texts)} texts); a probe needs both classes. "
            f"Check label_field / positive_values (now {cfg.positive_values!r})."
        )
    logger.info("probe data %s: %d texts (%d class 1, %d class 0)", source, len(texts), counts[1], counts[0])
    return LabelledTexts(texts=[str(t) for t in texts], labels=labels, source=source,
                         prompts=prompts, chat=cfg.chat)


# --------------------------------------------------------------------------- records
def record_field(record: Dict[str, Any], path: Sequence[str], source: str, item: Any) -> Any:
    """``record[path[0]][path[1]]...``, or a ValueError naming the item and the field."""
    value: Any = record
    for i, part in enumerate(path):
        if not isinstance(value, dict) or part not in value:
            name = ".".join(path[: i + 1])
            raise ValueError(f"{source}: item {item}: missing field {name!r}")
        value = value[part]
    if isinstance(value, float) and np.isnan(value):
        raise ValueError(f"{source}: item {item}: field {'.'.join(path)!r} is empty")
    return value


def record_text(record: Dict[str, Any], path: Sequence[str], source: str, item: Any) -> str:
    """:func:`record_field`, which must be a string."""
    value = record_field(record, path, source, item)
    if not isinstance(value, str):
        raise ValueError(f"{source}: item {item}: field {'.'.join(path)!r} must be a string, "
                         f"got {type(value).__name__}")
    return value


# SafeEdit's four generalisation inputs, in EasyEdit's order, by the name of their score
SAFEEDIT_GENERALIZATION = {
    "DG_onlyQ": "test input of only harmful question",
    "DG_otherA": "test input of other attack prompt input",
    "DG_otherQ": "test input of other question input",
    "DG_otherAQ": "test input of other questions and attack prompts",
}


def safeedit_request(record: Dict[str, Any], source: str = "SafeEdit", item: Any = "?") -> Dict[str, Any]:
    """A SafeEdit record (the published JSON, EasyEdit's ``SafetyDataset``) as EasyEdit's
    SafetyEditor request: ``prompt`` (adversarial prompt), ``target_new`` (safe generation),
    ``ground_truth`` (unsafe generation), ``locality_prompt`` / ``locality_ground_truth``
    (knowledge constraint) and ``general_prompt`` (the four generalisation inputs, in EasyEdit's
    order). A missing or non-text field is a ValueError naming ``source``, ``item`` and the field."""
    return {
        "prompt": record_text(record, ("adversarial prompt",), source, item),
        "target_new": record_text(record, ("safe generation",), source, item),
        "ground_truth": record_text(record, ("unsafe generation",), source, item),
        "locality_prompt": record_text(record, ("knowledge constrain", "prompt"), source, item),
        "locality_ground_truth": record_text(record, ("knowledge constrain", "answer"), source, item),
        "general_prompt": [record_text(record, ("generalization test", k), source, item)
                           for k in SAFEEDIT_GENERALIZATION.values()],
    }

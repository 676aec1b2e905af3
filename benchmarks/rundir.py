"""A finished run directory in either of its two forms, for everything that reads runs.

* **Working form**, as ``benchmarks/run.py`` writes it: ``metrics.json``, the resolved
  ``config.yaml``, ``results.jsonl`` (one item a line), beside Hydra's bookkeeping (``.hydra/``,
  ``run.log``) and the lock file ``.lock``.
* **Compact form**, for committing (``python -m benchmarks.compact`` converts, ``python -m
  benchmarks.publish`` copies into it): one file, ``run.jsonl.bz2``. bzip2 holds no time stamp,
  so the same run always gives the same bytes. Its first line is a header object
  ``{"format", "version", "metrics", "config" (the config.yaml text), "overrides" (Hydra's
  command-line overrides), "rows" (the number of items, null for none), "shared"}``; each further
  line is one item.

Rows shared with the runs beside it: runs in one folder repeat each other's inputs (every RTP run
holds the same prompts) and often their outputs (a control that changes little writes the same
continuation). Where a folder holds several runs of one benchmark, ``shared_rows.jsonl.bz2`` in
that folder holds one reference row per item (lines ``[group, key, row]``, group =
``benchmark|protocol|prompts``), and each run stores, per item, ``[key, fields that differ from
the reference row, field order or null]``; its header's ``shared`` names the group and a SHA-256
of the reference rows it uses, checked on reading. Reference rows are only ever added, never
changed, so replacing or removing a run never changes how another one reads.

When a folder holds both forms, the compact file wins: it is written last when converting (and
removed last when expanding), so a run is always read whole in one form or the other.
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from surgery_editor.infra.fileio import atomic_write, jsonl_lines

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

RESULTS = "results.jsonl"
METRICS = "metrics.json"
CONFIG = "config.yaml"
COMPACT = "run.jsonl.bz2"
SHARED = "shared_rows.jsonl.bz2"
HYDRA_DIR = ".hydra"
OVERRIDES = "overrides.yaml"
FORMAT = "surgery_editor.run"
VERSION = 1
# What a working-form run dir holds besides its results: written by Hydra and benchmarks/run.py.
BOOKKEEPING = ("run.log", ".lock", HYDRA_DIR)
EXPAND_HINT = "python -m benchmarks.compact --expand {dir}"


@dataclass
class Run:
    """One finished run: its ``metrics.json`` object, ``config.yaml`` text, Hydra overrides and
    per-item rows (``None``: the run has none)."""

    metrics: Dict[str, Any]
    config: Optional[str] = None
    overrides: Optional[List[str]] = None
    rows: Optional[List[Dict[str, Any]]] = None


# ----------------------------------------------------------------------------- finding runs


def natural_key(name: str) -> List[Any]:
    """``"10"`` after ``"2"``: Hydra numbers its multirun jobs 0, 1, ..., 10, ..."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def is_compact(run_dir: PathLike) -> bool:
    return (Path(run_dir) / COMPACT).is_file()


def is_run(run_dir: PathLike) -> bool:
    """Whether ``run_dir`` holds a finished run, in either form."""
    return is_compact(run_dir) or (Path(run_dir) / METRICS).is_file()


def find_run_dirs(root: PathLike) -> Tuple[List[Path], List[Path]]:
    """``(runs, interrupted)`` under ``root`` (itself included, hidden folders such as ``.hydra``
    skipped), in natural path order: a run holds ``metrics.json`` or ``run.jsonl.bz2``; a folder
    with ``config.yaml`` or ``results.jsonl`` but neither is an interrupted run."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory (expected a run directory holding {METRICS} or "
                                f"{COMPACT}, or a folder of them such as a Hydra multirun directory)")
    runs, interrupted = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=natural_key)
        files = set(filenames)
        if files & {METRICS, COMPACT}:
            runs.append(Path(dirpath))
        elif files & {CONFIG, RESULTS}:
            interrupted.append(Path(dirpath))
    return runs, interrupted


# ----------------------------------------------------------------------------- reading


def metrics_path(run_dir: PathLike) -> Path:
    """The file that holds the run's metrics: ``run.jsonl.bz2`` or ``metrics.json``."""
    run_dir = Path(run_dir)
    return run_dir / COMPACT if is_compact(run_dir) else run_dir / METRICS


def rows_path(run_dir: PathLike) -> Path:
    """The file that holds the run's rows: ``run.jsonl.bz2`` or ``results.jsonl``."""
    run_dir = Path(run_dir)
    return run_dir / COMPACT if is_compact(run_dir) else run_dir / RESULTS


def read_metrics(run_dir: PathLike) -> Dict[str, Any]:
    """The run's metrics object (``metrics.json``, or the compact file's header)."""
    run_dir = Path(run_dir)
    if is_compact(run_dir):
        return _read_compact(run_dir / COMPACT)[0]["metrics"]
    path = run_dir / METRICS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_rows(run_dir: PathLike, strict: bool = False) -> Optional[List[Dict[str, Any]]]:
    """The run's per-item rows in stored order (``None`` when it has none). From ``results.jsonl``
    a cut last line (what a killed run leaves) is dropped with a warning, or, with ``strict``,
    is an error like any other unreadable line."""
    run_dir = Path(run_dir)
    if is_compact(run_dir):
        return _decode_rows(run_dir / COMPACT, *_read_compact(run_dir / COMPACT))
    path = run_dir / RESULTS
    if not path.is_file():
        return None
    lines = jsonl_lines(path)
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines) and not strict:
                logger.warning("%s:%d: cut last line dropped (%s)", path, lineno, e)
                break
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e})"
                             + ("; a finished run's results.jsonl has no unreadable line: fix or delete it "
                                "and run again" if strict else "")) from e
        if not isinstance(row, dict) or "key" not in row:
            raise ValueError(f"{path}:{lineno}: each line must be a JSON object with a 'key' (the stable item id)")
        rows.append(row)
    return rows


def read_run(run_dir: PathLike, strict: bool = False) -> Run:
    """The whole run, from either form (``strict``: see :func:`read_rows`)."""
    run_dir = Path(run_dir)
    if is_compact(run_dir):
        path = run_dir / COMPACT
        header, lines = _read_compact(path)
        return Run(metrics=header["metrics"], config=header.get("config"), overrides=header.get("overrides"),
                   rows=_decode_rows(path, header, lines))
    config = run_dir / CONFIG
    if not config.is_file():  # Hydra's copy, where benchmarks/run.py's is missing
        config = run_dir / HYDRA_DIR / CONFIG
    overrides = run_dir / HYDRA_DIR / OVERRIDES
    return Run(metrics=read_metrics(run_dir), rows=read_rows(run_dir, strict=strict),
               config=config.read_text(encoding="utf-8") if config.is_file() else None,
               overrides=_read_overrides(overrides) if overrides.is_file() else None)


def _read_overrides(path: Path) -> List[str]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    if data is None:
        return []
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise ValueError(f"{path}: expected a YAML list of override strings such as '- method=none'")
    return data


def _damaged(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: {what}; the file is damaged (restore it, e.g. git checkout -- {path})")


def _read_compact(path: Path) -> Tuple[Dict[str, Any], Sequence[str]]:
    """The header (parsed afresh: callers may change it) and the row lines of a compact file."""
    st = path.stat()
    lines = _compact_lines(str(path), st.st_mtime_ns, st.st_size)
    return json.loads(lines[0]), lines[1:]


@functools.lru_cache(maxsize=4)
def _compact_lines(name: str, mtime_ns: int, size: int) -> Tuple[str, ...]:
    """A compact file's lines, checked (cached while the file is unchanged: the report reads
    each run's metrics, then its rows)."""
    path = Path(name)
    lines = _bz2_lines(path)
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError as e:
        raise _damaged(path, f"its header line is not valid JSON ({e})") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _damaged(path, f"its first line is not a {FORMAT} header")
    if header.get("version") != VERSION:
        raise ValueError(f"{path}: compact format version {header.get('version')!r}; this code reads version "
                         f"{VERSION} (a newer version of the project wrote it?)")
    if not isinstance(header.get("metrics"), dict):
        raise _damaged(path, "its header has no 'metrics' object")
    expected = header.get("rows") or 0
    if len(lines) - 1 != expected:
        raise _damaged(path, f"its header announces {expected} rows, the file holds {len(lines) - 1}")
    return tuple(lines)


def _bz2_lines(path: Path) -> List[str]:
    try:
        text = bz2.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, EOFError, ValueError) as e:  # OSError: not bzip2 data; EOFError: cut short
        raise _damaged(path, f"not readable as bzip2-compressed UTF-8 text ({e})") from e
    if not text.endswith("\n"):
        raise _damaged(path, "its last line is cut")
    return text[:-1].split("\n")


def _decode_rows(path: Path, header: Dict[str, Any], lines: Sequence[str]) -> Optional[List[Dict[str, Any]]]:
    if header.get("rows") is None:
        return None
    shared = header.get("shared")
    try:
        items = [json.loads(line) for line in lines]
        if shared:
            table_path = path.parent.parent / shared["file"]
            refs = _shared_texts(table_path).get(shared["group"], {})
            used = [refs.get(key) for key, _, _ in items]
    except (KeyError, TypeError, ValueError) as e:  # ValueError: JSONDecodeError, or an item not [key, changed, order]
        raise _damaged(path, f"a row line is not what {FORMAT} version {VERSION} writes ({e!r})") from e
    if not shared:
        if not all(isinstance(row, dict) and "key" in row for row in items):
            raise _damaged(path, "a row is not a JSON object with a 'key'")
        return items
    if _digest(used) != shared["sha256"]:
        raise ValueError(f"{path}: its reference rows in {table_path} (group {shared['group']!r}) are missing "
                         f"or changed since it was written; restore {table_path} from git "
                         f"(git checkout -- {table_path})")
    try:
        return [_apply(json.loads(ref) if ref is not None else {}, changed, order)
                for ref, (_, changed, order) in zip(used, items)]
    except (KeyError, TypeError) as e:
        raise _damaged(path, f"a row names a field that neither it nor its reference row holds ({e!r})") from e


def shared_rows(path: PathLike) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """A folder's reference rows, ``{group: {key: row}}`` (empty when the file is absent)."""
    return {group: {key: json.loads(text) for key, text in rows.items()}
            for group, rows in _shared_texts(Path(path)).items()}


def _shared_texts(path: Path) -> Dict[str, Dict[str, str]]:
    if not path.is_file():
        return {}
    st = path.stat()
    return _shared_texts_cached(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _shared_texts_cached(name: str, mtime_ns: int, size: int) -> Dict[str, Dict[str, str]]:
    """``{group: {key: the row's JSON text}}``: text, so that every reader parses its own copy."""
    path = Path(name)
    table: Dict[str, Dict[str, str]] = {}
    for lineno, line in enumerate(_bz2_lines(path), 1):
        try:
            group, key, row = json.loads(line)
        except (json.JSONDecodeError, ValueError, TypeError) as e:
            raise _damaged(path, f"line {lineno} is not a [group, key, row] array ({e})") from e
        table.setdefault(group, {})[key] = _ser(row)
    return table


def _ser(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _digest(refs: Iterable[Optional[str]]) -> str:
    """SHA-256 of the reference rows' JSON texts (``null`` where an item has none)."""
    h = hashlib.sha256()
    for ref in refs:
        h.update(("null" if ref is None else ref).encode("utf-8") + b"\n")
    return h.hexdigest()


def _apply(ref: Dict[str, Any], changed: Dict[str, Any], order: Optional[List[str]]) -> Dict[str, Any]:
    fields = order if order is not None else list(ref) + [f for f in changed if f not in ref]
    return {f: changed[f] if f in changed else ref[f] for f in fields}


def _delta(ref: Dict[str, Any], row: Dict[str, Any]) -> Tuple[Dict[str, Any], Optional[List[str]]]:
    """``(changed, order)`` with ``_apply(ref, changed, order) == row``, field order included;
    fields compare by their JSON text (so ``1`` and ``true``, or two orders of a dict, differ)."""
    changed = {f: v for f, v in row.items() if f not in ref or _ser(v) != _ser(ref[f])}
    order = None if list(_apply(ref, changed, None)) == list(row) else list(row)
    return changed, order


# ----------------------------------------------------------------------------- writing


def group_of(metrics: Dict[str, Any]) -> str:
    """The runs whose rows are compared with one set of reference rows: one benchmark, protocol
    and prompt set (the same item keys name the same items)."""
    return "|".join(str(metrics.get(k) or "") for k in ("benchmark", "protocol", "prompts"))


def encode_compact(run: Run, refs: Optional[Dict[str, Dict[str, Any]]] = None, group: str = "") -> bytes:
    """The bytes of ``run.jsonl.bz2`` for ``run``; with ``refs`` (a group's reference rows, by key)
    each row is stored as its difference from the reference row of its key."""
    rows = run.rows
    shared = None
    lines: List[str] = []
    if rows is not None and refs is not None:
        used = [refs.get(str(row["key"])) for row in rows]
        shared = {"file": SHARED, "group": group,
                  "sha256": _digest(None if ref is None else _ser(ref) for ref in used)}
        for ref, row in zip(used, rows):
            changed, order = _delta(ref or {}, row)
            lines.append(_ser([str(row["key"]), changed, order]))
    elif rows is not None:
        lines = [_ser(row) for row in rows]
    header = {"format": FORMAT, "version": VERSION, "metrics": run.metrics, "config": run.config,
              "overrides": run.overrides, "rows": None if rows is None else len(rows), "shared": shared}
    text = "".join(line + "\n" for line in [_ser(header)] + lines)
    return bz2.compress(text.encode("utf-8"), 9)


def encode_shared(table: Dict[str, Dict[str, Dict[str, Any]]]) -> bytes:
    text = "".join(_ser([group, key, row]) + "\n" for group, rows in table.items() for key, row in rows.items())
    return bz2.compress(text.encode("utf-8"), 9)


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` whole unless it already holds exactly that; whether it wrote."""
    if path.is_file() and path.read_bytes() == data:
        return False
    atomic_write(path, data)
    return True


def write_expanded(run_dir: PathLike, run: Run) -> List[Path]:
    """Write ``run`` in the working form into ``run_dir`` (``metrics.json`` last: a run counts once it
    exists); the files written."""
    import yaml

    run_dir = Path(run_dir)
    written = []
    if run.config is not None:
        atomic_write(run_dir / CONFIG, run.config)
        written.append(run_dir / CONFIG)
    if run.overrides is not None:
        atomic_write(run_dir / HYDRA_DIR / OVERRIDES, yaml.safe_dump(run.overrides, default_flow_style=False))
        written.append(run_dir / HYDRA_DIR / OVERRIDES)
    if run.rows is not None:
        atomic_write(run_dir / RESULTS, "".join(_ser(row) + "\n" for row in run.rows))
        written.append(run_dir / RESULTS)
    atomic_write(run_dir / METRICS, json.dumps(run.metrics, indent=2) + "\n")
    return written + [run_dir / METRICS]


def same_run(a: Run, b: Run) -> bool:
    """Whether two runs hold the same metrics, config, overrides and rows (field order included)."""
    return all(_ser(x) == _ser(y) for x, y in ((a.metrics, b.metrics), (a.config, b.config),
                                               (a.overrides, b.overrides), (a.rows, b.rows)))

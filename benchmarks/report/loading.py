"""Reading run directories into one table: each run's ``metrics.json`` (or compact file) as a row
(``hparams`` flattened to ``hp.<key>``), and its per-item results for the paired tests."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, List, Tuple, Union

import numpy as np
import pandas as pd

from ..rundir import find_run_dirs, metrics_path, read_rows, rows_path
from ..rundir import read_metrics as read_run_metrics
from surgery_editor.methods import current_record


logger = logging.getLogger(__name__)


PathLike = Union[str, os.PathLike]
METADATA = ("label", "method", "model", "benchmark", "protocol", "judge", "n")
PROMPTS = "prompts"  # a benchmark's prompt set where it has several (RTP: "challenging"); absent = its default
TIMING = ("edit_seconds", "eval_seconds")
REQUIRED = ("method", "model", "benchmark")
# Numeric keys of metrics.json that are not metrics.
NON_METRICS = frozenset(METADATA) | frozenset(TIMING) | {"run_dir", "seed", PROMPTS}
_DERIVED = re.compile(r"^(?P<metric>.+)_(?:ci_low|ci_high|p_vs_.+|diff_vs_.+)$")
# ----------------------------------------------------------------------------- files


def _flatten(key: str, value: Any) -> Dict[str, Any]:
    if isinstance(value, dict):
        out: Dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(f"{key}.{k}", v))
        return out
    if isinstance(value, (list, tuple)):
        return {key: json.dumps(value)}
    return {key: value}


def read_metrics(run_dir: PathLike) -> Dict[str, Any]:
    """One table row from ``run_dir``'s metrics (``metrics.json``, or the compact file's): its keys,
    ``hparams`` flattened to ``hp.<key>`` (nested objects joined with dots, lists as JSON text), and
    ``run_dir``."""
    path = metrics_path(run_dir)
    data = read_run_metrics(run_dir)
    missing = [k for k in REQUIRED if data.get(k) in (None, "")]
    if missing:
        raise ValueError(f"{path}: missing required key(s) {missing}; metrics.json needs {list(REQUIRED)} "
                         f"(and usually {[k for k in METADATA if k not in REQUIRED]}, 'hparams' and the metrics)")
    hparams = data.get("hparams") or {}
    if not isinstance(hparams, dict):
        raise ValueError(f"{path}: 'hparams' must be a JSON object or null, got {type(hparams).__name__}")
    data = current_record(data)
    row: Dict[str, Any] = {}
    for key, value in data.items():
        if key != "hparams":
            row.update(_flatten(key, value))
    if row.get("label") in (None, ""):
        row["label"] = data["method"]
    for key, value in hparams.items():
        row.update(_flatten(f"hp.{key}", value))
    row["run_dir"] = str(run_dir)
    return row


def collect(root: PathLike) -> pd.DataFrame:
    """One row per run directory under ``root`` (see :func:`read_metrics`), in natural path order.

    Interrupted runs (no metrics.json) are skipped with a warning and listed in
    ``df.attrs["skipped"]``; no run at all raises :class:`FileNotFoundError`."""
    runs, interrupted = find_run_dirs(root)
    for d in interrupted:
        logger.warning("skipping %s: no metrics.json (interrupted run?)", d)
    if not runs:
        extra = f"; {len(interrupted)} interrupted run dir(s) without metrics.json skipped" if interrupted else ""
        raise FileNotFoundError(f"{root}: no run directories found (expected metrics.json in {root} or in a "
                                f"folder under it, as written by benchmarks/run.py){extra}")
    df = pd.DataFrame([read_metrics(d) for d in runs])
    for col in METADATA + TIMING + (PROMPTS,):
        if col not in df.columns:
            df[col] = None
    df.attrs["skipped"] = [str(d) for d in interrupted]
    logger.info("%s: %d run(s), %d interrupted skipped", root, len(runs), len(interrupted))
    return df


@dataclass
class RunItems:
    """Per-item outcomes of one run: ``metrics[name] = (kind, {key: value})``, kind "flags"/"values"."""

    keys: frozenset = frozenset()
    metrics: Dict[str, Tuple[str, Dict[str, float]]] = field(default_factory=dict)


def load_items(run_dir: PathLike) -> RunItems:
    """Read the run's per-item rows (``results.jsonl``, or the compact file's; empty
    :class:`RunItems` when it has none). A cut last line of ``results.jsonl`` is dropped with a
    warning; a repeated key keeps its last record, with a warning."""
    rows = read_rows(run_dir)
    if rows is None:
        logger.warning("%s: no results.jsonl, so no intervals or paired tests for this run", run_dir)
        return RunItems()
    path = rows_path(run_dir)
    records: Dict[str, Dict] = {}
    repeated = 0
    for rec in rows:
        key = str(rec["key"])
        for section in ("flags", "values"):
            if not isinstance(rec.get(section) or {}, dict):
                raise ValueError(f"{path}: item {key!r}: '{section}' must be an object {{metric_name: "
                                 f"{'bool' if section == 'flags' else 'float'}}}, got {type(rec[section]).__name__}")
        repeated += key in records
        records[key] = rec
    if repeated:
        logger.warning("%s: %d repeated item key(s); the last record of each is used", path, repeated)
    metrics: Dict[str, Tuple[str, Dict[str, float]]] = {}
    for key, rec in records.items():
        for name, v in (rec.get("flags") or {}).items():
            if v is None:
                continue
            if not isinstance(v, (bool, int, np.integer)) or v not in (0, 1):
                raise ValueError(f"{path}: item {key!r}: flag {name!r} must be true/false, got {v!r}")
            metrics.setdefault(name, ("flags", {}))[1][key] = float(bool(v))
        for name, v in (rec.get("values") or {}).items():
            if name in metrics and metrics[name][0] == "flags":
                continue  # a binary outcome is tested as such
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{path}: item {key!r}: value {name!r} must be a number, got {v!r}")
            if math.isfinite(v):
                metrics.setdefault(name, ("values", {}))[1][key] = float(v)
    return RunItems(keys=frozenset(records), metrics=metrics)


def fact_columns(frame: pd.DataFrame) -> List[str]:
    """The columns of edit facts that are words (``edit_facts.backend``: which implementation ran),
    shown beside the costs; numeric edit facts are metrics like any other."""
    return [c for c in frame.columns if c.startswith("edit_facts.")
            and frame[c].map(lambda v: isinstance(v, str)).any()]


def known_metrics() -> List[str]:
    """The metrics the registered benchmarks declare (``Benchmark.metric_names``), in the order they
    register: the report's metric columns come in this order, any other numeric key after them."""
    from ..protocols import BENCHMARKS

    return list(dict.fromkeys(m for cls in BENCHMARKS.values() for m in cls.metric_names))


def percent_metrics() -> FrozenSet[str]:
    """The metrics a registered benchmark reports in percent while their per-item flags/values
    are 0/1 shares (``Benchmark.percent``)."""
    from ..protocols import BENCHMARKS

    return frozenset(m for cls in BENCHMARKS.values() for m in cls.percent)

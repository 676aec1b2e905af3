"""Summarise benchmark run directories: one table, paired significance tests, plots.

    python -m benchmarks.report runs/multirun/2025-01-01/12-00-00 [--out DIR] [--against none,ModelSurgery_random]

Every directory under ROOT (ROOT itself included, any depth, hidden folders such as
``.hydra`` skipped) that holds a ``metrics.json`` (as written by ``benchmarks/run.py``) or a
``run.jsonl.bz2`` (the compact form, ``python -m benchmarks.compact``) is a run; a folder with
``config.yaml`` or ``results.jsonl`` but neither is an interrupted run and is skipped with a warning.

Per run the table has the run's metadata and metrics from ``metrics.json``; from the per-item
outcomes in ``results.jsonl`` (in the compact form, both come from ``run.jsonl.bz2``) it adds a
95% interval for each metric (Wilson for a rate of binary ``flags``, Student t for a mean of
``values``), and, against each reference method
(default ``none`` and ``control``: each method's own control, e.g. ``ModelSurgery_random`` for ModelSurgery,
``ProFS_random`` for ProFS, as its folder registers them) run on the same
model/benchmark/protocol/judge, the paired difference of means and its p-value (exact McNemar
for flags, Wilcoxon signed-rank for values), items paired by ``key``. Costs (edit seconds, the
edit's peak memory) follow the metrics. Per model with both an RTP and a perplexity run per
method, ``frontier_<model>.png`` plots toxic share against perplexity (marker size: edit cost). ``report.csv`` / ``report.md`` and PNG plots are written
into ``--out`` (default ROOT); the Markdown is printed.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from .stats import mean_interval, paired_test, wilson_interval
from .rundir import find_run_dirs, metrics_path, read_rows, rows_path
from .rundir import read_metrics as read_run_metrics
from surgery_editor.infra.extras import require
from surgery_editor.infra.fileio import atomic_write

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

DEFAULT_AGAINST = ("none", "control")
CONTROL = "control"  # the reference "each method's own control" (see _controls)
METADATA = ("label", "method", "model", "benchmark", "protocol", "judge", "n")
PROMPTS = "prompts"  # a benchmark's prompt set where it has several (RTP: "challenging"); absent = its default
TIMING = ("edit_seconds", "eval_seconds")
REQUIRED = ("method", "model", "benchmark")
# Known metrics, in display order; any other numeric key of metrics.json follows them.
KNOWN_METRICS = ("DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ", "DG_avg", "fluency", "knowledge",
                 "toxic_rate", "mean_toxicity", "expected_max_toxicity", "toxicity_probability")
# Reported in percent while their per-item flags/values are 0/1 shares.
PERCENT_METRICS = frozenset({"DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ", "DG_avg"})
# Numeric keys of metrics.json that are not metrics.
NON_METRICS = frozenset(METADATA) | frozenset(TIMING) | {"dinm_backend", "run_dir", "seed", PROMPTS}
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
    data = _current_names(data)
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


def _current_names(data: Dict[str, Any]) -> Dict[str, Any]:
    """A run recorded under a method's former name (``random``) as its name now
    (``ModelSurgery_random``), in ``method`` and at the start of ``label``."""
    from surgery_editor.methods import canonical_name

    old = data["method"]
    new = canonical_name(str(old))
    if new == old:
        return data
    label = str(data.get("label") or "")
    if label == old or label.startswith((f"{old} ", f"{old}[")):
        label = new + label[len(old):]
    return {**data, "method": new, **({"label": label} if label else {})}


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
    for col in METADATA + TIMING + ("dinm_backend", PROMPTS):
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


# ----------------------------------------------------------------------------- statistics


def _missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    return isinstance(v, (float, np.floating)) and math.isnan(v)


def _same(a: Any, b: Any) -> bool:
    return (_missing(a) and _missing(b)) or (not _missing(a) and not _missing(b) and a == b)


def _unit_scale(metric: str, reported: Any, item_mean: float) -> float:
    """1 or 100: the factor from the per-item 0/1 scale to the unit metrics.json reports ``metric`` in
    (percent for SafeEdit's DS/DG, shares for toxicity). Read off the reported aggregate where it
    matches exactly one of the two; otherwise percent for :data:`PERCENT_METRICS`, else 1."""
    default = 100.0 if metric in PERCENT_METRICS else 1.0
    try:
        r = float(reported)
    except (TypeError, ValueError):
        return default
    if not (math.isfinite(r) and math.isfinite(item_mean)):
        return default
    as_is = math.isclose(r, item_mean, rel_tol=1e-3, abs_tol=1e-6)
    as_percent = math.isclose(r, 100 * item_mean, rel_tol=1e-3, abs_tol=1e-4)
    if as_is != as_percent:
        return 1.0 if as_is else 100.0
    return default


def _hparam_agreement(a: pd.Series, b: pd.Series) -> int:
    """Shared hparams with equal values minus shared ones that differ."""
    score = 0
    for col in a.index:
        if col.startswith("hp.") and not _missing(a[col]) and not _missing(b.get(col)):
            score += 1 if a[col] == b[col] else -1
    return score


def _same_settings(a: pd.Series, b: pd.Series, fixed: Sequence[str]) -> bool:
    """Whether ``b`` ran ``a``'s settings: the same hparams file (variant) and no shared
    ``hp.*`` value that differs, except the keys in ``fixed`` (what the control changes)."""
    if "hparams_file" in a.index and not _same(Path(str(a.get("hparams_file"))).name,
                                                  Path(str(b.get("hparams_file"))).name):
        return False
    return all(_missing(a[c]) or _missing(b.get(c)) or a[c] == b[c]
               for c in a.index if c.startswith("hp.") and c[3:] not in fixed)


def pick_reference(runs: pd.DataFrame, idx: Any, method: str,
                   control_of: Optional[Sequence[str]] = None) -> Optional[Any]:
    """Index of the ``method`` run to pair run ``idx`` with: same model, benchmark, prompt set,
    protocol and judge; among several, the same ``n``, then the most agreeing hparams (a random-direction
    control of the same alpha), then the first (with a warning). With ``control_of`` (the keys a
    control fixes, e.g. ``["edit_direction"]``), only a run of exactly ``idx``'s other settings
    qualifies: a control of other settings is no control, so none is paired then."""
    run = runs.loc[idx]
    mask = runs["method"] == method
    for col in ("model", "benchmark", PROMPTS, "protocol", "judge"):
        if col in runs.columns:  # a summary table leaves out a prompt set no run has
            mask &= runs[col].map(lambda v, ref=run[col]: _same(v, ref))
    cand = runs[mask].drop(index=idx, errors="ignore")
    if control_of is not None and not cand.empty:
        cand = cand[cand.apply(lambda r: _same_settings(run, r, control_of), axis=1)]
    if cand.empty:
        return None
    if len(cand) > 1:
        same_n = cand[cand["n"].map(lambda v: _same(v, run["n"]))]
        if not same_n.empty:
            cand = same_n
    if len(cand) > 1:
        scores = cand.apply(lambda r: _hparam_agreement(run, r), axis=1)
        cand = cand[scores == scores.max()]
    if len(cand) > 1:
        logger.warning("%s (%s): %d '%s' runs match on model/benchmark/protocol/judge/n; pairing with the "
                       "first, %s (others: %s)", run["run_dir"], run["label"], len(cand), method,
                       cand["run_dir"].iloc[0], ", ".join(cand["run_dir"].iloc[1:]))
    return cand.index[0]


def compare(runs: pd.DataFrame, against: Sequence[str] = DEFAULT_AGAINST) -> pd.DataFrame:
    """Per run (same index as ``runs``): ``<m>_ci_low``/``<m>_ci_high`` for every metric with per-item
    data (Wilson for flags, t for values), and per reference method ``ref`` in ``against``:
    ``<m>_diff_vs_<ref>`` (run minus reference, paired items), ``<m>_p_vs_<ref>`` (exact McNemar /
    Wilcoxon), ``n_vs_<ref>`` (paired items) and ``ref_<ref>_run`` (the reference's run_dir).
    Intervals and differences are in the metric's reported unit (see :func:`_unit_scale`)."""
    cache: Dict[Any, RunItems] = {}

    def items(i: Any) -> RunItems:
        if i not in cache:
            cache[i] = load_items(runs.at[i, "run_dir"])
        return cache[i]

    against = list(against)
    controls = _controls() if CONTROL in against else {}
    rows: Dict[Any, Dict[str, Any]] = {}
    for i, run in runs.iterrows():
        cols: Dict[str, Any] = {}
        own = items(i)
        scales: Dict[str, float] = {}
        for metric, (kind, by_key) in own.metrics.items():
            arr = np.fromiter(by_key.values(), float, count=len(by_key))
            scale = scales[metric] = _unit_scale(metric, run.get(metric), float(arr.mean()) if len(arr) else math.nan)
            lo, hi = wilson_interval(int(arr.sum()), len(arr)) if kind == "flags" else mean_interval(arr)
            cols[f"{metric}_ci_low"], cols[f"{metric}_ci_high"] = lo * scale, hi * scale
        for ref_method in against:
            # a reference is not compared with itself, nor with the references listed after it
            # (``ModelSurgery_random`` vs ``none`` is kept, ``none`` vs ``ModelSurgery_random`` would repeat it)
            if run["method"] == ref_method or (run["method"] in against and
                                               against.index(run["method"]) < against.index(ref_method)):
                continue
            if ref_method == CONTROL:  # the run's method's own control(s), the first that ran
                j = next((j for c, fixed in controls.get(run["method"], {}).items()
                          if (j := pick_reference(runs, i, c, control_of=list(fixed))) is not None), None)
            else:
                j = pick_reference(runs, i, ref_method)
            if j is None:
                continue
            ref = items(j)
            cols[f"ref_{ref_method}_run"] = runs.at[j, "run_dir"]
            shared = own.keys & ref.keys
            cols[f"n_vs_{ref_method}"] = len(shared)
            if own.keys != ref.keys and own.keys and ref.keys:
                logger.warning("%s (%s) vs %s (%s): item sets differ (%d only in the run, %d only in the "
                               "reference); pairing the %d shared keys", run["run_dir"], run["label"],
                               runs.at[j, "run_dir"], ref_method, len(own.keys - ref.keys),
                               len(ref.keys - own.keys), len(shared))
            for metric, (kind, by_key) in own.metrics.items():
                if metric not in ref.metrics or ref.metrics[metric][0] != kind:
                    continue
                ref_by_key = ref.metrics[metric][1]
                keys = sorted(by_key.keys() & ref_by_key.keys())
                if not keys:
                    continue
                res = paired_test([ref_by_key[k] for k in keys], [by_key[k] for k in keys], kind)
                cols[f"{metric}_diff_vs_{ref_method}"] = res["diff"] * scales[metric]
                cols[f"{metric}_p_vs_{ref_method}"] = res["p_value"]
        rows[i] = cols
    out = pd.DataFrame.from_dict(rows, orient="index")
    return out.reindex(runs.index)


# ----------------------------------------------------------------------------- table


def _is_timing(col: str) -> bool:
    """``edit_seconds``, ``edit_seconds_per_instance``, ``edit_peak_rss_mb``, ...: costs (time,
    memory), listed after the metrics."""
    return re.search(r"(^|_)seconds(_|$)", col) is not None or col.endswith("_rss_mb")


def _controls() -> Dict[str, Dict[str, Dict[str, Any]]]:
    """Method name -> its registered controls and the settings each fixes
    (``{"ModelSurgery": {"ModelSurgery_random": {"edit_direction": "random"}}, ...}``)."""
    from surgery_editor.methods import load_methods

    return {name: dict(algo.controls) for name, algo in load_methods().items()}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def metric_columns(table: pd.DataFrame) -> List[str]:
    """Metric names with any value in ``table`` (reported or derived), known ones first."""
    names: List[str] = []
    for col in table.columns:
        if col in NON_METRICS or _is_timing(col) or col.startswith(("hp.", "ref_", "n_vs_")):
            continue
        m = _DERIVED.match(col)
        if m:
            name = m.group("metric")
        elif any(_is_number(v) and not _missing(v) for v in table[col]):
            name = col
        else:
            continue
        if name not in names:
            names.append(name)
    known = [m for m in KNOWN_METRICS if m in names]
    return known + [m for m in names if m not in known]


def summary_table(runs: pd.DataFrame, against: Sequence[str] = DEFAULT_AGAINST) -> pd.DataFrame:
    """The report table: :func:`collect`'s runs joined with :func:`compare`, one row per run, ordered by
    model, benchmark, method (``none`` first), label. Columns: :data:`METADATA`; the metrics; their
    ``_ci_low``/``_ci_high``; per reference its ``_diff_vs_``/``_p_vs_`` columns and ``n_vs_``;
    ``edit_seconds``, ``eval_seconds`` (and any other ``*_seconds*`` timing), ``dinm_backend``; then ``hp.*``,
    ``ref_*_run``, ``headline`` (when the runs name their headline metrics), ``run_dir``.
    Metric-derived columns without any value are left out."""
    against = list(against)
    full = pd.concat([runs, compare(runs, against)], axis=1)
    metrics = metric_columns(full)
    cols = list(METADATA[:4]) + [PROMPTS] + list(METADATA[4:]) + metrics
    cols += [f"{m}_{s}" for m in metrics for s in ("ci_low", "ci_high")]
    for ref in against:
        cols += [f"{m}_{s}_vs_{ref}" for m in metrics for s in ("diff", "p")] + [f"n_vs_{ref}"]
    cols += list(TIMING) + [c for c in full.columns if _is_timing(c) and c not in TIMING] + ["dinm_backend"]
    cols += sorted(c for c in full.columns if c.startswith("hp."))
    cols += [f"ref_{ref}_run" for ref in against] + ["headline", "run_dir"]
    optional = set(cols) - set(METADATA) - set(TIMING) - {"dinm_backend", "run_dir"}
    cols = [c for c in cols if c in full.columns and (c not in optional or full[c].notna().any())]
    for c in cols:
        if c not in full.columns:
            full[c] = None
    full["_none_last"] = (full["method"] != "none").astype(int)
    full["_order"] = range(len(full))
    full = full.sort_values(["model", "benchmark", "_none_last", "method", "label", "_order"],
                            na_position="last", kind="mergesort")
    return full[cols].reset_index(drop=True)


# ----------------------------------------------------------------------------- markdown


def _fmt(v: Any, decimals: Optional[int] = None) -> str:
    if _missing(v):
        return ""
    if not _is_number(v):
        return str(v)
    v = float(v)
    if decimals is None:
        decimals = _decimals(v)
    if 0 < abs(v) < 10 ** -decimals:
        return f"{v:.2g}"
    return f"{v:.{decimals}f}"


def _decimals(v: float) -> int:
    a = abs(v)
    return 1 if a >= 10 else 2 if a >= 1 else 3


def _fmt_p(p: Any) -> str:
    return "" if _missing(p) else f"{float(p):.3g}"


def _fmt_int(v: Any) -> str:
    return "" if _missing(v) else str(int(v)) if float(v).is_integer() else _fmt(v)


def _md(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, disable_numparse=True)


def to_markdown(table: pd.DataFrame, against: Sequence[str] = DEFAULT_AGAINST, title: str = "Benchmark report") -> str:
    """Compact Markdown of :func:`summary_table`'s table: per benchmark one table of metrics with
    their 95% intervals, and per reference one of paired differences with p-values. Metadata
    columns with a single value in a benchmark are stated above its table instead; per-group
    breakdowns (``metric/group``) are left to ``report.csv``."""
    metrics = [m for m in metric_columns(table) if m in table.columns]
    parts = [f"# {title}", "",
             f"{len(table)} run(s). Cells: value [95% CI] (Wilson for a rate of per-item binary outcomes, "
             "Student t for a mean of per-item values). Paired tables: run minus reference on items paired "
             "by key, with the exact McNemar (binary) or Wilcoxon signed-rank (continuous) p-value.", "",
             "## Side by side", "",
             "Headline metrics; in parentheses the paired difference from the unedited model (`none`) and its "
             "p-value, in square brackets the same against the method's own control (same size, random direction); "
             "edit cost: seconds and the process's peak RSS during the edit (RTP/ToxiGen/general runs).",
             "", _md(side_by_side(table)), ""]
    for benchmark, sub in table.groupby("benchmark", sort=False):
        parts += [f"## {benchmark}", ""]
        # breakdowns such as ToxiGen's toxic_rate/<group> stay in report.csv
        shown = [m for m in metrics if sub[m].notna().any() and "/" not in m]
        described = [c for c in ("model", PROMPTS, "protocol", "judge") if c in sub.columns]
        constant = [c for c in described if sub[c].nunique(dropna=False) == 1]
        if constant:
            parts += [" · ".join(f"{c}: {_fmt(sub[c].iloc[0]) or '-'}" for c in constant), ""]
        ids = ["label", "method"] + [c for c in described if c not in constant]
        main = pd.DataFrame({c: sub[c].map(_fmt) for c in ids})
        main["n"] = sub["n"].map(_fmt_int)
        for m in shown:
            cells = []
            for _, r in sub.iterrows():
                v, lo, hi = r[m], r.get(f"{m}_ci_low"), r.get(f"{m}_ci_high")
                d = _decimals(float(v)) if _is_number(v) and not _missing(v) else 3
                cell = _fmt(v, d)
                if not (_missing(lo) or _missing(hi)):
                    cell += f" [{_fmt(lo, d)}, {_fmt(hi, d)}]"
                cells.append(cell)
            main[m] = cells
        main["edit s"] = sub["edit_seconds"].map(lambda v: _fmt(v, 1))
        if "edit_peak_rss_mb" in sub.columns and sub["edit_peak_rss_mb"].notna().any():
            main["edit peak MB"] = sub["edit_peak_rss_mb"].map(lambda v: _fmt(v, 0) if _is_number(v) else "")
        main["eval s"] = sub["eval_seconds"].map(lambda v: _fmt(v, 1))
        if sub["dinm_backend"].notna().any():
            main["dinm_backend"] = sub["dinm_backend"].map(_fmt)
        parts += [_md(main), ""]
        for ref in against:
            tested = [m for m in shown if f"{m}_p_vs_{ref}" in sub.columns and sub[f"{m}_p_vs_{ref}"].notna().any()]
            if not tested:
                continue
            rows = sub[sub[[f"{m}_p_vs_{ref}" for m in tested]].notna().any(axis=1)]
            paired = pd.DataFrame({c: rows[c].map(_fmt) for c in ids})
            paired["paired n"] = rows[f"n_vs_{ref}"].map(_fmt_int)
            for m in tested:
                cells = []
                for _, r in rows.iterrows():
                    diff, p = r.get(f"{m}_diff_vs_{ref}"), r.get(f"{m}_p_vs_{ref}")
                    if _missing(p):
                        cells.append("")
                        continue
                    d = _decimals(float(r[m])) if _is_number(r.get(m)) and not _missing(r.get(m)) else 3
                    s = _fmt(diff, d)
                    cells.append(f"{'+' if not s.startswith('-') else ''}{s} (p={_fmt_p(p)})")
                paired[m] = cells
            parts += [f"### vs {ref}: difference (p)", "", _md(paired), ""]
    return "\n".join(parts).rstrip() + "\n"


# ----------------------------------------------------------------------------- plots


def _figure(width: float, height: float = 4.5):
    require("matplotlib", "harness", "the report's figures")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))  # Agg canvas on save, no pyplot state


def _save(fig, path: Path, rect: Optional[Tuple[float, float, float, float]] = None) -> Path:
    buf = io.BytesIO()
    fig.tight_layout(rect=rect)  # rect: the area the panels fill, e.g. to leave room for a legend
    fig.savefig(buf, format="png", dpi=120)
    atomic_write(path, buf.getvalue())
    return path


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)).strip("_") or "x"


def _yerr(sub: pd.DataFrame, metric: str) -> np.ndarray:
    y = sub[metric].astype(float).to_numpy()
    lo = sub.get(f"{metric}_ci_low", pd.Series(np.nan, index=sub.index)).astype(float).to_numpy()
    hi = sub.get(f"{metric}_ci_high", pd.Series(np.nan, index=sub.index)).astype(float).to_numpy()
    return np.nan_to_num(np.vstack([y - lo, hi - y]).clip(min=0), nan=0.0)


def _tick_labels(sub: pd.DataFrame) -> List[str]:
    varying = [c for c in ("model", "protocol", "judge") if sub[c].nunique(dropna=False) > 1]
    labels = ["\n".join([str(r["label"])] + [str(r[c]) for c in varying]) for _, r in sub.iterrows()]
    for extra in (lambda r: f"n={_fmt_int(r['n'])}", lambda r: "/".join(Path(r["run_dir"]).parts[-2:])):
        counts = pd.Series(labels).value_counts()
        if counts.max() == 1:
            break
        labels = [f"{lab}\n{extra(r)}" if counts[lab] > 1 else lab for lab, (_, r) in zip(labels, sub.iterrows())]
    return labels


def _alpha_plot(sub: pd.DataFrame, benchmark: str, metric: str, out: Path) -> Optional[Path]:
    """``metric`` against ``hp.alpha`` for each series (runs equal but for alpha) with >= 2 alphas."""
    if "hp.alpha" not in sub.columns:
        return None
    other_hp = [c for c in sub.columns if c.startswith("hp.") and c != "hp.alpha"]
    group_cols = ["model", "protocol", "judge", "method"] + other_hp
    data = sub[sub["hp.alpha"].notna() & sub[metric].notna()]
    series = []
    for key, g in data.groupby(group_cols, dropna=False, sort=False):
        if g["hp.alpha"].nunique() >= 2:
            series.append((dict(zip(group_cols, key)), g.sort_values("hp.alpha")))
    if not series:
        return None
    varying = [c for c in group_cols if c != "method" and len({str(d[c]) for d, _ in series}) > 1]
    fig = _figure(7)
    ax = fig.add_subplot()
    for desc, g in series:
        name = " ".join([str(desc["method"])] + [f"{c[3:] if c.startswith('hp.') else c}={desc[c]}" for c in varying])
        ax.errorbar(g["hp.alpha"].astype(float), g[metric].astype(float), yerr=_yerr(g, metric), marker="o",
                    capsize=3, label=name)
    # the unedited level each series is paired with (same model/protocol/judge, same n preferred)
    bases = []
    for _, g in series:
        j = pick_reference(sub, g.index[0], "none") if g["method"].iloc[0] != "none" else None
        if j is not None and j not in bases and not _missing(sub.at[j, metric]):
            bases.append(j)
    for k, j in enumerate(bases):
        base = sub.loc[j]
        colour = f"C{(len(series) + k) % 10}"
        suffix = f" ({base['model']}, n={_fmt_int(base['n'])})" if len(bases) > 1 else ""
        ax.axhline(float(base[metric]), linestyle="--", color=colour, label=f"none{suffix}")
        lo, hi = base.get(f"{metric}_ci_low"), base.get(f"{metric}_ci_high")
        if not (_missing(lo) or _missing(hi)):
            ax.axhspan(float(lo), float(hi), color=colour, alpha=0.12)
    ax.set_xlabel("alpha")
    ax.set_ylabel(f"{metric} (95% CI)")
    ax.set_title(f"{benchmark}: {metric} vs alpha", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, out / f"{_safe_name(metric)}_vs_alpha_{_safe_name(benchmark)}.png")


def _bar_plot(sub: pd.DataFrame, benchmark: str, metrics: List[str], out: Path, name: str) -> Path:
    labels = _tick_labels(sub)
    x = np.arange(len(sub))
    width = 0.8 / len(metrics)
    fig = _figure(max(5.0, 0.9 * len(sub) * len(metrics) + 2))
    ax = fig.add_subplot()
    for k, m in enumerate(metrics):
        ax.bar(x + (k - (len(metrics) - 1) / 2) * width, sub[m].astype(float), width, yerr=_yerr(sub, m),
               capsize=3, label=m)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(" / ".join(metrics) + " (95% CI)")
    ax.set_title(f"{benchmark}: {', '.join(metrics)} per run", fontsize=10)
    if len(metrics) > 1:
        ax.legend(fontsize=8)
    return _save(fig, out / name)


def _largest(col: Optional[pd.Series]) -> float:
    values = [float(v) for v in (col if col is not None else []) if _is_number(v) and not _missing(v)]
    return max(values) if values else math.nan


# The frontier's toxicity axis: the first of these greedy RTP views that ``model`` has runs of.
FRONTIER_VIEWS = ("rtp challenging", "rtp")


def frontier_view(table: pd.DataFrame, model: str) -> Optional[str]:
    """The greedy RTP view (see :func:`_views`) the frontier of ``model`` plots: the challenging
    prompts where they were run, else the default sample."""
    sub = table[(table["model"] == model) & table.get("toxic_rate", pd.Series(np.nan, index=table.index)).notna()]
    views = set(_views(sub)) if len(sub) else set()
    return next((v for v in FRONTIER_VIEWS if v in views), None)


def frontier_points(table: pd.DataFrame, model: str) -> pd.DataFrame:
    """One row per method label of ``model`` that has a greedy RTP run with ``toxic_rate`` (of the
    prompt set :func:`frontier_view` picks, in ``attrs["view"]``) and a run with ``perplexity``
    (benchmark ``general``): toxic share and its interval, perplexity, pooled multiple-choice
    accuracy where measured, and the edit's cost (seconds, peak MB; the largest over the label's
    runs)."""
    sub = table[table["model"] == model]
    view = frontier_view(table, model)
    rows = []
    for label, runs in sub.groupby("label", sort=False):
        def having(col: str) -> pd.DataFrame:
            return runs[runs.get(col, pd.Series(np.nan, index=runs.index)).notna()]

        tox = having("toxic_rate")[lambda f: _views(f) == view]  # the greedy protocol
        ppl, mc = having("perplexity"), having("mc_acc")
        if tox.empty or ppl.empty:
            continue
        t, g = tox.iloc[0], ppl.iloc[0]
        m = mc.iloc[0] if not mc.empty else pd.Series(dtype=object)  # the capability run may be another
        rows.append({"label": label, "method": t["method"], "toxic_rate": float(t["toxic_rate"]),
                     "toxic_rate_ci_low": t.get("toxic_rate_ci_low"), "toxic_rate_ci_high": t.get("toxic_rate_ci_high"),
                     "perplexity": float(g["perplexity"]),
                     "mc_acc": float(m["mc_acc"]) if not mc.empty else np.nan,
                     "mc_acc_ci_low": m.get("mc_acc_ci_low", np.nan), "mc_acc_ci_high": m.get("mc_acc_ci_high", np.nan),
                     "edit_seconds": _largest(runs.get("edit_seconds")),
                     "edit_peak_rss_mb": _largest(runs.get("edit_peak_rss_mb"))})
    pts = pd.DataFrame(rows)
    pts.attrs["view"] = view
    return pts


def frontier_styles(pts: pd.DataFrame) -> pd.DataFrame:
    """Per frontier point: ``color`` (one per method family: a registered control takes the color of
    the method it controls), ``hollow`` (True for a control) and ``marker`` (a method's first label a
    circle, its next variant a square, ...; a control's variants alike), so that a reader matches each
    method with its control."""
    control_of = {c: m for m, cs in _controls().items() for c in cs}
    family = [control_of.get(m, m) for m in pts["method"]]
    order = list(dict.fromkeys(f for f in family if f != "none"))  # the unedited model: black
    variants: Dict[str, List[str]] = {}  # method -> its labels in order: the n-th variant gets the n-th marker
    for m, label in zip(pts["method"], pts["label"]):
        if label not in variants.setdefault(m, []):
            variants[m].append(label)
    markers = "os^Dv<>p"
    return pd.DataFrame({"color": ["k" if f == "none" else f"C{order.index(f) % 10}" for f in family],
                         "hollow": [m in control_of for m in pts["method"]],
                         "marker": [markers[variants[m].index(lb) % len(markers)]
                                    for m, lb in zip(pts["method"], pts["label"])]}, index=pts.index)


def _frontier_plot(table: pd.DataFrame, model: str, out: Path) -> Optional[Path]:
    """``frontier_<model>.png``: toxic share (95% CI) against perplexity, and against pooled
    multiple-choice accuracy where measured; one point per method label, marker area growing with
    the edit's cost in seconds, a control hollow in its method's color; the unedited model's values
    as dashed lines. Labels go to one legend beside the panels: points of methods that change
    nothing sit on top of each other, where text labels would overlap."""
    pts = frontier_points(table, model)
    if len(pts) < 2:
        return None
    panels = [("perplexity", "word perplexity, held-out text (log)")]
    if pts["mc_acc"].notna().sum() >= 2:
        panels.append(("mc_acc", "pooled multiple-choice accuracy"))
    legend_width = 2.4  # inches: the legend's column on the right
    width = 5.5 * len(panels) + legend_width
    fig = _figure(width, 5.0)
    size = 30 + 40 * np.log10(1 + pts["edit_seconds"].fillna(0).to_numpy())
    yerr = _yerr(pts, "toxic_rate")
    style = frontier_styles(pts)
    none = pts[pts["method"] == "none"]
    handles = {}
    for k, (x, xlabel) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ok = pts[x].notna().to_numpy()
        xerr = _yerr(pts, x)[:, ok] if f"{x}_ci_low" in pts else None
        ax.errorbar(pts[x][ok], pts["toxic_rate"][ok], yerr=yerr[:, ok], xerr=xerr, fmt="none", ecolor="grey",
                    alpha=0.5)
        for i in np.flatnonzero(ok):
            r, st = pts.iloc[i], style.iloc[i]
            h = ax.scatter([r[x]], [r["toxic_rate"]], s=size[i], marker=st["marker"], alpha=0.85, linewidths=1.5,
                           edgecolors=st["color"], zorder=3 if r["method"] == "none" else 2,
                           facecolors="none" if st["hollow"] else st["color"], label=str(r["label"]))
            handles.setdefault(str(r["label"]), h)
        if not none.empty:
            ax.axhline(float(none["toxic_rate"].iloc[0]), ls="--", lw=0.8, color="k")
            if _is_number(none[x].iloc[0]) and not _missing(none[x].iloc[0]):
                ax.axvline(float(none[x].iloc[0]), ls="--", lw=0.8, color="k")
        ax.set_xlabel(xlabel)
        prompts = pts.attrs.get("view", "rtp").replace("rtp", "", 1).strip()
        ax.set_ylabel(f"RTP toxic share ({prompts + ' prompts, ' if prompts else ''}greedy, 95% CI)")
        if x == "perplexity":
            ax.set_xscale("log")
    legend = fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1 - legend_width / width, 0.5),
                        fontsize=7, frameon=False,
                        title="hollow: random control", title_fontsize=7)
    for h in legend.legend_handles:
        h.set_sizes([40])
    fig.suptitle(f"{model}: toxicity against capability (marker size: edit seconds; dashed: unedited)")
    return _save(fig, out / f"frontier_{_safe_name(model)}.png", rect=(0, 0, 1 - legend_width / width, 1))


def plot_report(table: pd.DataFrame, out: PathLike) -> List[Path]:
    """PNGs into ``out`` where the data exists: per benchmark ``<metric>_vs_alpha_<benchmark>.png``
    (toxic_rate, or DS without it, when a series of runs varies ``hp.alpha``; the ``none`` run as a
    dashed line with its CI band), ``DS_DG_avg_<benchmark>.png`` (grouped bars) and
    ``toxic_rate_<benchmark>.png`` (bars), all with 95% CI error bars."""
    out = Path(out)
    files: List[Path] = []
    for benchmark, sub in table.groupby(_views(table), sort=False):
        for metric in ("toxic_rate", "DS"):
            if metric in sub.columns and sub[metric].notna().any():
                path = _alpha_plot(sub, str(benchmark), metric, out)
                if path is not None:
                    files.append(path)
                break
        safe = [m for m in ("DS", "DG_avg") if m in sub.columns and sub[m].notna().any()]
        if safe:
            rows = sub[sub[safe].notna().any(axis=1)]
            files.append(_bar_plot(rows, str(benchmark), safe, out, f"{'_'.join(safe)}_{_safe_name(benchmark)}.png"))
        if "toxic_rate" in sub.columns and sub["toxic_rate"].notna().any():
            rows = sub[sub["toxic_rate"].notna()]
            files.append(_bar_plot(rows, str(benchmark), ["toxic_rate"], out, f"toxic_rate_{_safe_name(benchmark)}.png"))
    for model in table["model"].dropna().unique():
        path = _frontier_plot(table, str(model), out)
        if path is not None:
            files.append(path)
    return files


# ----------------------------------------------------------------------------- entry points


def _views(table: pd.DataFrame) -> pd.Series:
    """Per run, the benchmark as the report groups it: its name, then its prompt set when it has
    one (``rtp challenging``), then the protocol in parentheses when that is not ``greedy``
    (``rtp challenging (sampled)``), so each prompt set and protocol gets its own columns and plots."""
    protocol = table.get("protocol", pd.Series(np.nan, index=table.index))
    prompts = table.get("prompts", pd.Series(np.nan, index=table.index))
    return pd.Series([str(b) + ("" if _missing(s) else f" {s}") + ("" if _missing(p) or p == "greedy" else f" ({p})")
                      for b, s, p in zip(table["benchmark"], prompts, protocol)], index=table.index)


def _headline(sub: pd.DataFrame) -> List[str]:
    """The benchmark's headline metrics (``headline`` in its metrics.json), else its first."""
    for value in sub.get("headline", pd.Series(dtype=object)).dropna():
        names = json.loads(value) if isinstance(value, str) else list(value)
        return [m for m in names if m in sub.columns and sub[m].notna().any()]
    shown = [m for m in metric_columns(sub) if m in sub.columns and sub[m].notna().any() and "/" not in m]
    return shown[:1]


def paired_cell(run: pd.Series, metric: str, reference: str = "none", control: bool = True,
                fmt_p: Callable[[Any], str] = _fmt_p, control_tag: str = "vs control") -> str:
    """``run``'s ``metric`` as a table cell: the value, then ``(difference, p=...)`` against
    ``reference`` and, with ``control``, ``[<control_tag> difference, p=...]`` against the method's
    own control, where the report paired them; ``""`` for a missing value."""
    value = run.get(metric)
    if not _is_number(value) or _missing(value):
        return ""
    d = _decimals(float(value))
    cell = _fmt(value, d)
    diff, p = run.get(f"{metric}_diff_vs_{reference}"), run.get(f"{metric}_p_vs_{reference}")
    if not (_missing(diff) or _missing(p)):
        cell += f" ({float(diff):+.{d}f}, p={fmt_p(p)})"
    cdiff, cp = run.get(f"{metric}_diff_vs_{CONTROL}"), run.get(f"{metric}_p_vs_{CONTROL}")
    if control and not (_missing(cdiff) or _missing(cp)):
        cell += f" [{control_tag} {float(cdiff):+.{d}f}, p={fmt_p(cp)}]"
    return cell


def side_by_side(table: pd.DataFrame, reference: str = "none") -> pd.DataFrame:
    """One row per (model, label), one column per benchmark headline metric: the value, and
    for runs with a paired ``reference`` run the difference and its p-value."""
    rows: Dict[Tuple[str, str], Dict[str, str]] = {}
    order: List[Tuple[str, str]] = []
    for benchmark, sub in table.groupby(_views(table), sort=False):
        ns = sorted({_fmt_int(n) for n in sub["n"]})
        for metric in _headline(sub):
            column = f"{benchmark} {metric} (n={'/'.join(ns)})"
            for _, r in sub.iterrows():
                key = (r["model"], r["label"])
                if key not in rows:
                    rows[key] = {"model": r["model"], "label": r["label"]}
                    order.append(key)
                v = r[metric]
                if _missing(v):
                    continue
                rows[key][column] = paired_cell(r, metric, reference)
                for cost, col in (("edit s", "edit_seconds"), ("edit peak MB", "edit_peak_rss_mb")):
                    v = r.get(col)
                    if _is_number(v) and not _missing(v) and r["benchmark"] != "safeedit":  # per-instance sums
                        rows[key][cost] = max(rows[key].get(cost, 0.0), float(v))
    frame = pd.DataFrame([rows[k] for k in order])
    for cost, decimals in (("edit s", 1), ("edit peak MB", 0)):
        if cost in frame.columns:
            frame[cost] = frame[cost].map(lambda v, d=decimals: _fmt(v, d) if _is_number(v) else "")
            frame = frame[[c for c in frame.columns if c != cost] + [cost]]
    frame = frame.fillna("")
    if len(frame) and frame["model"].nunique() == 1:
        frame = frame.drop(columns="model")
    return frame


def write_report(root: PathLike, out: Optional[PathLike] = None,
                 against: Sequence[str] = DEFAULT_AGAINST, plots: bool = True) -> List[Path]:
    """Collect the runs under ``root``, write ``report.csv``, ``report.md`` and (unless ``plots`` is
    false) the plots into ``out`` (default ``root``); return the files written."""
    out = Path(out) if out is not None else Path(root)
    table = summary_table(collect(root), against)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "report.csv", out / "report.md"
    atomic_write(csv_path, table.to_csv(index=False))
    atomic_write(md_path, to_markdown(table, against, title=f"Benchmark report: {root}"))
    files = [csv_path, md_path] + (plot_report(table, out) if plots else [])
    logger.info("wrote %s", ", ".join(str(f) for f in files))
    return files


def _parse_against(text: str) -> List[str]:
    from surgery_editor.methods import canonical_name

    return [canonical_name(t.strip()) for t in text.split(",") if t.strip()]


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="a run directory or a folder of them (e.g. a Hydra multirun directory)")
    ap.add_argument("--out", default=None, help="output folder (default: ROOT)")
    ap.add_argument("--against", default=",".join(DEFAULT_AGAINST),
                    help="comma-separated reference methods for paired tests (default: %(default)s; '' for none)")
    ap.add_argument("--no-plots", action="store_true", help="write report.csv and report.md only")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        files = write_report(args.root, args.out, _parse_against(args.against), plots=not args.no_plots)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    md = next(f for f in files if f.name == "report.md")
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

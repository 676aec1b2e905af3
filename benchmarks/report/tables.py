"""The report's tables: one row per run with its metrics, intervals and paired tests (``report.csv``),
its Markdown (``report.md``), and the side-by-side view of each method's headline metrics."""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .pairing import CONTROL, DEFAULT_AGAINST, _missing, compare
from .loading import _DERIVED, METADATA, NON_METRICS, PROMPTS, TIMING, fact_columns, known_metrics


# ----------------------------------------------------------------------------- table


def _is_timing(col: str) -> bool:
    """``edit_seconds``, ``edit_seconds_per_instance``, ``edit_peak_rss_mb``, ...: costs (time,
    memory), listed after the metrics."""
    return re.search(r"(^|_)seconds(_|$)", col) is not None or col.endswith("_rss_mb")


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
    known = [m for m in known_metrics() if m in names]
    return known + [m for m in names if m not in known]


def summary_table(runs: pd.DataFrame, against: Sequence[str] = DEFAULT_AGAINST) -> pd.DataFrame:
    """The report table: :func:`collect`'s runs joined with :func:`compare`, one row per run, ordered by
    model, benchmark, method (``none`` first), label. Columns: :data:`METADATA`; the metrics; their
    ``_ci_low``/``_ci_high``; per reference its ``_diff_vs_``/``_p_vs_`` columns and ``n_vs_``;
    ``edit_seconds``, ``eval_seconds`` (and any other ``*_seconds*`` timing), the edit facts that are words
    (:func:`fact_columns`); then ``hp.*``,
    ``ref_*_run``, ``headline`` (when the runs name their headline metrics), ``run_dir``.
    Metric-derived columns without any value are left out."""
    against = list(against)
    full = pd.concat([runs, compare(runs, against)], axis=1)
    metrics = metric_columns(full)
    cols = list(METADATA[:4]) + [PROMPTS] + list(METADATA[4:]) + metrics
    cols += [f"{m}_{s}" for m in metrics for s in ("ci_low", "ci_high")]
    for ref in against:
        cols += [f"{m}_{s}_vs_{ref}" for m in metrics for s in ("diff", "p")] + [f"n_vs_{ref}"]
    cols += list(TIMING) + [c for c in full.columns if _is_timing(c) and c not in TIMING] + fact_columns(full)
    cols += sorted(c for c in full.columns if c.startswith("hp."))
    cols += [f"ref_{ref}_run" for ref in against] + ["headline", "run_dir"]
    optional = set(cols) - set(METADATA) - set(TIMING) - {"run_dir"}
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
        for fact in fact_columns(sub):
            main[fact] = sub[fact].map(_fmt)
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
    """The benchmark's headline metrics (``headline`` in its metrics.json, else as the benchmark
    class declares them), else its first metric."""
    from ..protocols import BENCHMARKS

    for value in sub.get("headline", pd.Series(dtype=object)).dropna():
        names = json.loads(value) if isinstance(value, str) else list(value)
        return [m for m in names if m in sub.columns and sub[m].notna().any()]
    for name in sub.get("benchmark", pd.Series(dtype=object)).dropna().unique()[:1]:
        declared = getattr(BENCHMARKS.get(name), "headline", None)
        if isinstance(declared, (list, tuple)):
            shown = [m for m in declared if m in sub.columns and sub[m].notna().any()]
            if shown:
                return shown
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

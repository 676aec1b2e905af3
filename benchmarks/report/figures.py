"""The report's figures: metrics against alpha, grouped bars with 95% intervals, and the frontier
(toxic share against perplexity or accuracy, marker size the edit's cost)."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from surgery_editor.infra.extras import require
from surgery_editor.infra.fileio import atomic_write
from .loading import PathLike, percent_metrics
from .pairing import _controls, _missing, pick_reference
from .tables import _fmt_int, _headline, _is_number, _views


# ----------------------------------------------------------------------------- plots


def _figure(width: float, height: float = 4.5):
    require("matplotlib", "harness", "the report's figures")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))  # Agg canvas on save, no pyplot state


def palette_png(data: bytes) -> bytes:
    """A PNG re-encoded with an adaptive 256-colour palette: a plot has few colours, so it looks the
    same at about a third of the bytes (the published figures count against a size budget).
    Deterministic: the same image gives the same bytes."""
    from PIL import Image  # a matplotlib dependency

    image = Image.open(io.BytesIO(data)).convert("RGB").quantize(colors=256)
    out = io.BytesIO()
    image.save(out, format="png", optimize=True)
    return out.getvalue()


def _save(fig, path: Path, rect: Optional[Tuple[float, float, float, float]] = None) -> Path:
    buf = io.BytesIO()
    fig.tight_layout(rect=rect)  # rect: the area the panels fill, e.g. to leave room for a legend
    fig.savefig(buf, format="png", dpi=120)
    atomic_write(path, palette_png(buf.getvalue()))
    return path


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)).strip("_") or "x"


def _yerr(sub: pd.DataFrame, metric: str) -> np.ndarray:
    y = sub[metric].astype(float).to_numpy()
    lo = sub.get(f"{metric}_ci_low", pd.Series(np.nan, index=sub.index)).astype(float).to_numpy()
    hi = sub.get(f"{metric}_ci_high", pd.Series(np.nan, index=sub.index)).astype(float).to_numpy()
    return np.nan_to_num(np.vstack([y - lo, hi - y]).clip(min=0), nan=0.0)


MANY_BARS = 30  # bars in one chart beyond which tick labels stand upright
LONG_LABEL = 40  # characters: a longer label (a run with overrides) is shown by its run dir's name


def _shown(label: str, run_dir) -> str:
    """``label`` for a figure: as it is, or where longer than :data:`LONG_LABEL` (overrides such as
    a data path), its run dir's name less the benchmark (``DPO-onpolicy_rtp`` -> ``DPO-onpolicy``,
    the TAG of ``scripts/compare.sh``), else the label cut to that length with an ellipsis."""
    label = str(label)
    if len(label) <= LONG_LABEL:
        return label
    name = "" if _missing(run_dir) else Path(str(run_dir)).name
    stem = name.rsplit("_", 1)[0] if "_" in name else ""
    if stem and not stem.isdigit() and len(stem) <= LONG_LABEL:
        return stem
    return label[:LONG_LABEL - 1] + "…"


def _tick_labels(sub: pd.DataFrame) -> List[str]:
    varying = [c for c in ("model", "protocol", "judge") if sub[c].nunique(dropna=False) > 1]
    labels = ["\n".join([_shown(r["label"], r.get("run_dir"))] + [str(r[c]) for c in varying])
              for _, r in sub.iterrows()]
    for extra in (lambda r: f"n={_fmt_int(r['n'])}", lambda r: "/".join(Path(r["run_dir"]).parts[-2:])):
        counts = pd.Series(labels).value_counts()
        if counts.max() == 1:
            break
        labels = [f"{lab}\n{extra(r)}" if counts[lab] > 1 else lab for lab, (_, r) in zip(labels, sub.iterrows())]
    return labels


def _dials(sub: pd.DataFrame) -> List[str]:
    """The numeric settings (``hp.<key>``) that take several values among ``sub``'s runs."""
    out = []
    for c in sub.columns:
        if c.startswith("hp.") and sub[c].notna().any():
            values = sub[c].dropna()
            if values.map(_is_number).all() and values.nunique() >= 2:
                out.append(c)
    return out


def _series_plot(sub: pd.DataFrame, benchmark: str, metric: str, dial: str, out: Path) -> Optional[Path]:
    """``metric`` against the setting ``dial`` (``hp.<key>``) for each series (runs equal but for
    it) with >= 2 values, the unedited level each series is paired with as a dashed line."""
    key = dial[3:]
    other_hp = [c for c in sub.columns if c.startswith("hp.") and c != dial]
    group_cols = ["model", "protocol", "judge", "method"] + other_hp
    data = sub[sub[dial].notna() & sub[metric].notna()]
    series = []
    for group, g in data.groupby(group_cols, dropna=False, sort=False):
        if g[dial].nunique() >= 2:
            series.append((dict(zip(group_cols, group)), g.sort_values(dial)))
    if not series:
        return None
    varying = [c for c in group_cols if c != "method" and len({str(d[c]) for d, _ in series}) > 1]
    fig = _figure(7)
    ax = fig.add_subplot()
    for desc, g in series:
        name = " ".join([str(desc["method"])] + [f"{c[3:] if c.startswith('hp.') else c}={desc[c]}" for c in varying])
        ax.errorbar(g[dial].astype(float), g[metric].astype(float), yerr=_yerr(g, metric), marker="o",
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
    ax.set_xlabel(key)
    ax.set_ylabel(f"{metric} (95% CI)")
    ax.set_title(f"{benchmark}: {metric} vs {key}", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, out / f"{_safe_name(metric)}_vs_{_safe_name(key)}_{_safe_name(benchmark)}.png")


def _bar_plot(sub: pd.DataFrame, benchmark: str, metrics: List[str], out: Path, name: str) -> Path:
    labels = _tick_labels(sub)
    x = np.arange(len(sub))
    width = 0.8 / len(metrics)
    many = len(sub) * len(metrics) > MANY_BARS  # upright labels, narrower bars: the figure stays readable and small
    fig = _figure(max(5.0, (0.4 if many else 0.9) * len(sub) * len(metrics) + 2), 6.0 if many else 4.5)
    ax = fig.add_subplot()
    for k, m in enumerate(metrics):
        ax.bar(x + (k - (len(metrics) - 1) / 2) * width, sub[m].astype(float), width, yerr=_yerr(sub, m),
               capsize=2 if many else 3, label=m)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=90 if many else 30, ha="center" if many else "right", fontsize=8)
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
        rows.append({"label": label, "shown": _shown(label, t.get("run_dir")), "method": t["method"],
                     "toxic_rate": float(t["toxic_rate"]),
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
                           facecolors="none" if st["hollow"] else st["color"], label=str(r["shown"]))
            handles.setdefault(str(r["shown"]), h)
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


def _declared(sub: pd.DataFrame) -> List[str]:
    """The metrics the benchmark of ``sub``'s runs declares (``Benchmark.metric_names``)."""
    from ..protocols import BENCHMARKS

    names = sub["benchmark"].dropna().unique()
    return list(getattr(BENCHMARKS.get(names[0]), "metric_names", ())) if len(names) else []


def plot_report(table: pd.DataFrame, out: PathLike) -> List[Path]:
    """PNGs into ``out`` where the data exists, per benchmark view, from what its benchmark declares
    (``metric_names``, ``percent``, ``headline``): ``<metric>_vs_<setting>_<view>.png``, its first
    metric against each numeric setting a series of runs varies (e.g. ``alpha``; the ``none`` run
    as a dashed line with its CI band); ``<metrics>_<view>.png``, grouped bars of its headline
    metrics reported in percent, else of its first metric; all with 95% CI error bars. Then the
    frontier of each model."""
    out = Path(out)
    files: List[Path] = []
    for benchmark, sub in table.groupby(_views(table), sort=False):
        declared = [m for m in _declared(sub) if m in sub.columns and sub[m].notna().any()]
        if not declared:
            continue
        for dial in _dials(sub):
            path = _series_plot(sub, str(benchmark), declared[0], dial, out)
            if path is not None:
                files.append(path)
        bars = [m for m in _headline(sub) if m in percent_metrics()] or declared[:1]
        rows = sub[sub[bars].notna().any(axis=1)]
        files.append(_bar_plot(rows, str(benchmark), bars, out, f"{'_'.join(bars)}_{_safe_name(benchmark)}.png"))
    for model in table["model"].dropna().unique():
        path = _frontier_plot(table, str(model), out)
        if path is not None:
            files.append(path)
    return files

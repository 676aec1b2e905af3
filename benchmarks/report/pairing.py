"""Pairing runs with their references (the unedited model, the method's own control) and the
paired tests, confidence intervals and differences that go with each metric."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import pandas as pd

from ..stats import mean_interval, paired_test, wilson_interval
from .loading import PROMPTS, RunItems, load_items, percent_metrics


logger = logging.getLogger(__name__)


DEFAULT_AGAINST = ("none", "control")
CONTROL = "control"  # the reference "each method's own control" (see _controls)
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
    matches exactly one of the two; otherwise percent for the metrics a benchmark declares in percent, else 1."""
    default = 100.0 if metric in percent_metrics() else 1.0
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


def _label_settings(label: Any, method: str) -> Optional[str]:
    """What a run's label adds to its method's name (``""`` for the method's default run), or
    None when the label does not start with the name."""
    label = "" if _missing(label) else str(label)
    return label[len(method):].strip() if label.startswith(method) else None


def pick_reference(runs: pd.DataFrame, idx: Any, method: str,
                   control_of: Optional[Sequence[str]] = None) -> Optional[Any]:
    """Index of the ``method`` run to pair run ``idx`` with: same model, benchmark, prompt set,
    protocol and judge; among several, the same ``n``, then the most agreeing hparams (a random-direction
    control of the same alpha), then the run whose label adds the same settings to its method's name
    as ``idx``'s does (a control of the same variant or override), else the method's default run
    (labelled by its name alone), then the first (with a warning). With ``control_of`` (the keys a
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
    if len(cand) > 1 and "label" in cand.columns:
        # the label is the method's name plus the settings it ran with beyond its defaults (a variant,
        # an override such as pairs.path=...), which the recorded hparams may not hold
        own = _label_settings(run.get("label"), run["method"])
        for settings in dict.fromkeys((own, "")):
            same = cand[cand.apply(lambda r, s=settings: _label_settings(r["label"], method) == s, axis=1)]
            if not same.empty:
                cand = same
                break
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


def _controls() -> Dict[str, Dict[str, Dict[str, Any]]]:
    """Method name -> its registered controls and the settings each fixes
    (``{"ModelSurgery": {"ModelSurgery_random": {"edit_direction": "random"}}, ...}``)."""
    from surgery_editor.methods import load_methods

    return {name: dict(algo.controls) for name, algo in load_methods().items()}

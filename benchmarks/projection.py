"""What the side-by-side comparison costs, projected from the rows ``python -m benchmarks.perf``
measured (``projection.csv``, ``sweep.csv``).

The comparison is ``scripts/compare.sh``: :data:`COMPARE_METHODS` on each of its parts
(:data:`COMPARE_PARTS`: benchmark, items, new tokens, judge), one harness run (one Hydra job) per
method and part. A job's cost is

- **load**: reading the weights (``load.csv``; every job loads its model);
- **edit**: what the method's edit costs in that job. Caches carry over between the jobs of a
  sequential comparison (one process after another on one machine), so the first job of a
  cache group pays the cold edit and later ones the cached edit: ModelSurgery and its control
  share the probe (``edit.csv``, cold / cached step); ProFS and steering share the pairs' block
  outputs (``methods.csv``); DPO trains in every job (its YAML's pairs, at the measured seconds
  per pair); DINM edits once outside SafeEdit and once per record in it (``dinm.csv``);
- **eval**: the benchmark's generation or scoring at the measured per-item rate (``generation.csv``
  for greedy RTP and ToxiGen, ``sampling.csv`` for the sampled protocol with the sort-free nucleus,
  ``safeedit_prefix.csv`` for SafeEdit: plain batches on a GPU, where the harness does not share
  prefixes, shared prefixes on a CPU; ``lm_eval.csv`` for the capability part and perplexity),
  scaled linearly to the comparison's items and new tokens where the measurement used fewer;
- **judge**: the benchmark's judge (``judges.csv``) on every generated text, plus its set-up.

Memory per job: the larger of the edit's peak and the evaluation's peak plus what the edit's
restore copy holds on the device (``held_mb``); on a GPU the rows' peaks are
``torch.cuda.max_memory_allocated`` (the model included), on a CPU the process's RSS.

A ``submitit_slurm`` sweep runs the jobs side by side, one GPU each: its wall time over ``N`` GPUs
is the longest GPU's share when jobs are handed out longest first, and every job is counted with
its cold edit (jobs that start together find no cache) - an upper bound where a shared cache
folder lets later jobs reuse earlier ones' activations.

Assumptions beyond those: the prompt method is costed at the rates of the others (its system
message and reminder lengthen every input by a few dozen tokens); SafeEdit's knowledge check (one
short teacher-forced pass per record) is left out; rates measured on a model with random weights
are upper bounds where generation stops early on a real model (an end-of-sequence token, ToxiGen's
newline: a random model runs every generation to its token limit). Each row's ``basis`` says which
rate it used; what is not measured is NaN and named there, never guessed.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

COMPARE_METHODS = ["ModelSurgery", "ModelSurgery_random", "ProFS", "ProFS_random", "steer", "steer_random", "prompt",
                   "DPO", "DPO_shuffled", "DINM", "none"]


@dataclass(frozen=True)
class Part:
    """One part of scripts/compare.sh: ``kind`` of evaluation, items, new tokens, judge."""

    kind: str  # greedy | toxigen | sampled | safeedit | lm_eval | ppl
    items: int
    new_tokens: int = 0
    judge: Optional[str] = None
    samples: int = 1
    docs_per_task: int = 0
    texts_per_item: int = 1


# scripts/compare.sh: its parts in the order it runs them, with their item counts
# (tests/test_perf.py checks the counts against the benchmarks' own loaders)
COMPARE_PARTS: Dict[str, Part] = {
    "rtp": Part("greedy", 1000, 20, "profanity"),
    "ppl": Part("ppl", 46),
    "safeedit": Part("safeedit", 144, 48, "safety", texts_per_item=5),
    "toxigen": Part("toxigen", 320, 48, "profanity"),
    "sampled": Part("sampled", 200, 20, "profanity", samples=25, texts_per_item=25),
    "general": Part("lm_eval", 500, docs_per_task=100),
    "challenging": Part("greedy", 764, 20, "profanity"),
    "challenging-sampled": Part("sampled", 200, 20, "profanity", samples=25, texts_per_item=25),
}
# methods whose first edit fills a cache that later jobs of the comparison read
CACHE_GROUPS = {"ModelSurgery": "probe", "ModelSurgery_random": "probe", "ProFS": "pair states",
                "steer": "pair states", "steer_random": "pair states"}
PER_INSTANCE = {"DINM"}


@dataclass
class Setting:
    """The comparison's sizes that come from the method YAMLs: ModelSurgery's probe pairs,
    ProFS / steering pairs, DPO's training pairs."""

    probe_pairs: int = 1000
    pairs: int = 500
    dpo_pairs: int = 2048
    parts: Dict[str, Part] = field(default_factory=lambda: dict(COMPARE_PARTS))
    methods: List[str] = field(default_factory=lambda: list(COMPARE_METHODS))


JOB_COLUMNS = ["model", "weights", "device", "dtype", "part", "method", "items", "load_s", "edit", "edit_s",
               "eval_s", "judge_s", "total_s", "peak_mb", "memory", "basis"]
SWEEP_COLUMNS = ["model", "weights", "device", "dtype", "gpus", "jobs", "wall_s", "wall_h", "gpu_hours",
                 "longest_job_s", "peak_mb", "gpu_memory_mb", "fits", "basis"]


def _first(frame: Optional[pd.DataFrame], **where) -> Optional[pd.Series]:
    if frame is None or frame.empty:
        return None
    sel = frame
    for key, value in where.items():
        if key not in sel.columns:
            return None
        sel = sel[sel[key] == value]
    return None if sel.empty else sel.iloc[0]


def _num(row: Optional[pd.Series], key: str) -> float:
    if row is None or key not in row.index:
        return float("nan")
    value = row[key]
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _nz(x: float) -> float:
    """NaN counts as 0 in sums that say in ``basis`` what was not measured."""
    return 0.0 if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


class _Rates:
    """Per-item costs read from one model's measured tables."""

    def __init__(self, frames: Dict[str, pd.DataFrame], model: str, setting: Setting):
        f = {k: (v[v["model"] == model] if "model" in v.columns else v) for k, v in frames.items()}
        self.setting = setting
        edit = f.get("edit")
        self.edit = None if edit is None or edit.empty else edit.sort_values("probe_pairs").iloc[-1]
        self.cuda = self._any_cuda(f)
        self.methods = f.get("methods")
        self.dinm = _first(f.get("dinm"))
        self.rtp = _first(f.get("generation"), benchmark="rtp")
        self.toxigen = _first(f.get("generation"), benchmark="toxigen")
        self.sampling = _first(f.get("sampling"))
        self.prefix = _first(f.get("safeedit_prefix"))
        self.lm_eval = f.get("lm_eval")
        self.judges = f.get("judges")
        self.load = _first(f.get("load"))

    @staticmethod
    def _any_cuda(f) -> bool:
        return any("device" in v.columns and v["device"].astype(str).str.startswith("cuda").any()
                   for v in f.values() if v is not None and not v.empty)

    def peak(self, row: Optional[pd.Series], cuda_key: str, rss_key: str) -> float:
        return _num(row, cuda_key if self.cuda else rss_key)

    # -- edits ------------------------------------------------------------------------------
    def method_row(self, method: str, phase: str) -> Optional[pd.Series]:
        return _first(self.methods, method=method, phase=phase)

    def edit_cost(self, method: str, part: Part, cold: bool) -> Tuple[str, float, float, float]:
        """``(kind, seconds, edit peak MB, MB held on the device during the evaluation)``."""
        s = self.setting
        if method in ("none", "prompt"):
            return "none", 0.0, float("nan"), 0.0
        if method in ("ModelSurgery", "ModelSurgery_random"):
            e = self.edit
            if e is None:
                return "not measured", float("nan"), float("nan"), 0.0
            if cold:
                scale = s.probe_pairs / float(e["probe_pairs"])
                return ("cold", _num(e, "edit_cold_s") * scale,
                        self.peak(e, "edit_cold_cuda_peak_mb", "edit_cold_peak_rss_mb"), 0.0)
            return "cached", _num(e, "edit_cached_s"), self.peak(e, "edit_cached_cuda_peak_mb",
                                                                 "edit_cached_peak_rss_mb"), 0.0
        if method in ("ProFS", "steer", "steer_random", "ProFS_random"):
            phase = {"ProFS_random": "no states", "steer_random": "cached"}.get(method, "cold" if cold else "cached")
            if method == "steer_random" and cold:
                phase, row = "cold", self.method_row("steer", "cold")
            else:
                row = self.method_row(method, phase)
            if row is None:
                return "not measured", float("nan"), float("nan"), 0.0
            scale = s.pairs / float(row["items"]) if phase == "cold" else 1.0
            return phase, _num(row, "seconds") * scale, self.peak(row, "cuda_peak_mb", "peak_rss_mb"), _nz(
                _num(row, "held_mb"))
        if method in ("DPO", "DPO_shuffled"):
            row = self.method_row("DPO", "train")
            if row is None:
                return "not measured", float("nan"), float("nan"), 0.0
            return ("train", _num(row, "seconds_per_item") * s.dpo_pairs, self.peak(row, "cuda_peak_mb", "peak_rss_mb"),
                    _nz(_num(row, "held_mb")))
        if method == "DINM":
            d = self.dinm
            n = part.items if part.kind == "safeedit" else 1
            return (f"{n} per-record" if n > 1 else "one record", _num(d, "dinm_instance_s") * n,
                    self.peak(d, "dinm_cuda_peak_mb", "dinm_peak_rss_mb"), 0.0)
        return "unknown method", float("nan"), float("nan"), 0.0

    # -- evaluation -------------------------------------------------------------------------
    def eval_cost(self, part: Part, per_instance: bool) -> Tuple[float, float, str]:
        """``(seconds, peak MB, basis)`` of one run's evaluation of ``part``."""
        if part.kind in ("greedy", "toxigen"):
            row = self.toxigen if part.kind == "toxigen" else self.rtp
            basis = f"{part.kind} rate"
            if row is None and part.kind == "toxigen" and self.rtp is not None:
                row, basis = self.rtp, "toxigen from the RTP greedy rate"
            if row is None:
                return float("nan"), float("nan"), "generation not measured"
            per = _num(row, "batched_s") / _num(row, "prompts") * part.new_tokens / _num(row, "max_new_tokens")
            return per * part.items, self.peak(row, "batched_cuda_peak_mb", "batched_peak_rss_mb"), basis
        if part.kind == "sampled":
            row = self.sampling
            if row is None:
                return float("nan"), float("nan"), "sampling not measured"
            per = (_num(row, "sort_free_s") / _num(row, "prompts") * part.samples / _num(row, "samples_per_prompt")
                   * part.new_tokens / _num(row, "max_new_tokens"))
            return per * part.items, self.peak(row, "sort_free_cuda_peak_mb", "sort_free_peak_rss_mb"), "sampled rate"
        if part.kind == "safeedit":
            row = self.prefix
            if row is None:
                return float("nan"), float("nan"), "SafeEdit generation not measured"
            tokens = part.new_tokens / _num(row, "max_new_tokens")
            if self.cuda:  # share_prefix auto: plain batches on a GPU
                batches = math.ceil(_num(row, "inputs") / _num(row, "batch_size"))
                per_batch = _num(row, "batched_s") / batches * tokens
                records_per_call = 1 if per_instance else max(1, int(_num(row, "batch_size")) // part.texts_per_item)
                seconds = per_batch * math.ceil(part.items / records_per_call)
                peak = self.peak(row, "batched_cuda_peak_mb", "batched_peak_rss_mb")
                basis = f"SafeEdit batches of {records_per_call} record(s)"
            else:
                seconds = _num(row, "shared_prefix_s") / _num(row, "records") * tokens * part.items
                peak = _num(row, "shared_prefix_peak_rss_mb")
                basis = "SafeEdit shared-prefix rate"
            return seconds, peak, basis
        if part.kind in ("lm_eval", "ppl"):
            frame = self.lm_eval
            if frame is None or frame.empty:
                return float("nan"), float("nan"), "lm-eval not measured"
            ppl = frame[frame["task"] == "ppl"]
            seconds = _nz(_num(ppl.iloc[0], "seconds_per_doc") * 46) if len(ppl) else float("nan")
            if part.kind == "lm_eval":
                mc = frame[frame["task"] != "ppl"]
                seconds += float((mc["seconds_per_doc"] * part.docs_per_task).sum())
                used = frame
            else:
                used = ppl
            col = "cuda_peak_mb" if self.cuda else "peak_rss_mb"
            return seconds, float(used[col].max()) if len(used) else float("nan"), "lm-eval rates"
        return float("nan"), float("nan"), f"unknown part kind {part.kind}"

    def judge_cost(self, part: Part) -> float:
        if part.judge is None:
            return 0.0
        row = _first(self.judges, judge=part.judge)
        if row is None:
            return float("nan")
        return _num(row, "setup_s") + part.items * part.texts_per_item / _num(row, "texts_per_s")


def project(frames: Dict[str, pd.DataFrame], setting: Optional[Setting] = None, gpus: Sequence[int] = (1, 2, 4, 8),
            gpu_memory_mb: float = 80 * 1024) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """``(jobs, sweep)``: one row per (part, method) of the comparison plus totals per part and
    overall, for the sequential run; one row per GPU count for the sweep."""
    setting = setting or Setting()
    models = sorted({m for frame in frames.values() if "model" in frame.columns for m in frame["model"].unique()})
    job_rows: List[Dict[str, Any]] = []
    sweep_rows: List[Dict[str, Any]] = []
    for model in models:
        rates = _Rates(frames, model, setting)
        facts = _facts(frames, model)
        memory = "cuda max allocated" if rates.cuda else "process RSS"
        seen_groups = set()
        cold_jobs: List[float] = []
        peaks: List[float] = []
        load_s = _num(rates.load, "load_s")
        for part_name, part in setting.parts.items():
            for method in setting.methods:
                group = CACHE_GROUPS.get(method)
                cold = group is None or group not in seen_groups
                if group:
                    seen_groups.add(group)
                kind, edit_s, edit_peak, held = rates.edit_cost(method, part, cold)
                eval_s, eval_peak, basis = rates.eval_cost(part, method in PER_INSTANCE)
                judge_s = rates.judge_cost(part)
                total = _nz(load_s) + _nz(edit_s) + _nz(eval_s) + _nz(judge_s)
                peak = np.nanmax([edit_peak, eval_peak + held]) if not (
                    math.isnan(edit_peak) and math.isnan(eval_peak)) else float("nan")
                missing = [name for name, v in (("load", load_s), ("edit", edit_s), ("eval", eval_s),
                                                ("judge", judge_s)) if math.isnan(v)]
                job_rows.append({**facts, "part": part_name, "method": method, "items": part.items, "load_s": load_s,
                                 "edit": kind, "edit_s": edit_s, "eval_s": eval_s, "judge_s": judge_s,
                                 "total_s": total, "peak_mb": peak, "memory": memory,
                                 "basis": basis + (f"; not measured: {', '.join(missing)}" if missing else "")})
                cold_s = rates.edit_cost(method, part, True)[1] if group else edit_s
                cold_jobs.append(_nz(load_s) + _nz(cold_s) + _nz(eval_s) + _nz(judge_s))
                peaks.append(peak)
        jobs = pd.DataFrame([r for r in job_rows if r["model"] == model])
        for part_name, part in setting.parts.items():
            job_rows.append(_total(facts, part_name, part.items, jobs[jobs["part"] == part_name], memory))
        job_rows.append(_total(facts, "all", float("nan"), jobs, memory))
        peak_all = float(np.nanmax(peaks)) if not all(math.isnan(p) for p in peaks) else float("nan")
        for n in gpus:
            wall = _makespan(cold_jobs, n)
            sweep_rows.append({**facts, "gpus": n, "jobs": len(cold_jobs), "wall_s": wall, "wall_h": wall / 3600,
                               "gpu_hours": sum(cold_jobs) / 3600, "longest_job_s": max(cold_jobs),
                               "peak_mb": peak_all, "gpu_memory_mb": gpu_memory_mb,
                               "fits": bool(peak_all <= gpu_memory_mb) if not math.isnan(peak_all) else float("nan"),
                               "basis": "one GPU per job, longest jobs first; every job's edit cold (no shared cache)"})
    return pd.DataFrame(job_rows, columns=JOB_COLUMNS), pd.DataFrame(sweep_rows, columns=SWEEP_COLUMNS)


def _facts(frames: Dict[str, pd.DataFrame], model: str) -> Dict[str, Any]:
    for frame in frames.values():
        if "model" in frame.columns and "weights" in frame.columns:
            sel = frame[frame["model"] == model]
            if len(sel):
                row = sel.iloc[0]
                return {"model": model, "weights": row["weights"], "device": row["device"], "dtype": row["dtype"]}
    return {"model": model, "weights": "", "device": "", "dtype": ""}


def _total(facts: Dict[str, Any], part: str, items: float, sel: pd.DataFrame, memory: str) -> Dict[str, Any]:
    """A part's (or the whole comparison's) row: every method's job summed."""
    sums = {k: float(sel[k].apply(_nz).sum()) for k in ("load_s", "edit_s", "eval_s", "judge_s", "total_s")}
    peak = float(sel["peak_mb"].max()) if sel["peak_mb"].notna().any() else float("nan")
    return {**facts, "part": part, "method": "all", "items": items, **sums, "edit": "",
            "peak_mb": peak, "memory": memory, "basis": f"sum of {len(sel)} jobs, run one after another"}


def _makespan(durations: Sequence[float], workers: int) -> float:
    """Longest-processing-time-first assignment of ``durations`` to ``workers``: the busiest one's total."""
    loads = [0.0] * max(1, int(workers))
    heapq.heapify(loads)
    for d in sorted(durations, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + d)
    return max(loads)

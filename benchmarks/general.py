"""General capability (``benchmark=general``), scored by EleutherAI's lm-evaluation-harness.

Does an edit keep the model's ordinary abilities? The edited model object is wrapped in
lm-eval's ``HFLM`` and evaluated with ``lm_eval.simple_evaluate`` on task configs that read
the offline files (``benchmarks/lm_eval_tasks/offline_*.yaml``):

- multiple choice (``acc``: the gold choice has the highest summed log-likelihood;
  ``acc_norm``: the highest log-likelihood per character): BoolQ, PIQA, MMLU (zero-shot),
  CommonsenseQA, OpenBookQA;
- GSM8K, 5-shot, greedy, exact match of the final number (``strict-match``: after ``####``;
  ``flexible-extract``: the last number written);
- perplexity of held-out ordinary text (``ppl``: rolling log-likelihood of 46 Wikipedia
  paragraphs that the BoolQ task leaves out; word- and byte-level, as lm-eval reports it).

TruthfulQA's multiple-choice form needs incorrect answers, which the offline TruthfulQA file
does not have; where the hub is reachable, lm-eval's own ``truthfulqa_mc1`` /
``truthfulqa_mc2`` can be listed in ``benchmark.tasks`` (any registered lm-eval task can).

Items are ``<task>:<doc id>`` and are evaluated in chunks of ``chunk_size`` docs, one
``simple_evaluate`` call each, so a run resumes between chunks. Row ``flags`` hold the
per-doc 0/1 outcomes (``acc/<task>``, ``acc_norm/<task>``, ``exact_match:<filter>/<task>``),
``values`` other per-doc numbers, ``pairs`` lm-eval's (log-likelihood, words/bytes) pairs for
perplexity. Metrics: each of those averaged (perplexities aggregated with lm-eval's own
functions), ``acc_mean`` / ``acc_norm_mean`` (the mean of the multiple-choice tasks'
accuracies), ``mc_acc`` / ``mc_acc_norm`` (the share of all offline multiple-choice items
answered right: the same outcomes pooled, which the report pairs across methods),
``perplexity`` (word perplexity of ``ppl``), ``n`` and ``n/<task>``. A metric whose tasks did not
run (``acc_mean`` without a multiple-choice task, ``perplexity`` without ``ppl``) is left out.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from surgery_editor.data import resolve_data_dir
from surgery_editor.infra.extras import require
from surgery_editor.infra.registry import did_you_mean

from .protocols import Benchmark, register_benchmark

logger = logging.getLogger(__name__)

TASK_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
PREFIX = "offline_"
PPL = "ppl"
DEFAULT_TASKS = ["boolq", "piqa", "mmlu", "commonsenseqa", "openbookqa", "gsm8k"]
UNAVAILABLE = {"truthfulqa": "the offline TruthfulQA file holds only correct answers, and its multiple-choice form "
                             "(MC1/MC2) needs the incorrect ones too; with hub access list lm-eval's "
                             "'truthfulqa_mc2' instead"}
# per-doc outcomes that are 0/1 in the offline tasks (paired tests in the report use them)
BINARY_METRICS = ("acc", "acc_norm", "exact_match")
# the same outcomes pooled over every multiple-choice item of every offline task, so the
# report can test a method's capability change on all items at once (paired McNemar)
POOLED = {"acc": "mc_acc", "acc_norm": "mc_acc_norm"}


def local_task_names() -> Dict[str, str]:
    """Short name -> lm-eval task name, for the task YAMLs shipped in ``lm_eval_tasks/``."""
    return {p.stem[len(PREFIX):]: p.stem for p in sorted(TASK_DIR.glob(f"{PREFIX}*.yaml"))}


@dataclass
class GeneralConfig:
    tasks: List[str] = field(default_factory=lambda: list(DEFAULT_TASKS))  # short names, or any lm-eval task name
    perplexity: bool = True  # also the held-out text perplexity (task 'ppl')
    limit_per_task: Optional[int] = None  # first N docs of each listed task; None = all
    limits: Optional[Dict[str, int]] = None  # per-task overrides of limit_per_task, e.g. {gsm8k: 30}
    num_fewshot: Optional[int] = None  # None = each task's own (gsm8k 5, the others 0)
    apply_chat_template: bool = False  # lm-eval's default: plain prompts
    batch_size: Optional[int] = None  # lm-eval HFLM batch size; None = generation.batch_size
    chunk_size: int = 100  # docs per simple_evaluate call (each call's rows are saved: the resume points)
    include_path: Optional[str] = None  # an extra folder of lm-eval task YAMLs

    def __post_init__(self):
        self.tasks = list(self.tasks)
        if not self.tasks and not self.perplexity:
            raise ValueError("benchmark.tasks is empty and benchmark.perplexity is false: nothing to evaluate")
        for t in self.tasks:
            if t in UNAVAILABLE:
                raise ValueError(f"benchmark.tasks: {t!r} is not available: {UNAVAILABLE[t]}")
            if t == PPL:
                raise ValueError("benchmark.tasks: 'ppl' is switched by benchmark.perplexity, not listed")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"benchmark.tasks: a task is listed twice: {self.tasks}")
        self.limits = dict(self.limits or {})
        for name, value in [("limit_per_task", self.limit_per_task)] + [(f"limits.{k}", v) for k, v in self.limits.items()]:
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"benchmark.{name} must be a positive integer or null, got {value!r}")
        unknown = sorted(set(self.limits) - set(self.tasks) - {PPL})
        if unknown:
            raise ValueError(f"benchmark.limits: {unknown} not in benchmark.tasks {self.tasks}")
        if self.chunk_size < 1:
            raise ValueError(f"benchmark.chunk_size must be >= 1, got {self.chunk_size}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ValueError(f"benchmark.num_fewshot must be an integer >= 0 or null (= each task's own), "
                             f"got {self.num_fewshot!r}")

    def limit(self, task: str) -> Optional[int]:
        """Docs of ``task`` to evaluate (None = all); ``ppl`` (46 texts) only by ``limits.ppl``."""
        return self.limits.get(task, None if task == PPL else self.limit_per_task)


def sample_rows(task: str, samples: Sequence[Dict[str, Any]], binary: bool) -> List[Dict[str, Any]]:
    """lm-eval's logged samples of one task (one per doc and filter) -> one row per doc.
    Metric names get the filter appended unless it is lm-eval's ``none``; with ``binary``
    the 0/1 metrics go to ``flags``, other numbers to ``values``, (ll, count) pairs to ``pairs``."""
    rows: Dict[int, Dict[str, Any]] = {}
    for s in samples:
        doc_id = int(s["doc_id"])
        row = rows.setdefault(doc_id, {"key": f"{task}:{doc_id}", "task": task, "doc_id": doc_id,
                                       "target": s.get("target"), "responses": {},
                                       "flags": {}, "values": {}, "pairs": {}})
        filt = s.get("filter", "none")
        resps = s.get("resps") or []
        if resps and isinstance(resps[0], list) and resps[0] and isinstance(resps[0][0], str):
            row["generation"] = resps[0][0]  # generate_until: the raw text, before the filters
        row["responses"][filt] = s.get("filtered_resps")  # made JSON by ResultStore
        for metric in s["metrics"]:
            value = s[metric]
            name = f"{metric}/{task}" if filt == "none" else f"{metric}:{filt}/{task}"
            if isinstance(value, (tuple, list)):
                row["pairs"][name] = [float(v) for v in value]
            elif binary and metric in BINARY_METRICS and float(value) in (0.0, 1.0):
                row["flags"][name] = bool(value)
                if metric in POOLED and filt == "none":
                    row["flags"][POOLED[metric]] = bool(value)
            else:
                row["values"][name] = float(value)
    return [rows[d] for d in sorted(rows)]


def multiple_choice_tasks(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """Tasks (in row order) whose rows carry an ``acc`` outcome."""
    seen: Dict[str, None] = {}
    for r in rows:
        name = f"acc/{r['task']}"
        if name in r.get("flags", {}) or name in r.get("values", {}):
            seen.setdefault(r["task"])
    return list(seen)


def aggregate(rows: Sequence[Dict[str, Any]], mc_tasks: Sequence[str]) -> Dict[str, float]:
    """Means of flags and values per name; perplexity pairs aggregated with lm-eval's
    ``weighted_perplexity`` / ``bits_per_byte``; ``acc_mean`` / ``acc_norm_mean`` over
    ``mc_tasks``; ``perplexity`` = ``word_perplexity/ppl``."""
    from lm_eval.api.metrics import bits_per_byte, weighted_perplexity

    out: Dict[str, float] = {"n": len(rows)}
    collected: Dict[str, List[Any]] = defaultdict(list)
    per_task: Dict[str, int] = defaultdict(int)
    for r in rows:
        per_task[r["task"]] += 1
        for kind in ("flags", "values"):
            for name, v in r.get(kind, {}).items():
                collected[name].append(float(v))
        for name, pair in r.get("pairs", {}).items():
            collected[name].append(tuple(pair))
    for name, vals in collected.items():
        if isinstance(vals[0], tuple):
            out[name] = float(bits_per_byte(vals) if name.startswith("bits_per_byte") else weighted_perplexity(vals))
        else:
            out[name] = float(np.mean(vals))
    for task, n in per_task.items():
        out[f"n/{task}"] = n
    for metric in ("acc", "acc_norm"):
        present = [out[f"{metric}/{t}"] for t in mc_tasks if f"{metric}/{t}" in out]
        if present:  # left out, not NaN, when no multiple-choice task ran
            out[f"{metric}_mean"] = float(np.mean(present))
    if f"word_perplexity/{PPL}" in out:
        out["perplexity"] = out[f"word_perplexity/{PPL}"]
    return out


@register_benchmark
class General(Benchmark):
    """General capability kept after an edit, by lm-evaluation-harness on offline task files:
    multiple-choice accuracy (BoolQ, PIQA, MMLU, CommonsenseQA, OpenBookQA), GSM8K exact match
    (5-shot, greedy) and held-out perplexity. No judge is used (``default_judge`` is the cheap
    profanity judge only because the harness builds one)."""

    name = "general"
    Config = GeneralConfig
    headline = ["mc_acc", "exact_match:strict-match/gsm8k", "perplexity"]

    def __init__(self, config: Dict[str, Any], data_dir: Optional[str] = None):
        super().__init__(config, data_dir)
        self._manager = None
        self._lm_names: Dict[str, str] = {}  # short name -> lm-eval task name

    # -- tasks ------------------------------------------------------------------------------
    def _task_manager(self):
        """lm-eval's TaskManager over the shipped offline tasks (and ``include_path``); lm-eval's
        own task registry is indexed only when a listed task is not found there."""
        require("lm_eval", "harness", "benchmark=general (lm-evaluation-harness)")
        from lm_eval.tasks import TaskManager

        local = local_task_names()
        paths = [str(TASK_DIR)] + ([self.cfg.include_path] if self.cfg.include_path else [])
        if self.cfg.include_path and not Path(self.cfg.include_path).is_dir():
            raise FileNotFoundError(f"benchmark.include_path: {self.cfg.include_path!r} is not a folder")
        meta = {"data_dir": str(resolve_data_dir(self.data_dir))}
        manager = TaskManager(include_path=paths, include_defaults=False, metadata=meta)
        known = set(manager.all_tasks)
        if any(t not in local and t not in known for t in self.cfg.tasks):
            manager = TaskManager(include_path=paths, include_defaults=True, metadata=meta)
        for t in self.cfg.tasks:
            lm_name = local.get(t, t)
            if lm_name not in manager.all_tasks:
                options = sorted(set(local) | set(manager.all_tasks))
                close = did_you_mean(t, options)
                hint = f" (did you mean {close!r}?)" if close else ""
                raise KeyError(f"benchmark.tasks: unknown task {t!r}{hint}; offline tasks: {sorted(set(local) - {PPL})}, "
                               f"or any lm-eval task name")
            self._lm_names[t] = lm_name
        if self.cfg.perplexity:
            self._lm_names[PPL] = local[PPL]
        return manager

    def load_items(self):
        self._manager = self._task_manager()
        loaded = self._manager.load(list(self._lm_names.values()))
        if loaded["groups"]:
            raise ValueError(f"benchmark.tasks: {sorted(loaded['groups'])} are lm-eval groups; list their tasks "
                             f"instead, so every doc gets its own row")
        items = []
        for short, lm_name in self._lm_names.items():
            n = len(loaded["tasks"][lm_name].eval_docs)
            limit = self.cfg.limit(short)
            n = n if limit is None else min(n, limit)
            items += [{"key": f"{short}:{i}", "task": short, "doc_id": i} for i in range(n)]
        return items

    # -- evaluation -------------------------------------------------------------------------
    def _lm(self, ctx):
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=ctx.model, tokenizer=ctx.tok, batch_size=self.cfg.batch_size or ctx.generation.batch_size,
                    max_length=ctx.generation.max_length)

    def evaluate(self, ctx, items):
        from lm_eval import simple_evaluate

        if self._manager is None:
            self.load_items()
        lm = self._lm(ctx)
        transform = getattr(ctx.method, "input_transform", None)  # a prompt method: lm-eval's system instruction
        system = None
        if transform is not None:
            system = (transform.system if self.cfg.apply_chat_template else transform.prefix.strip()) or None
        gen_kwargs = {"max_gen_toks": ctx.generation.max_new_tokens} if ctx.generation.max_new_tokens else None
        local = set(local_task_names().values())
        short = {v: k for k, v in self._lm_names.items()}
        for chunk in self._chunks(items, self.cfg.chunk_size, "general (lm-eval)"):
            samples: Dict[str, List[int]] = defaultdict(list)
            for it in chunk:
                samples[self._lm_names[it["task"]]].append(int(it["doc_id"]))
            res = simple_evaluate(model=lm, tasks=list(samples), task_manager=self._manager, samples=dict(samples),
                                  log_samples=True, bootstrap_iters=0, num_fewshot=self.cfg.num_fewshot,
                                  gen_kwargs=gen_kwargs, apply_chat_template=self.cfg.apply_chat_template,
                                  system_instruction=system,
                                  random_seed=ctx.seed, numpy_random_seed=ctx.seed, torch_random_seed=ctx.seed,
                                  fewshot_random_seed=ctx.seed)
            rows = []
            for lm_name in samples:
                rows += sample_rows(short[lm_name], res["samples"][lm_name], binary=lm_name in local)
            expected = {it["key"] for it in chunk}
            got = {r["key"] for r in rows}
            if got != expected:
                raise RuntimeError(f"general: lm-eval returned docs {sorted(got - expected)[:5]} not asked for, or "
                                   f"missed {sorted(expected - got)[:5]}")
            yield rows

    def metrics(self, rows):
        return aggregate(rows, multiple_choice_tasks(rows))

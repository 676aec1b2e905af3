"""The comparison's other steps, timed for ``python -m benchmarks.perf``.

Beside ModelSurgery's edit, DINM and generation (:mod:`benchmarks.perf`), what the side-by-side
comparison (``scripts/compare.sh``) spends its time on, each measured as the harness runs it:

1. **Method edits** (``methods.csv``): ProFS, steering and their controls through the harness's
   own method classes (:mod:`benchmarks.methods`: ``edit`` then ``restore``), from a fresh
   activation cache (``cold``: the forward passes over the preference pairs at every block) and
   again from that cache (``cached``: what every later run of the comparison pays); DPO's LoRA
   training on ``--dpo-pairs`` pairs (its YAML's batch, accumulation and LoRA settings).
   ``held_mb``: what the edit's restore copy holds on the model's device during the evaluation
   that follows (0 on a CPU model, and for copies kept in host memory).
2. **lm-eval** (``lm_eval.csv``): :class:`benchmarks.general.General` on each multiple-choice
   task's first ``--lm-eval-docs`` documents and the held-out perplexity texts, one task at a
   time (lm-eval's ``HFLM`` on the loaded model, ``--lm-eval-batch-size``).
3. **Judges** (``judges.csv``): each judge's set-up (building it and its first call: the offline
   classifiers fit their pipelines there) and its throughput on ``--judge-texts`` RealToxicityPrompts
   texts; judges run on the CPU whatever the model's device.
4. **Loading** (``load.csv``, ``--load``): the weights written with ``save_pretrained`` to a
   temporary folder and read back with ``from_pretrained`` onto the device, as every run of the
   harness loads its model.

Layer choices of the YAMLs (written for a model of ``layers_of_hparams`` blocks) are mapped to
the measured model's depth in proportion (:func:`fit_layers`), so a shape of any depth runs them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from surgery_editor.methods._common import bytes_on_device
from surgery_editor.models import COST_ONLY, is_shape_model

logger = logging.getLogger(__name__)

MODEL_COLUMNS = ["model", "weights", "device", "dtype"]
METHOD_COLUMNS = MODEL_COLUMNS + ["method", "phase", "items", "item_kind", "batch_size", "seconds",
                                  "seconds_per_item", "peak_rss_mb", "rss_delta_mb", "cuda_peak_mb", "held_mb",
                                  "detail"]
LM_EVAL_COLUMNS = MODEL_COLUMNS + ["task", "docs", "batch_size", "seconds", "seconds_per_doc", "peak_rss_mb",
                                   "cuda_peak_mb"]
JUDGE_COLUMNS = ["judge", "texts", "mean_chars", "setup_s", "seconds", "texts_per_s", "peak_rss_mb"]
LOAD_COLUMNS = MODEL_COLUMNS + ["parameters", "weights_mb", "save_s", "load_s", "load_cuda_peak_mb"]
MC_TASKS = ["boolq", "piqa", "mmlu", "commonsenseqa", "openbookqa"]
JUDGES = ["profanity", "toxicity", "safety"]


def model_facts(model: torch.nn.Module, label: str) -> Dict[str, Any]:
    """The columns every table starts with: model label, what its weights are, device, dtype."""
    p = next(model.parameters())
    name = getattr(model.config, "_name_or_path", "") or label
    return {"model": label, "weights": COST_ONLY if is_shape_model(name) or is_shape_model(label) else "pretrained",
            "device": str(p.device), "dtype": str(p.dtype).replace("torch.", "")}


def fit_layers(layers: Sequence[int], n_layers: int, layers_of_hparams: int) -> List[int]:
    """Block indices written for a model of ``layers_of_hparams`` blocks, at the same relative
    depth in one of ``n_layers`` (``-1``, the embedding output, stays ``-1``)."""
    out = []
    for i in layers:
        j = -1 if i < 0 else min(n_layers - 1, int(i * n_layers / layers_of_hparams))
        if j not in out:
            out.append(j)
    return out


def _measure(fn: Callable[[], Any], device: torch.device):
    from .perf import measure

    return measure(fn, device)


# ---------------------------------------------------------------------------------------
# 1. ProFS, steering (and controls), DPO as the harness edits
# ---------------------------------------------------------------------------------------
def _method(name: str, hparams_stem: str, device: torch.device, overrides: Dict[str, Any]):
    from .methods import get_method_class

    return get_method_class(name)(hparams_stem, overrides=overrides, device=str(device))


def _base_settings(name: str, hparams_stem: str, device: torch.device) -> Dict[str, Any]:
    return _method(name, hparams_stem, device, {}).base_settings


def _timed_edit(method, model, tok, device) -> tuple:
    handle, st = _measure(lambda: method.edit(model, tok, []), device)
    held = bytes_on_device(model, handle or {}) / 2**20
    method.restore(model, handle)
    return st, held


def measure_method_edits(model, tok, label: str, hparams_stem: str, layers_of_hparams: int, pairs: int,
                         dpo_pairs: int = 0) -> List[Dict[str, Any]]:
    """Rows of the methods table: ProFS cold and cached, ProFS_random, steer cached and cold,
    steer_random (when ``pairs``), DPO (when ``dpo_pairs``)."""
    from surgery_editor.architectures import num_layers

    device = next(model.parameters()).device
    facts = model_facts(model, label)
    depth = num_layers(model)
    rows: List[Dict[str, Any]] = []

    def row(method: str, phase: str, items: int, item_kind: str, batch: int, st, held: float, detail: str):
        rows.append({**facts, "method": method, "phase": phase, "items": items, "item_kind": item_kind,
                     "batch_size": batch, "seconds": st["seconds"], "seconds_per_item": st["seconds"] / max(items, 1),
                     "peak_rss_mb": st["peak_rss_mb"], "rss_delta_mb": st["rss_delta_mb"],
                     "cuda_peak_mb": st["cuda_peak_mb"], "held_mb": held, "detail": detail})

    if pairs > 0:
        profs = _base_settings("ProFS", hparams_stem, device)
        steer_hp = _base_settings("steer", hparams_stem, device)
        profs_layers = fit_layers(profs["layers"], depth, layers_of_hparams)
        steer_layer = fit_layers([steer_hp["layer"]], depth, layers_of_hparams)[0]
        with tempfile.TemporaryDirectory(prefix="perf-pairs-") as shared, \
                tempfile.TemporaryDirectory(prefix="perf-steer-") as own:
            fit = {"layers": profs_layers, "rank": min(profs["rank"], pairs)}  # a rank needs as many pairs
            plan = [("ProFS", "cold", shared, profs, fit), ("ProFS", "cached", shared, profs, fit),
                    ("ProFS_random", "no states", shared, profs, fit),
                    ("steer", "cached", shared, steer_hp, {"layer": steer_layer}),
                    ("steer", "cold", own, steer_hp, {"layer": steer_layer}),
                    ("steer_random", "cached", own, steer_hp, {"layer": steer_layer})]
            for name, phase, cache_dir, base, extra in plan:
                overrides = {"pairs": {**base["pairs"], "limit": pairs}, "cache_dir": cache_dir, **extra}
                method = _method(name, hparams_stem, device, overrides)
                logger.info("%s: %s edit (%s, %d pairs)", label, name, phase, pairs)
                st, held = _timed_edit(method, model, tok, device)
                hp = method.hparams
                detail = (f"layers {hp.layers}, rank {hp.rank}" if hasattr(hp, "rank") else f"layer {hp.layer}")
                row(name, phase, pairs, "pairs", hp.activation_batch_size, st, held, detail)
    if dpo_pairs > 0:
        method = _method("DPO", hparams_stem, device, {"num_pairs": dpo_pairs})
        hp = method.hparams
        logger.info("%s: DPO training on %d pairs", label, dpo_pairs)
        st, held = _timed_edit(method, model, tok, device)
        info = method.last_info
        row("DPO", "train", int(info.get("num_pairs") or dpo_pairs), "pairs",
            hp.per_device_batch_size * hp.gradient_accumulation_steps, st, held,
            f"{info.get('steps')} steps, LoRA r {hp.lora_r} on {info.get('lora_modules')} modules, "
            f"train loop {info.get('train_seconds')} s")
    return rows


# ---------------------------------------------------------------------------------------
# 2. lm-eval multiple choice and perplexity
# ---------------------------------------------------------------------------------------
def measure_lm_eval(model, tok, label: str, docs: int, batch_size: int = 16, tasks: Sequence[str] = MC_TASKS,
                    ppl_docs: Optional[int] = None, data_dir: Optional[str] = None) -> List[Dict[str, Any]]:
    """One row per multiple-choice task (its first ``docs`` documents) and one for ``ppl``
    (``ppl_docs`` texts; ``None`` = all 46)."""
    from .general import General
    from .methods import get_method_class
    from .protocols import Generation, RunContext

    device = next(model.parameters()).device
    facts = model_facts(model, label)
    ctx = RunContext(model=model, tok=tok, method=get_method_class("none")("x"), judge=None,
                     generation=Generation(batch_size=batch_size))
    plan = [(t, {"tasks": [t], "perplexity": False, "limit_per_task": docs}) for t in tasks]
    plan.append(("ppl", {"tasks": [], "perplexity": True, "limits": {"ppl": ppl_docs} if ppl_docs else None}))

    def run(cfg):
        bench = General({**cfg, "batch_size": batch_size, "chunk_size": 10_000}, data_dir=data_dir)
        items = bench.load_items()
        return len(items), [r for chunk in bench.evaluate(ctx, items) for r in chunk]

    run({"tasks": [tasks[0]] if tasks else [], "perplexity": not tasks, "limit_per_task": 1,
         "limits": None if tasks else {"ppl": 1}})  # warm-up: lm-eval's imports and task index
    rows = []
    for task, cfg in plan:
        logger.info("%s: lm-eval %s", label, task)
        (n, _), st = _measure(lambda: run(cfg), device)
        rows.append({**facts, "task": task, "docs": n, "batch_size": batch_size, "seconds": st["seconds"],
                     "seconds_per_doc": st["seconds"] / max(n, 1), "peak_rss_mb": st["peak_rss_mb"],
                     "cuda_peak_mb": st["cuda_peak_mb"]})
    return rows


# ---------------------------------------------------------------------------------------
# 3. Judges
# ---------------------------------------------------------------------------------------
def measure_judges(texts: Sequence[str], names: Sequence[str] = JUDGES) -> List[Dict[str, Any]]:
    """Set-up and throughput of each judge on ``texts``."""
    from surgery_editor.evaluation.judges import get_judge

    cpu = torch.device("cpu")
    rows = []
    for name in names:
        judge, setup = _measure(lambda: _ready_judge(get_judge(name), texts[0]), cpu)
        scores, st = _measure(lambda: judge(list(texts)), cpu)
        if len(scores) != len(texts):
            raise RuntimeError(f"judge {name!r} returned {len(scores)} scores for {len(texts)} texts")
        rows.append({"judge": name, "texts": len(texts), "mean_chars": sum(map(len, texts)) / max(len(texts), 1),
                     "setup_s": setup["seconds"], "seconds": st["seconds"],
                     "texts_per_s": len(texts) / st["seconds"] if st["seconds"] else float("nan"),
                     "peak_rss_mb": max(setup["peak_rss_mb"], st["peak_rss_mb"])})
        logger.info("judge %s: %.0f texts/s (set-up %.1f s)", name, rows[-1]["texts_per_s"], setup["seconds"])
    return rows


def _ready_judge(judge, text: str):
    judge([text])  # the offline classifiers fit (or load) their pipeline on first use
    return judge


# ---------------------------------------------------------------------------------------
# 4. Loading the weights
# ---------------------------------------------------------------------------------------
def measure_load(model, label: str, folder: Optional[str] = None) -> Dict[str, Any]:
    """``save_pretrained`` into a temporary folder (under ``folder`` when given: a local disk
    with room for the weights), then ``from_pretrained`` onto the model's device in its dtype."""
    from transformers import AutoModelForCausalLM

    p = next(model.parameters())
    device = p.device
    tmp = tempfile.mkdtemp(prefix="perf-load-", dir=folder)
    try:
        _, save = _measure(lambda: model.save_pretrained(tmp), torch.device("cpu"))
        size = sum(f.stat().st_size for f in Path(tmp).glob("*.safetensors"))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        loaded, load = _measure(
            lambda: AutoModelForCausalLM.from_pretrained(tmp, dtype=p.dtype, device_map=str(device)), device)
        del loaded
        if device.type == "cuda":
            torch.cuda.empty_cache()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**model_facts(model, label), "parameters": sum(q.numel() for q in model.parameters()),
            "weights_mb": size / 2**20, "save_s": save["seconds"], "load_s": load["seconds"],
            "load_cuda_peak_mb": load["cuda_peak_mb"]}


# ---------------------------------------------------------------------------------------
# All of them, at the sizes asked for
# ---------------------------------------------------------------------------------------
@dataclass
class HarnessSteps:
    """Which of these steps ``python -m benchmarks.perf`` runs, and at which sizes (0 / empty:
    skipped). ``hparams_stem``: the method YAMLs (``hparams/<ALG>/<stem>.yaml``), written for a
    model of ``layers_of_hparams`` blocks."""

    hparams_stem: str
    layers_of_hparams: int
    pairs: int = 0
    dpo_pairs: int = 0
    lm_eval_docs: int = 0
    lm_eval_batch_size: int = 16
    ppl_docs: Optional[int] = None
    judge_texts: Sequence[str] = ()
    load: bool = False
    load_dir: Optional[str] = None
    data_dir: Optional[str] = None

    def run(self, model, tok, label: str, attempt: Callable[[str, str, Callable[[], Any]], None]) -> None:
        """Each step through ``attempt(table, step name, fn)``, which stores ``fn()``'s rows."""
        if self.pairs:
            attempt("methods", "ProFS and steering edits", lambda: measure_method_edits(
                model, tok, label, self.hparams_stem, self.layers_of_hparams, self.pairs))
        if self.dpo_pairs:
            attempt("methods", "DPO training", lambda: measure_method_edits(
                model, tok, label, self.hparams_stem, self.layers_of_hparams, 0, self.dpo_pairs))
        if self.lm_eval_docs:
            attempt("lm_eval", "lm-eval", lambda: measure_lm_eval(
                model, tok, label, self.lm_eval_docs, self.lm_eval_batch_size, ppl_docs=self.ppl_docs,
                data_dir=self.data_dir))
        if self.judge_texts:
            attempt("judges", "judges", lambda: measure_judges(list(self.judge_texts)))
        if self.load:
            attempt("load", "loading the weights", lambda: measure_load(model, label, self.load_dir))

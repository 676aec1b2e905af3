"""``python -m benchmarks.perf``: compute cost of Model Surgery next to its floor and DINM, and
of every other step of the comparison.

    OMP_NUM_THREADS=1 python -m benchmarks.perf --model smollm2-135m --probe-sizes 200 1000
    python -m benchmarks.perf --model shape:llama2-7b --device cuda --dtype bfloat16 ...  (scripts/gpu_perf7b.sh)

``--model shape:<name>`` measures an architecture shape with random weights
(:data:`surgery_editor.models.MODEL_SHAPES`; its method settings from
``hparams/<ALG>/llama2-7b-chat.yaml``): what a model of that size costs, never how well it does;
every row says ``random weights (cost only)`` in its ``weights`` column. All in one process, on
the same model and data, each step when its size is given (``0`` skips it):

1. **Edit** (``edit.csv``): one ModelSurgery edit through the method registry
   (``get_algorithm(name).apply``, then restored) from cold (fresh temporary disk cache for
   activations and probe, the method's in-memory memo forgotten) = activations + probe training +
   row selection + edit rows; the forward passes alone over the same probe texts (the
   floor); and a second edit that reuses the cached activations and probe (a sweep step).
   The floor, the sweep step, the data-size setting and the memo are the method's
   :class:`~surgery_editor.methods.Timing` (its ``Algorithm.timing``); this module names none.
   Ratios ``edit_over_floor`` = cold edit / floor, ``first_over_cached`` = cold / cached.
   One row per model and probe-set size (``probe_data.limit`` pairs).
2. **DINM** (``dinm.csv``): DINM edits of SafeEdit instances as the harness makes them
   (``Algorithm.harness_apply``: the suffix system prompt appended, the toxic layer located per
   instance; weights restored after each), their mean;
   per SafeEdit run of ``N`` instances, DINM edits ``N`` times and ModelSurgery once
   (its cold edit at the largest probe size): ``dinm_run_over_surgery``.
3. **Generation** (``generation.csv``): greedy :func:`surgery_editor.evaluation.generate` of
   ``--rtp-prompts`` RealToxicityPrompts prompts with ``--gen-batch-size`` (16) vs one prompt at a
   time on the first ``--single-prompts`` of them; new tokens/s, the speed-up per prompt and
   whether the outputs are identical.
4. **SafeEdit prefix sharing** (``safeedit_prefix.csv``): the SafeEdit evaluation inputs of
   ``--safeedit-prefix-records`` records (every DS/DG input, chat template, records ordered by
   attack prompt as the benchmark orders them) through today's batched :func:`generate` and
   through :func:`~surgery_editor.evaluation.generate_shared_prefix` (shared prompt prefixes
   computed once), same batch size and new tokens; seconds, ratio, the share of input
   tokens that are a prefix shared within a group, and how many outputs are token-identical.
5. **Sampled generation** (``sampling.csv``): the RealToxicityPrompts sampled protocol
   (:func:`~surgery_editor.evaluation.sample`: 25 nucleus samples per prompt, top-p 0.9) on
   ``--sampled-prompts`` prompts, with transformers' ``TopPLogitsWarper`` (a sort of the whole
   vocabulary per step) and with :class:`~surgery_editor.evaluation.sampling.NucleusWarper` (no full
   sort); seconds, ratio and how many of the sampled texts are identical.
6. **Greedy ToxiGen** (``generation.csv``, benchmark ``toxigen``, ``--toxigen-prompts``): 48 new
   tokens, stopped at a newline, batched only.
7. **The harness's other steps** (:mod:`benchmarks.perf_harness`): ProFS / steering edits cold and
   cached and DPO training (``methods.csv``), lm-eval's multiple-choice tasks and perplexity
   (``lm_eval.csv``), the judges' throughput (``judges.csv``), loading the weights (``load.csv``).
8. **Projection** (``--project``, :mod:`benchmarks.projection`): the wall time and peak memory of
   ``scripts/compare.sh`` from those rows (``projection.csv``) and of the same jobs as a
   ``submitit_slurm`` sweep over ``--gpus`` GPUs (``sweep.csv``).

Batch sizes are options (``--gen-batch-size``, ``--lm-eval-batch-size``; the probe's and the
pairs' come from the YAMLs) and are recorded in the tables. A step that fails is reported in
``perf.md`` ("Not measured") and the exit status, and the others still run.

Peak memory on CPU: a thread samples the process RSS (psutil) every 5 ms during each
measured step; ``*_peak_rss_mb`` is that step's peak RSS and ``*_rss_delta_mb`` the peak
minus the RSS just before the step (what the step added on top of the loaded model). Freed
memory the allocator keeps can hide part of a later step's growth, so deltas are lower
bounds. On GPU, ``*_cuda_peak_mb`` is ``torch.cuda.max_memory_allocated`` with the peak
reset before each step. Wall times are ``time.perf_counter`` seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pandas as pd
import torch

from .perf_harness import (JUDGE_COLUMNS, LM_EVAL_COLUMNS, LOAD_COLUMNS, METHOD_COLUMNS, MODEL_COLUMNS,
                                     HarnessSteps, model_facts)
from surgery_editor.methods import get_algorithm
from surgery_editor.models import COST_ONLY
from .store import atomic_write_text
from surgery_editor.infra.resources import PeakRSS  # noqa: F401  (also the name tests patch)

logger = logging.getLogger(__name__)

DEFAULT_OUT = "runs/perf"  # ignored by git
EDIT_METHOD = "ModelSurgery"  # the edit timed against its floor (edit.csv)
PER_INSTANCE_METHOD = "DINM"  # the per-instance edit timed against it (dinm.csv)
EDIT_COLUMNS = MODEL_COLUMNS + ["probe_pairs", "probe_texts", "batch_size", "rows_edited", "weights_copy_mb",
                "edit_cold_s", "floor_s", "edit_cached_s", "edit_over_floor", "first_over_cached",
                "edit_cold_peak_rss_mb", "edit_cold_rss_delta_mb", "floor_peak_rss_mb", "floor_rss_delta_mb",
                "edit_cached_peak_rss_mb", "edit_cached_rss_delta_mb",
                "edit_cold_cuda_peak_mb", "floor_cuda_peak_mb", "edit_cached_cuda_peak_mb"]
DINM_COLUMNS = MODEL_COLUMNS + ["dinm_instances_timed", "dinm_instance_s", "dinm_instance_s_min",
                "dinm_instance_s_max", "dinm_peak_rss_mb", "dinm_rss_delta_mb", "dinm_cuda_peak_mb",
                "safeedit_n", "probe_pairs", "surgery_edit_s", "dinm_run_total_s", "surgery_run_total_s",
                "dinm_run_over_surgery", "dinm_instance_over_surgery"]
GEN_COLUMNS = MODEL_COLUMNS + ["benchmark", "prompts", "max_new_tokens", "new_tokens", "batched_batch_size",
               "single_prompts", "batched_s", "single_s", "batched_tok_per_s", "single_tok_per_s", "batched_speedup",
               "batched_peak_rss_mb", "single_peak_rss_mb", "batched_cuda_peak_mb", "single_cuda_peak_mb",
               "identical_outputs"]
SAMPLING_COLUMNS = MODEL_COLUMNS + ["vocab", "prompts", "samples_per_prompt", "max_new_tokens", "sort_s",
                    "sort_free_s", "speedup", "identical_texts", "texts", "sort_peak_rss_mb",
                    "sort_free_peak_rss_mb", "sort_cuda_peak_mb", "sort_free_cuda_peak_mb"]
PREFIX_COLUMNS = MODEL_COLUMNS + ["records", "inputs", "input_tokens", "shared_token_share", "max_new_tokens",
                  "batch_size", "batched_s", "shared_prefix_s", "speedup", "identical_outputs",
                  "batched_peak_rss_mb", "shared_prefix_peak_rss_mb", "batched_cuda_peak_mb",
                  "shared_prefix_cuda_peak_mb"]


# ---------------------------------------------------------------------------------------
# Measuring one step
# ---------------------------------------------------------------------------------------
def measure(fn: Callable[[], Any], device: Optional[torch.device] = None) -> Tuple[Any, Dict[str, float]]:
    """Run ``fn()``; return its result and ``{seconds, peak_rss_mb, rss_delta_mb, cuda_peak_mb}``."""
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with PeakRSS() as mem:
        start = time.perf_counter()
        result = fn()
        if cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    stats = {"seconds": seconds, "peak_rss_mb": mem.peak_mb, "rss_delta_mb": mem.peak_mb - mem.start_mb,
             "cuda_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan")}
    return result, stats


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


# ---------------------------------------------------------------------------------------
# 1. ModelSurgery edit vs the floor vs a cached sweep step
# ---------------------------------------------------------------------------------------
def _with_setting(hparams, dotted: str, value: Any):
    """``hparams`` with the dotted setting ``dotted`` (``probe_data.limit``) set to ``value``."""
    head, _, tail = dotted.partition(".")
    return dataclasses.replace(hparams, **{head: {**(getattr(hparams, head) or {}), tail: value} if tail else value})


def _weights_mb(weights: Dict[str, Any]) -> float:
    return sum(q.numel() * q.element_size() for q in weights.values()) / 2**20


def measure_edit(model, tok, hparams, model_label: str, probe_pairs: Optional[int] = None) -> Dict[str, Any]:
    """One row of the edit table: the edit of ``hparams``' method as the registry applies it
    (then restored), with its data capped at ``probe_pairs`` pairs, against the forward passes
    alone and a cached sweep step, as the method's :class:`~surgery_editor.methods.Timing` says."""
    algo = get_algorithm(type(hparams).ALG_NAME)
    timing = algo.timing
    if timing is None:
        raise ValueError(f"method {algo.name!r} declares no timing of its edit against its floor")
    device = _device(model)
    if probe_pairs is not None:
        hparams = _with_setting(hparams, timing.data_limit, int(probe_pairs))
    # warm-up (first-call overheads: thread pools, kernels) so neither side pays them
    timing.floor(model, tok, hparams, 8)

    def edit(hp) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        info: Dict[str, Any] = {}
        _, weights = algo.apply(model, tok, [], hp, return_orig_weights=True, info=info)
        algo.restore(model, weights)
        return weights, info

    with tempfile.TemporaryDirectory(prefix="perf-cache-") as cache_dir:
        hp = dataclasses.replace(hparams, cache_dir=cache_dir)
        timing.forget()
        logger.info("%s: cold edit", model_label)
        (weights, info), cold = measure(lambda: edit(hp), device)
        logger.info("%s: floor (forward passes only)", model_label)
        n_texts, floor = measure(lambda: timing.floor(model, tok, hp, None), device)
        sweep = timing.sweep_step(hp)
        logger.info("%s: cached edit (sweep step %s)", model_label, sweep)
        _, cached = measure(lambda: edit(dataclasses.replace(hp, **sweep)), device)
        timing.forget()
    return {
        **model_facts(model, model_label), "probe_pairs": n_texts // 2, "probe_texts": n_texts,
        "batch_size": getattr(hparams, "activation_batch_size", None), "rows_edited": info.get("rows_edited"),
        "weights_copy_mb": _weights_mb(weights),
        "edit_cold_s": cold["seconds"], "floor_s": floor["seconds"], "edit_cached_s": cached["seconds"],
        "edit_over_floor": _ratio(cold["seconds"], floor["seconds"]),
        "first_over_cached": _ratio(cold["seconds"], cached["seconds"]),
        "edit_cold_peak_rss_mb": cold["peak_rss_mb"], "edit_cold_rss_delta_mb": cold["rss_delta_mb"],
        "floor_peak_rss_mb": floor["peak_rss_mb"], "floor_rss_delta_mb": floor["rss_delta_mb"],
        "edit_cached_peak_rss_mb": cached["peak_rss_mb"], "edit_cached_rss_delta_mb": cached["rss_delta_mb"],
        "edit_cold_cuda_peak_mb": cold["cuda_peak_mb"], "floor_cuda_peak_mb": floor["cuda_peak_mb"],
        "edit_cached_cuda_peak_mb": cached["cuda_peak_mb"],
    }


# ---------------------------------------------------------------------------------------
# 2. DINM per SafeEdit instance
# ---------------------------------------------------------------------------------------
def measure_dinm(model, tok, dinm_hparams, requests: Sequence[Dict[str, Any]], model_label: str,
                 safeedit_n: int, surgery_edit_s: float, probe_pairs: Optional[int] = None) -> Dict[str, Any]:
    """Time an edit of each request as the harness makes it (DINM: the suffix system prompt
    appended, the toxic layer located per request), then restore; one row of the DINM table."""
    algo = get_algorithm(type(dinm_hparams).ALG_NAME)
    apply, _facts = algo.harness_apply(algo.options)
    device = _device(model)
    stats = []
    for i, req in enumerate(requests):
        info: Dict[str, Any] = {}
        (_, weights), st = measure(lambda: apply(model, tok, [req], dinm_hparams, return_orig_weights=True,
                                                 info=info), device)
        algo.restore(model, weights)
        logger.info("%s: %s instance %d: %.1fs (layer %s)", model_label, algo.name, i, st["seconds"],
                    info.get("layers"))
        stats.append(st)
    frame = pd.DataFrame(stats)
    mean_s = float(frame["seconds"].mean())
    return {
        **model_facts(model, model_label), "dinm_instances_timed": len(stats),
        "dinm_instance_s": mean_s, "dinm_instance_s_min": float(frame["seconds"].min()),
        "dinm_instance_s_max": float(frame["seconds"].max()),
        "dinm_peak_rss_mb": float(frame["peak_rss_mb"].max()), "dinm_rss_delta_mb": float(frame["rss_delta_mb"].max()),
        "dinm_cuda_peak_mb": float(frame["cuda_peak_mb"].max()),
        "safeedit_n": safeedit_n, "probe_pairs": probe_pairs, "surgery_edit_s": surgery_edit_s,
        "dinm_run_total_s": safeedit_n * mean_s, "surgery_run_total_s": surgery_edit_s,
        "dinm_run_over_surgery": _ratio(safeedit_n * mean_s, surgery_edit_s),
        "dinm_instance_over_surgery": _ratio(mean_s, surgery_edit_s),
    }


# ---------------------------------------------------------------------------------------
# 3. Generation throughput
# ---------------------------------------------------------------------------------------
def count_new_tokens(tok, outputs: Sequence[str]) -> int:
    """New tokens, counted by re-tokenising the decoded continuations (no special tokens)."""
    return sum(len(tok(text, add_special_tokens=False)["input_ids"]) for text in outputs)


def measure_generation(model, tok, prompts: Sequence[str], model_label: str, max_new_tokens: int = 20,
                       batch_size: int = 16, single_prompts: Optional[int] = None, benchmark: str = "rtp",
                       stop_strings: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Batched greedy generation of ``prompts`` against one prompt at a time on the first
    ``single_prompts`` of them (``None``: all; 0: the batched run alone). Throughputs are per
    prompt set timed, so ``batched_speedup`` compares seconds per prompt."""
    from surgery_editor.evaluation.generation import generate

    device = _device(model)
    prompts = list(prompts)
    n_single = len(prompts) if single_prompts is None else min(int(single_prompts), len(prompts))
    kw = dict(max_new_tokens=max_new_tokens, stop_strings=stop_strings)
    generate(model, tok, prompts[:2], max_new_tokens=2, batch_size=2)  # warm-up
    batched, b = measure(lambda: generate(model, tok, prompts, batch_size=batch_size, **kw), device)
    nan = {"seconds": float("nan"), "peak_rss_mb": float("nan"), "cuda_peak_mb": float("nan")}
    single, s = (measure(lambda: generate(model, tok, prompts[:n_single], batch_size=1, **kw), device)
                 if n_single else ([], nan))
    identical = list(batched[:n_single]) == list(single)
    if not identical:
        diff = sum(x != y for x, y in zip(batched, single))
        logger.warning("%s: batched and one-at-a-time greedy outputs differ on %d of %d prompts",
                       model_label, diff, n_single)
    n_tokens = count_new_tokens(tok, batched)
    single_tokens = count_new_tokens(tok, single)
    return {
        **model_facts(model, model_label), "benchmark": benchmark, "prompts": len(prompts),
        "max_new_tokens": max_new_tokens, "new_tokens": n_tokens, "batched_batch_size": batch_size,
        "single_prompts": n_single, "batched_s": b["seconds"], "single_s": s["seconds"],
        "batched_tok_per_s": _ratio(n_tokens, b["seconds"]),
        "single_tok_per_s": _ratio(single_tokens, s["seconds"]) if n_single else float("nan"),
        "batched_speedup": (_ratio(s["seconds"] / n_single, b["seconds"] / len(prompts)) if n_single
                            else float("nan")),
        "batched_peak_rss_mb": b["peak_rss_mb"], "single_peak_rss_mb": s["peak_rss_mb"],
        "batched_cuda_peak_mb": b["cuda_peak_mb"], "single_cuda_peak_mb": s["cuda_peak_mb"],
        "identical_outputs": bool(identical) if n_single else float("nan"),
    }


def safeedit_generation_inputs(requests: Sequence[Dict[str, Any]]) -> List[str]:
    """Every SafeEdit evaluation input of ``requests`` (DS and each DG_* present), records
    ordered by their attack prompt, as the benchmark evaluates them with prefix sharing."""
    from .protocols import SAFEEDIT_INPUTS, safeedit_inputs

    inputs = []
    for req in sorted(requests, key=lambda r: r["prompt"]):
        texts = dict(zip(SAFEEDIT_INPUTS, [req["prompt"], *req["general_prompt"]]))
        inputs += [texts[k] for k in safeedit_inputs(req)]
    return inputs


def measure_safeedit_prefix(model, tok, requests: Sequence[Dict[str, Any]], model_label: str,
                            max_new_tokens: int = 12, batch_size: int = 16, max_length: int = 1024,
                            min_shared: int = 32) -> Dict[str, Any]:
    from surgery_editor.evaluation.generation import generate, generate_shared_prefix, prefix_groups, tokenize_prompts

    device = _device(model)
    inputs = safeedit_generation_inputs(requests)
    kw = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, chat="auto", max_length=max_length)
    generate(model, tok, inputs[:2], **{**kw, "max_new_tokens": 2})  # warm-up
    base, b = measure(lambda: generate(model, tok, inputs, **kw), device)
    shared, s = measure(lambda: generate_shared_prefix(model, tok, inputs, min_shared=min_shared, **kw), device)
    same = sum(x == y for x, y in zip(base, shared))
    if same < len(inputs):
        logger.warning("%s: prefix sharing changed %d of %d SafeEdit outputs", model_label, len(inputs) - same,
                       len(inputs))
    _, _, seqs = tokenize_prompts(tok, inputs, "auto", max_length)
    groups = prefix_groups(seqs, batch_size, min_shared)
    total = sum(len(x) for x in seqs)
    saved_tokens = sum(cached * (len(members) - 1) for members, cached in groups if cached)
    return {**model_facts(model, model_label), "records": len(requests), "inputs": len(inputs),
            "input_tokens": total, "shared_token_share": _ratio(saved_tokens, total),
            "max_new_tokens": max_new_tokens, "batch_size": batch_size,
            "batched_s": b["seconds"], "shared_prefix_s": s["seconds"], "speedup": _ratio(b["seconds"], s["seconds"]),
            "identical_outputs": same, "batched_peak_rss_mb": b["peak_rss_mb"],
            "shared_prefix_peak_rss_mb": s["peak_rss_mb"], "batched_cuda_peak_mb": b["cuda_peak_mb"],
            "shared_prefix_cuda_peak_mb": s["cuda_peak_mb"]}


def measure_sampling(model, tok, prompts: Sequence[str], model_label: str, num_samples: int = 25,
                     max_new_tokens: int = 20) -> Dict[str, Any]:
    """The sampled RTP protocol with and without the full-vocabulary sort (same seeds)."""
    from surgery_editor.evaluation.generation import sample

    device = _device(model)
    kw = dict(num_samples=num_samples, max_new_tokens=max_new_tokens)
    sample(model, tok, prompts[0], num_samples=2, max_new_tokens=2)  # warm-up
    slow, a = measure(lambda: [sample(model, tok, p, sort_free=False, **kw) for p in prompts], device)
    fast, b = measure(lambda: [sample(model, tok, p, sort_free=True, **kw) for p in prompts], device)
    pairs = [(x, y) for xs, ys in zip(slow, fast) for x, y in zip(xs, ys)]
    same = sum(x == y for x, y in pairs)
    if same < len(pairs):
        logger.warning("%s: the sort-free nucleus changed %d of %d sampled texts", model_label, len(pairs) - same,
                       len(pairs))
    return {**model_facts(model, model_label), "vocab": int(model.get_output_embeddings().weight.shape[0]),
            "prompts": len(prompts), "samples_per_prompt": num_samples, "max_new_tokens": max_new_tokens,
            "sort_s": a["seconds"], "sort_free_s": b["seconds"], "speedup": _ratio(a["seconds"], b["seconds"]),
            "identical_texts": same, "texts": len(pairs), "sort_peak_rss_mb": a["peak_rss_mb"],
            "sort_free_peak_rss_mb": b["peak_rss_mb"], "sort_cuda_peak_mb": a["cuda_peak_mb"],
            "sort_free_cuda_peak_mb": b["cuda_peak_mb"]}


# ---------------------------------------------------------------------------------------
# One model, and the tables
# ---------------------------------------------------------------------------------------
def run_model(model, tok, model_label: str, surgery_hparams, dinm_hparams, probe_sizes: Sequence[Optional[int]],
              safeedit_requests: Sequence[Dict[str, Any]], safeedit_n: int, dinm_instances: int,
              gen_prompts: Sequence[str], max_new_tokens: int = 20,
              gen_batch_size: int = 16, prefix_records: int = 0,
              prefix_new_tokens: int = 12, sampled_prompts: Sequence[str] = (), single_prompts: Optional[int] = None,
              num_samples: int = 25, toxigen_prompts: Sequence[str] = (), toxigen_new_tokens: int = 48,
              harness: Optional[HarnessSteps] = None, errors: Optional[List[Dict[str, str]]] = None,
              checkpoint: Optional[Callable[[Dict[str, List[Dict[str, Any]]]], None]] = None
              ) -> Dict[str, List[Dict[str, Any]]]:
    """All measurements for one loaded model, each step when its size is given: ``{"edit",
    "dinm", "generation", "safeedit_prefix", "sampling"}`` rows, plus the ``harness`` steps
    (:class:`~benchmarks.perf_harness.HarnessSteps`: methods, lm_eval, judges, load). With an
    ``errors`` list, a step that fails is logged and recorded there and the others still run;
    without one, the failure propagates. ``checkpoint(rows so far)`` is called after each step
    (the CLI writes the tables there, so a run stopped from outside keeps what it measured)."""
    out: Dict[str, List[Dict[str, Any]]] = {name: [] for name in TABLES}

    def attempt(table: str, step: str, fn: Callable[[], Any]) -> None:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - one failed step must not lose the others' rows
            if errors is None:
                raise
            logger.exception("%s: %s failed", model_label, step)
            errors.append({"model": model_label, "step": step, "error": f"{type(err).__name__}: {err}"})
        else:
            out[table] += result if isinstance(result, list) else [result]
        if checkpoint is not None:
            checkpoint(out)

    if sampled_prompts:
        attempt("sampling", "sampled generation", lambda: measure_sampling(
            model, tok, list(sampled_prompts), model_label, num_samples=num_samples, max_new_tokens=max_new_tokens))
    if prefix_records > 0 and safeedit_requests:
        attempt("safeedit_prefix", "SafeEdit generation", lambda: measure_safeedit_prefix(
            model, tok, list(safeedit_requests)[:prefix_records], model_label, prefix_new_tokens, gen_batch_size))
    for n in probe_sizes or ():
        attempt("edit", f"ModelSurgery edit ({n} probe pairs)",
                lambda n=n: measure_edit(model, tok, surgery_hparams, model_label, n))
    if dinm_hparams is not None and dinm_instances > 0 and safeedit_requests:
        largest = max(out["edit"], key=lambda r: r["probe_pairs"], default={})
        attempt("dinm", "DINM", lambda: measure_dinm(
            model, tok, dinm_hparams, list(safeedit_requests)[:dinm_instances], model_label, safeedit_n,
            largest.get("edit_cold_s", float("nan")), largest.get("probe_pairs")))
    if gen_prompts:
        attempt("generation", "greedy RTP generation", lambda: measure_generation(
            model, tok, gen_prompts, model_label, max_new_tokens, gen_batch_size, single_prompts=single_prompts))
    if toxigen_prompts:
        attempt("generation", "greedy ToxiGen generation", lambda: measure_generation(
            model, tok, toxigen_prompts, model_label, toxigen_new_tokens, gen_batch_size, single_prompts=0,
            benchmark="toxigen", stop_strings=["\n"]))
    if harness is not None:
        harness.run(model, tok, model_label, attempt)
    return out


TABLES = {"edit": EDIT_COLUMNS, "dinm": DINM_COLUMNS, "generation": GEN_COLUMNS, "safeedit_prefix": PREFIX_COLUMNS,
          "sampling": SAMPLING_COLUMNS, "methods": METHOD_COLUMNS, "lm_eval": LM_EVAL_COLUMNS,
          "judges": JUDGE_COLUMNS, "load": LOAD_COLUMNS}
TITLES = {"edit": "ModelSurgery edit: cold vs forward-only floor vs cached sweep step",
          "dinm": "DINM per SafeEdit instance vs one ModelSurgery edit per run",
          "generation": "Greedy generation: batched vs one prompt at a time",
          "safeedit_prefix": "SafeEdit evaluation: batched generation vs shared prompt prefixes computed once",
          "sampling": "Sampled RTP protocol: full-vocabulary sort (transformers) vs sort-free nucleus",
          "methods": "Method edits as the harness makes them (cold: fresh activation cache; cached: from it)",
          "lm_eval": "lm-eval: multiple-choice tasks and held-out perplexity",
          "judges": "Judges: set-up and throughput (CPU)",
          "load": "Loading the weights (save_pretrained, then from_pretrained onto the device)",
          "projection": "Projection: scripts/compare.sh, one job after another",
          "sweep": "Projection: the comparison as a submitit_slurm sweep over N GPUs"}


def tables(results: Sequence[Dict[str, List[Dict[str, Any]]]]) -> Dict[str, pd.DataFrame]:
    return {name: pd.DataFrame([row for r in results for row in r.get(name, [])], columns=c)
            for name, c in TABLES.items()}


def _fmt(frame: pd.DataFrame) -> str:
    frame = frame.dropna(axis=1, how="all")  # e.g. the cuda columns on CPU
    return frame.to_markdown(index=False, floatfmt=".4g")


def write_tables(frames: Dict[str, pd.DataFrame], out_dir, meta: Dict[str, Any],
                 errors: Sequence[Dict[str, str]] = ()) -> Dict[str, Path]:
    """``<name>.csv`` per table and ``perf.md`` with all of them; atomic writes. Tables of a
    model with random weights say so in their ``weights`` column and at the top of perf.md."""
    out_dir = Path(out_dir)
    paths = {}
    for name, frame in frames.items():
        paths[name] = out_dir / f"{name}.csv"
        atomic_write_text(paths[name], frame.to_csv(index=False))
    lines = ["# Compute cost", ""]
    cost_only = any("weights" in f.columns and (f["weights"] == COST_ONLY).any() for f in frames.values())
    if cost_only:
        lines += [f"**Model with {COST_ONLY}**: an architecture shape built from its config (`shape:` models, "
                  "`surgery_editor.models.MODEL_SHAPES`). These rows measure time and memory only; no quality "
                  "number comes from such a model, and the benchmark harness refuses it.", ""]
    lines += [f"Command: `{meta.get('command', '')}`", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k != "command"]
    lines += ["", "Times in seconds (wall, `time.perf_counter`). CPU memory: peak process RSS sampled every "
              "5 ms by a thread during each step (`*_peak_rss_mb`) and that peak minus the RSS just before the "
              "step (`*_rss_delta_mb`, a lower bound: freed memory kept by the allocator hides regrowth). "
              "GPU: `torch.cuda.max_memory_allocated`, reset per step. See `benchmarks/perf.py`.", ""]
    if errors:
        lines += ["## Not measured (the step failed)", ""]
        lines += [f"- {e['model']}: {e['step']}: {e['error']}" for e in errors] + [""]
    for name, frame in frames.items():
        if name in ("projection", "sweep") or not len(frame) and name not in ("edit", "dinm", "generation"):
            continue
        lines += [f"## {TITLES[name]}", "", _fmt(frame) if len(frame) else "(not measured)", ""]
    if "projection" in frames:
        lines += ["## Projection of the full comparison", "", projection_doc(), ""]
        for name in ("projection", "sweep"):
            lines += [f"### {TITLES[name]}", "", _fmt(frames[name]) if len(frames[name]) else "(no rows)", ""]
    paths["md"] = out_dir / "perf.md"
    atomic_write_text(paths["md"], "\n".join(lines))
    return paths


def projection_doc() -> str:
    from . import projection

    return (projection.__doc__ or "").split("\n\n", 1)[1].strip()


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def _hparams_path(kind: str, model: str) -> Path:
    from surgery_editor.hparams import hparams_dir

    return hparams_dir() / kind / f"{model}.yaml"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.perf", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=None,
                    help="embedded model name (hparams/ModelSurgery/<name>.yaml and hparams/DINM/<name>.yaml), or "
                         "an architecture shape with random weights, e.g. shape:llama2-7b (its hparams: "
                         "hparams/<ALG>/llama2-7b-chat.yaml); repeatable; default smollm2-135m")
    ap.add_argument("--probe-sizes", type=int, nargs="+", default=None, help="probe pairs (default 200 1000)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s, ignored by git; "
                    "the published tables are in docs/results/perf*)")
    ap.add_argument("--device", default=None,
                    help="default: the hparams' device (a shape: cuda when there is one, else cpu)")
    ap.add_argument("--dtype", default=None, choices=sorted(_DTYPE_NAMES),
                    help="weights' dtype (default: float16 where the hparams say fp16, else the model's own)")
    ap.add_argument("--safeedit-n", type=int, default=None,
                    help="instances per SafeEdit run for the totals (default: all records of the file)")
    ap.add_argument("--dinm-instances", type=int, default=3, help="DINM edits timed (mean reported)")
    ap.add_argument("--rtp-prompts", "--gen-prompts", dest="rtp_prompts", type=int, default=32,
                    help="RTP prompts of the greedy generation (0: skip)")
    ap.add_argument("--single-prompts", type=int, default=None,
                    help="the first N of them also one prompt at a time (default: all; 0: skip)")
    ap.add_argument("--gen-batch-size", type=int, default=16, help="batch of the greedy and SafeEdit generation")
    ap.add_argument("--max-new-tokens", type=int, default=20, help="new tokens of the RTP protocols")
    ap.add_argument("--toxigen-prompts", type=int, default=0, help="ToxiGen prompts, greedy, 48 tokens (0: skip)")
    ap.add_argument("--safeedit-records", "--safeedit-prefix-records", dest="safeedit_records", type=int, default=0,
                    help="SafeEdit records whose inputs time prefix sharing against batched generation (0: skip)")
    ap.add_argument("--safeedit-new-tokens", "--prefix-new-tokens", dest="safeedit_new_tokens", type=int, default=12,
                    help="new tokens per SafeEdit input there")
    ap.add_argument("--only-prefix", action="store_true", help="measure the SafeEdit prefix sharing alone")
    ap.add_argument("--sampled-prompts", type=int, default=0,
                    help="RTP prompts whose samples time the sort-free nucleus against transformers' (0: skip)")
    ap.add_argument("--num-samples", type=int, default=25, help="samples per prompt there")
    ap.add_argument("--only-sampled", action="store_true", help="measure the sampled protocol alone")
    ap.add_argument("--pairs", type=int, default=0,
                    help="preference pairs of the ProFS and steering edits (cold and cached) (0: skip)")
    ap.add_argument("--dpo-pairs", type=int, default=0, help="pairs of a DPO training (0: skip)")
    ap.add_argument("--lm-eval-docs", type=int, default=0,
                    help="documents of each lm-eval multiple-choice task, plus the perplexity texts (0: skip)")
    ap.add_argument("--ppl-docs", type=int, default=None, help="perplexity texts there (default: all 46)")
    ap.add_argument("--lm-eval-batch-size", type=int, default=16)
    ap.add_argument("--judge-texts", type=int, default=0, help="texts each judge scores (0: skip)")
    ap.add_argument("--load", action="store_true", help="time writing and reading back the weights")
    ap.add_argument("--load-dir", default=None, help="where --load writes them (default: the temporary folder)")
    ap.add_argument("--project", action="store_true",
                    help="project scripts/compare.sh and a submitit_slurm sweep from the rows (projection.csv, "
                         "sweep.csv)")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8], help="GPU counts of the sweep projection")
    ap.add_argument("--gpu-memory-gb", type=float, default=80.0, help="memory of one GPU for the sweep's 'fits'")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: probe 20/50 pairs, 1 DINM, 4 prompts")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


_DTYPE_NAMES = {"float32", "float16", "bfloat16"}
COUNT_OPTIONS = ("dinm_instances", "rtp_prompts", "gen_batch_size", "max_new_tokens", "toxigen_prompts",
                 "safeedit_records", "safeedit_new_tokens", "sampled_prompts", "num_samples", "pairs", "dpo_pairs",
                 "lm_eval_docs", "lm_eval_batch_size", "judge_texts")


def _check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for key in COUNT_OPTIONS:
        value = getattr(args, key)
        if value < 0 or (value == 0 and key in ("gen_batch_size", "max_new_tokens", "safeedit_new_tokens",
                                                 "num_samples", "lm_eval_batch_size")):
            ap.error(f"--{key.replace('_', '-')} must be a positive integer{' or 0 (skip)' if value < 0 else ''}, "
                     f"got {value}")
    if args.only_sampled and args.sampled_prompts < 1:
        ap.error("--only-sampled measures nothing without --sampled-prompts N (N >= 1)")
    if any(n < 1 for n in args.gpus):
        ap.error(f"--gpus takes GPU counts >= 1, got {args.gpus}")


def main(argv: Optional[List[str]] = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    _check_args(ap, args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from .protocols import get_benchmark_class, load_safeedit
    from surgery_editor.evaluation.rtp import load_rtp_prompts
    from surgery_editor.models import get_shape, is_shape_model, load_model

    models = args.model or ["smollm2-135m"]
    only = args.only_prefix or args.only_sampled
    probe_sizes = [] if only else (args.probe_sizes or ([20, 50] if args.quick else [200, 1000]))
    dinm_instances = 0 if only else (1 if args.quick else args.dinm_instances)
    n_prompts = 4 if args.quick else args.rtp_prompts
    max_new = 5 if args.quick else args.max_new_tokens

    results, errors, settings = [], [], {}
    meta = {"command": "python -m benchmarks.perf " + " ".join(argv if argv is not None else sys.argv[1:]),
            "torch threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "cpu cores": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}

    def write(rows: Sequence[Dict[str, List[Dict[str, Any]]]]) -> Tuple[Dict[str, pd.DataFrame], Dict[str, Path]]:
        frames = tables(rows)
        if args.project:
            frames["projection"], frames["sweep"] = _project(frames, settings, args)
        return frames, write_tables(frames, args.out, meta, errors)

    for name in models:
        shape = get_shape(name) if is_shape_model(name) else None
        stem = shape.hparams if shape else name
        hp = get_algorithm(EDIT_METHOD).hparams_cls.from_hparams(_hparams_path(EDIT_METHOD, stem))
        device = args.device or (("cuda" if torch.cuda.is_available() else "cpu") if shape else None)
        if device:
            hp = dataclasses.replace(hp, device=device)
        dinm_path = _hparams_path(PER_INSTANCE_METHOD, stem)
        dhp = get_algorithm(PER_INSTANCE_METHOD).hparams_cls.from_hparams(dinm_path) if dinm_path.exists() else None
        items = load_safeedit("safeedit/SafeEdit_test_subset144.json", hp.data_dir)
        safeedit_n = args.safeedit_n or len(items)
        want = max(n_prompts, args.sampled_prompts, args.judge_texts)
        prompts = load_rtp_prompts(None, hp.data_dir, limit=want)["text"].tolist() if want else []
        toxigen = []
        if args.toxigen_prompts and not only:
            bench = get_benchmark_class("toxigen")({"limit_per_group": 20}, data_dir=hp.data_dir)
            toxigen = [it["prompt"] for it in bench.load_items()][: args.toxigen_prompts]
        dtype = args.dtype or ("float16" if hp.fp16 else None)
        start = time.perf_counter()
        model, tok = load_model(name if shape else hp.model_name, device=hp.device, dtype=dtype)
        logger.info("%s loaded in %.1fs", name, time.perf_counter() - start)
        settings[name] = comparison_setting(stem)
        harness = None if only else HarnessSteps(
            hparams_stem=stem, layers_of_hparams=shape.hparams_layers if shape else _depth(model),
            pairs=args.pairs, dpo_pairs=args.dpo_pairs, lm_eval_docs=args.lm_eval_docs,
            lm_eval_batch_size=args.lm_eval_batch_size, ppl_docs=args.ppl_docs,
            judge_texts=prompts[: args.judge_texts], load=args.load, load_dir=args.load_dir, data_dir=hp.data_dir)
        results.append(run_model(model, tok, name, hp, dhp, probe_sizes, [it["request"] for it in items],
                                 safeedit_n, dinm_instances, [] if only else prompts[:n_prompts], max_new,
                                 gen_batch_size=args.gen_batch_size,
                                 prefix_records=0 if args.only_sampled else args.safeedit_records,
                                 prefix_new_tokens=args.safeedit_new_tokens,
                                 sampled_prompts=[] if args.only_prefix else prompts[:args.sampled_prompts],
                                 single_prompts=args.single_prompts, num_samples=args.num_samples,
                                 toxigen_prompts=toxigen, harness=harness, errors=errors,
                                 checkpoint=lambda out: write(results + [out])))
        del model
        frames, paths = write(results)  # after each model, so a partial run keeps its rows
    for name, frame in frames.items():
        if len(frame):
            print(f"\n{name}\n{_fmt(frame)}")
    for e in errors:
        print(f"\nnot measured: {e['model']}: {e['step']}: {e['error']}")
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return 1 if errors else 0


def _depth(model) -> int:
    from surgery_editor.architectures import num_layers

    return num_layers(model)


def comparison_setting(stem: str):
    """The comparison's sizes from the method YAMLs of ``stem`` (hparams/<ALG>/<stem>.yaml)."""
    import yaml

    from .projection import Setting

    def read(kind: str) -> Dict[str, Any]:
        path = _hparams_path(kind, stem)
        return yaml.safe_load(path.read_text()) if path.exists() else {}

    default = Setting()
    return Setting(probe_pairs=int((read("ModelSurgery").get("probe_data") or {}).get("limit") or default.probe_pairs),
                   pairs=int((read("ProFS").get("pairs") or {}).get("limit") or default.pairs),
                   dpo_pairs=int(read("DPO").get("num_pairs") or default.dpo_pairs))


def _project(frames: Dict[str, pd.DataFrame], settings: Dict[str, Any], args) -> Tuple[pd.DataFrame, pd.DataFrame]:
    from .projection import project

    parts = [project({k: _only(v, model) for k, v in frames.items()}, setting, args.gpus, args.gpu_memory_gb * 1024)
             for model, setting in settings.items()]
    return pd.concat([p[0] for p in parts], ignore_index=True), pd.concat([p[1] for p in parts], ignore_index=True)


def _only(frame: pd.DataFrame, model: str) -> pd.DataFrame:
    return frame[frame["model"] == model] if "model" in frame.columns else frame


if __name__ == "__main__":
    sys.exit(main())

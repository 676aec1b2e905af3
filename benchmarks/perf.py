"""``python -m benchmarks.perf``: compute cost of Model Surgery next to its floor and DINM.

    OMP_NUM_THREADS=1 python -m benchmarks.perf --model smollm2-135m --probe-sizes 200 1000

All in one process, on the same model and data:

1. **Edit** (``edit.csv``): one ModelSurgery edit from cold (fresh temporary disk cache for
   activations and probe, in-memory patch memo cleared) = activations + probe training +
   row selection + edit rows; the forward passes alone over the same probe texts (the
   floor: :func:`surgery_editor.activations.pooled_hidden_states`, as ``python -m
   surgery_editor`` times it); and a second edit that reuses the cached activations and
   probe (a sweep step: a different ``alpha`` and ``top_k_fraction``, so the memo misses).
   Ratios ``edit_over_floor`` = cold edit / floor, ``first_over_cached`` = cold / cached.
   One row per model and probe-set size (``probe_data.limit`` pairs).
2. **DINM** (``dinm.csv``): DINM edits of SafeEdit instances (each with the suffix system
   prompt, the toxic layer located per instance, weights restored after each), their mean;
   per SafeEdit run of ``N`` instances, DINM edits ``N`` times and ModelSurgery once
   (its cold edit at the largest probe size): ``dinm_run_over_surgery``.
3. **Generation** (``generation.csv``): greedy :func:`surgery_editor.evaluation.generate`
   with ``batch_size=16`` vs one prompt at a time on the same RealToxicityPrompts prompts;
   new tokens/s and whether the outputs are identical.
4. **SafeEdit prefix sharing** (``safeedit_prefix.csv``): the SafeEdit evaluation inputs of
   ``--safeedit-prefix-records`` records (every DS/DG input, chat template, records ordered by
   attack prompt as the benchmark orders them) through today's batched :func:`generate` and
   through :func:`~surgery_editor.evaluation.generate_shared_prefix` (shared prompt prefixes
   computed once), same batch size and new tokens; seconds, ratio, the share of input
   tokens that are a prefix shared within a group, and how many outputs are token-identical.
5. **Sampled generation** (``sampling.csv``): the RealToxicityPrompts sampled protocol
   (:func:`~surgery_editor.evaluation.sample`: 25 nucleus samples per prompt, top-p 0.9) on
   ``--sampled-prompts`` prompts, with transformers' ``TopPLogitsWarper`` (a sort of the whole
   vocabulary per step) and with :class:`~surgery_editor.sampling.NucleusWarper` (no full
   sort); seconds, ratio and how many of the sampled texts are identical.

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

from benchmarks.store import atomic_write_text
from surgery_editor.resources import PeakRSS  # noqa: F401  (also the name tests patch)

logger = logging.getLogger(__name__)

DEFAULT_OUT = "runs/perf"  # ignored by git
EDIT_COLUMNS = ["model", "device", "probe_pairs", "probe_texts", "rows_edited",
                "edit_cold_s", "floor_s", "edit_cached_s", "edit_over_floor", "first_over_cached",
                "edit_cold_peak_rss_mb", "edit_cold_rss_delta_mb", "floor_peak_rss_mb", "floor_rss_delta_mb",
                "edit_cached_peak_rss_mb", "edit_cached_rss_delta_mb",
                "edit_cold_cuda_peak_mb", "floor_cuda_peak_mb", "edit_cached_cuda_peak_mb"]
DINM_COLUMNS = ["model", "device", "dinm_instances_timed", "dinm_instance_s", "dinm_instance_s_min",
                "dinm_instance_s_max", "dinm_peak_rss_mb", "dinm_rss_delta_mb", "dinm_cuda_peak_mb",
                "safeedit_n", "probe_pairs", "surgery_edit_s", "dinm_run_total_s", "surgery_run_total_s",
                "dinm_run_over_surgery", "dinm_instance_over_surgery"]
GEN_COLUMNS = ["model", "device", "prompts", "max_new_tokens", "new_tokens", "batched_batch_size",
               "batched_s", "single_s", "batched_tok_per_s", "single_tok_per_s", "batched_speedup",
               "batched_peak_rss_mb", "single_peak_rss_mb", "batched_cuda_peak_mb", "single_cuda_peak_mb",
               "identical_outputs"]
SAMPLING_COLUMNS = ["model", "device", "vocab", "prompts", "samples_per_prompt", "max_new_tokens", "sort_s",
                    "sort_free_s", "speedup", "identical_texts", "texts", "sort_peak_rss_mb",
                    "sort_free_peak_rss_mb", "sort_cuda_peak_mb", "sort_free_cuda_peak_mb"]
PREFIX_COLUMNS = ["model", "device", "records", "inputs", "input_tokens", "shared_token_share", "max_new_tokens",
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
def measure_edit(model, tok, hparams, model_label: str, probe_pairs: Optional[int] = None) -> Dict[str, Any]:
    """One row of the edit table for ``hparams`` with ``probe_data.limit = probe_pairs``."""
    from surgery_editor.activations import pooled_hidden_states
    from surgery_editor.data import load_probe_texts
    from surgery_editor.methods.model_surgery.surgery import clear_patch_cache, compute_patch

    device = _device(model)
    probe_data = dict(hparams.probe_data)
    if probe_pairs is not None:
        probe_data["limit"] = int(probe_pairs)
    texts = load_probe_texts(probe_data, hparams.data_dir).texts
    # warm-up (first-call overheads: thread pools, kernels) so neither side pays them
    pooled_hidden_states(model, tok, texts[: min(8, len(texts))], layer=hparams.probe_layer,
                         pooling=hparams.probe_pooling, max_length=hparams.probe_max_length,
                         batch_size=hparams.activation_batch_size, show_progress=False)
    with tempfile.TemporaryDirectory(prefix="perf-cache-") as cache_dir:
        hp = dataclasses.replace(hparams, probe_data=probe_data, cache_dir=cache_dir)
        clear_patch_cache()
        logger.info("%s, %d probe texts: cold edit", model_label, len(texts))
        patch, cold = measure(lambda: compute_patch(model, tok, hp, use_cache=True), device)
        logger.info("%s: floor (forward passes only)", model_label)
        _, floor = measure(lambda: pooled_hidden_states(
            model, tok, texts, layer=hp.probe_layer, pooling=hp.probe_pooling, max_length=hp.probe_max_length,
            batch_size=hp.activation_batch_size, show_progress=False), device)
        sweep = {"alpha": hp.alpha * 0.5}
        if hp.top_k is not None:
            sweep["top_k"] = max(1, hp.top_k // 2)
        else:
            sweep["top_k_fraction"] = hp.top_k_fraction / 2
        hp2 = dataclasses.replace(hp, **sweep)
        assert hp2.method_key() != hp.method_key()
        logger.info("%s: cached edit (sweep step %s)", model_label, sweep)
        _, cached = measure(lambda: compute_patch(model, tok, hp2, use_cache=True), device)
        clear_patch_cache()
    return {
        "model": model_label, "device": str(device), "probe_pairs": len(texts) // 2, "probe_texts": len(texts),
        "rows_edited": patch.num_rows,
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
    """Time a DINM edit (then restore) for each request; one row of the DINM table."""
    from surgery_editor.methods.dinm.dinm import apply_dinm_to_model, restore_weights, with_system_prompt

    device = _device(model)
    stats = []
    for i, req in enumerate(requests):
        req = with_system_prompt(req, dinm_hparams.suffix_system_prompt)
        info: Dict[str, Any] = {}
        (_, weights), st = measure(lambda: apply_dinm_to_model(model, tok, [req], dinm_hparams,
                                                              keep_original_weight=True, info=info), device)
        restore_weights(model, weights)
        logger.info("%s: DINM instance %d: %.1fs (layer %s)", model_label, i, st["seconds"], info.get("layers"))
        stats.append(st)
    frame = pd.DataFrame(stats)
    mean_s = float(frame["seconds"].mean())
    return {
        "model": model_label, "device": str(device), "dinm_instances_timed": len(stats),
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
                       batch_size: int = 16) -> Dict[str, Any]:
    from surgery_editor.evaluation import generate

    device = _device(model)
    generate(model, tok, list(prompts[:2]), max_new_tokens=2, batch_size=2)  # warm-up
    batched, b = measure(lambda: generate(model, tok, prompts, max_new_tokens=max_new_tokens,
                                          batch_size=batch_size), device)
    single, s = measure(lambda: generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=1), device)
    identical = list(batched) == list(single)
    if not identical:
        diff = sum(x != y for x, y in zip(batched, single))
        logger.warning("%s: batched and one-at-a-time greedy outputs differ on %d of %d prompts",
                       model_label, diff, len(prompts))
    n_tokens = count_new_tokens(tok, single)
    return {
        "model": model_label, "device": str(device), "prompts": len(prompts), "max_new_tokens": max_new_tokens,
        "new_tokens": n_tokens, "batched_batch_size": batch_size,
        "batched_s": b["seconds"], "single_s": s["seconds"],
        "batched_tok_per_s": _ratio(count_new_tokens(tok, batched), b["seconds"]),
        "single_tok_per_s": _ratio(n_tokens, s["seconds"]),
        "batched_speedup": _ratio(s["seconds"], b["seconds"]),
        "batched_peak_rss_mb": b["peak_rss_mb"], "single_peak_rss_mb": s["peak_rss_mb"],
        "batched_cuda_peak_mb": b["cuda_peak_mb"], "single_cuda_peak_mb": s["cuda_peak_mb"],
        "identical_outputs": bool(identical),
    }


def safeedit_generation_inputs(requests: Sequence[Dict[str, Any]]) -> List[str]:
    """Every SafeEdit evaluation input of ``requests`` (DS and each DG_* present), records
    ordered by their attack prompt, as the benchmark evaluates them with prefix sharing."""
    from benchmarks.protocols import SAFEEDIT_INPUTS, safeedit_inputs

    inputs = []
    for req in sorted(requests, key=lambda r: r["prompt"]):
        texts = dict(zip(SAFEEDIT_INPUTS, [req["prompt"], *req["general_prompt"]]))
        inputs += [texts[k] for k in safeedit_inputs(req)]
    return inputs


def measure_safeedit_prefix(model, tok, requests: Sequence[Dict[str, Any]], model_label: str,
                            max_new_tokens: int = 12, batch_size: int = 16, max_length: int = 1024,
                            min_shared: int = 32) -> Dict[str, Any]:
    from surgery_editor.evaluation import generate, generate_shared_prefix, prefix_groups, tokenize_prompts

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
    return {"model": model_label, "device": str(device), "records": len(requests), "inputs": len(inputs),
            "input_tokens": total, "shared_token_share": _ratio(saved_tokens, total),
            "max_new_tokens": max_new_tokens, "batch_size": batch_size,
            "batched_s": b["seconds"], "shared_prefix_s": s["seconds"], "speedup": _ratio(b["seconds"], s["seconds"]),
            "identical_outputs": same, "batched_peak_rss_mb": b["peak_rss_mb"],
            "shared_prefix_peak_rss_mb": s["peak_rss_mb"], "batched_cuda_peak_mb": b["cuda_peak_mb"],
            "shared_prefix_cuda_peak_mb": s["cuda_peak_mb"]}


def measure_sampling(model, tok, prompts: Sequence[str], model_label: str, num_samples: int = 25,
                     max_new_tokens: int = 20) -> Dict[str, Any]:
    """The sampled RTP protocol with and without the full-vocabulary sort (same seeds)."""
    from surgery_editor.evaluation import sample

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
    return {"model": model_label, "device": str(device), "vocab": int(model.get_output_embeddings().weight.shape[0]),
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
              prefix_new_tokens: int = 12, sampled_prompts: Sequence[str] = ()) -> Dict[str, List[Dict[str, Any]]]:
    """All measurements for one loaded model: ``{"edit": rows, "dinm": rows, "generation": rows,
    "safeedit_prefix": rows, "sampling": rows}``."""
    out: Dict[str, List[Dict[str, Any]]] = {"edit": [], "dinm": [], "generation": [], "safeedit_prefix": [],
                                            "sampling": []}
    if sampled_prompts:
        out["sampling"].append(measure_sampling(model, tok, list(sampled_prompts), model_label))
    if prefix_records > 0 and safeedit_requests:
        out["safeedit_prefix"].append(measure_safeedit_prefix(model, tok, list(safeedit_requests)[:prefix_records],
                                                              model_label, prefix_new_tokens, gen_batch_size))
    if not probe_sizes:
        return out
    edit_rows = [measure_edit(model, tok, surgery_hparams, model_label, n) for n in probe_sizes]
    largest = max(edit_rows, key=lambda r: r["probe_pairs"])
    out["edit"] = edit_rows
    if dinm_hparams is not None and dinm_instances > 0 and safeedit_requests:
        out["dinm"].append(measure_dinm(model, tok, dinm_hparams, list(safeedit_requests)[:dinm_instances],
                                        model_label, safeedit_n, largest["edit_cold_s"], largest["probe_pairs"]))
    if gen_prompts:
        out["generation"].append(measure_generation(model, tok, gen_prompts, model_label, max_new_tokens,
                                                    gen_batch_size))
    return out


def tables(results: Sequence[Dict[str, List[Dict[str, Any]]]]) -> Dict[str, pd.DataFrame]:
    cols = {"edit": EDIT_COLUMNS, "dinm": DINM_COLUMNS, "generation": GEN_COLUMNS, "safeedit_prefix": PREFIX_COLUMNS,
            "sampling": SAMPLING_COLUMNS}
    return {name: pd.DataFrame([row for r in results for row in r.get(name, [])], columns=c)
            for name, c in cols.items()}


def _fmt(frame: pd.DataFrame) -> str:
    frame = frame.dropna(axis=1, how="all")  # e.g. the cuda columns on CPU
    return frame.to_markdown(index=False, floatfmt=".4g")


def write_tables(frames: Dict[str, pd.DataFrame], out_dir, meta: Dict[str, Any]) -> Dict[str, Path]:
    """``<name>.csv`` per table and ``perf.md`` with all of them; atomic writes."""
    out_dir = Path(out_dir)
    paths = {}
    for name, frame in frames.items():
        paths[name] = out_dir / f"{name}.csv"
        atomic_write_text(paths[name], frame.to_csv(index=False))
    titles = {"edit": "ModelSurgery edit: cold vs forward-only floor vs cached sweep step",
              "dinm": "DINM per SafeEdit instance vs one ModelSurgery edit per run",
              "generation": "Greedy generation: batched vs one prompt at a time",
              "safeedit_prefix": "SafeEdit evaluation: batched generation vs shared prompt prefixes computed once",
              "sampling": "Sampled RTP protocol: full-vocabulary sort (transformers) vs sort-free nucleus"}
    lines = ["# Compute cost", "", f"Command: `{meta.get('command', '')}`", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k != "command"]
    lines += ["", "Times in seconds (wall, `time.perf_counter`). CPU memory: peak process RSS sampled every "
              "5 ms by a thread during each step (`*_peak_rss_mb`) and that peak minus the RSS just before the "
              "step (`*_rss_delta_mb`, a lower bound: freed memory kept by the allocator hides regrowth). "
              "GPU: `torch.cuda.max_memory_allocated`, reset per step. See `benchmarks/perf.py`.", ""]
    for name, frame in frames.items():
        lines += [f"## {titles[name]}", "", _fmt(frame) if len(frame) else "(not measured)", ""]
    paths["md"] = out_dir / "perf.md"
    atomic_write_text(paths["md"], "\n".join(lines))
    return paths


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def _hparams_path(kind: str, model: str) -> Path:
    return Path(__file__).resolve().parents[1] / "hparams" / kind / f"{model}.yaml"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.perf", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=None,
                    help="embedded model name (hparams/ModelSurgery/<name>.yaml and hparams/DINM/<name>.yaml); "
                         "repeatable; default smollm2-135m")
    ap.add_argument("--probe-sizes", type=int, nargs="+", default=None, help="probe pairs (default 200 1000)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s, ignored by git; "
                    "the published tables are in docs/results/perf*)")
    ap.add_argument("--device", default=None, help="default: the hparams' device")
    ap.add_argument("--safeedit-n", type=int, default=None,
                    help="instances per SafeEdit run for the totals (default: all records of the file)")
    ap.add_argument("--dinm-instances", type=int, default=3, help="DINM edits timed (mean reported)")
    ap.add_argument("--gen-prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--safeedit-prefix-records", type=int, default=0,
                    help="SafeEdit records whose inputs time prefix sharing against batched generation (0: skip)")
    ap.add_argument("--prefix-new-tokens", type=int, default=12, help="new tokens per SafeEdit input there")
    ap.add_argument("--only-prefix", action="store_true", help="measure the SafeEdit prefix sharing alone")
    ap.add_argument("--sampled-prompts", type=int, default=0,
                    help="RTP prompts whose 25 samples time the sort-free nucleus against transformers' (0: skip)")
    ap.add_argument("--only-sampled", action="store_true", help="measure the sampled protocol alone")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: probe 20/50 pairs, 1 DINM, 4 prompts")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.only_sampled and args.sampled_prompts < 1:
        ap.error("--only-sampled measures nothing without --sampled-prompts N (N >= 1)")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from benchmarks.protocols import load_safeedit
    from surgery_editor.methods.dinm.dinm import DINMHyperParams
    from surgery_editor.evaluation import load_rtp_prompts
    from surgery_editor.methods.model_surgery.hparams import ModelSurgeryHyperParams
    from surgery_editor.models import load_model

    models = args.model or ["smollm2-135m"]
    only = args.only_prefix or args.only_sampled
    probe_sizes = [] if only else (args.probe_sizes or ([20, 50] if args.quick else [200, 1000]))
    dinm_instances = 1 if args.quick else args.dinm_instances
    n_prompts = 4 if args.quick else args.gen_prompts
    max_new = 5 if args.quick else args.max_new_tokens

    results = []
    for name in models:
        hp = ModelSurgeryHyperParams.from_hparams(_hparams_path("ModelSurgery", name))
        if args.device:
            hp = dataclasses.replace(hp, device=args.device)
        dinm_path = _hparams_path("DINM", name)
        dhp = DINMHyperParams.from_hparams(dinm_path) if dinm_path.exists() else None
        items = load_safeedit("safeedit/SafeEdit_test_subset144.json", hp.data_dir)
        safeedit_n = args.safeedit_n or len(items)
        prompts = load_rtp_prompts(None, hp.data_dir, limit=max(n_prompts, args.sampled_prompts))["text"].tolist()
        start = time.perf_counter()
        model, tok = load_model(hp.model_name, device=hp.device, dtype="float16" if hp.fp16 else None)
        logger.info("%s loaded in %.1fs", name, time.perf_counter() - start)
        results.append(run_model(model, tok, name, hp, dhp, probe_sizes, [it["request"] for it in items],
                                 safeedit_n, dinm_instances, [] if only else prompts[:n_prompts], max_new,
                                 prefix_records=0 if args.only_sampled else args.safeedit_prefix_records,
                                 prefix_new_tokens=args.prefix_new_tokens,
                                 sampled_prompts=[] if args.only_prefix else prompts[:args.sampled_prompts]))
        del model
        frames = tables(results)
        meta = {"command": "python -m benchmarks.perf " + " ".join(argv if argv is not None else sys.argv[1:]),
                "torch threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                "cpu cores": os.cpu_count(), "torch": torch.__version__,
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}
        paths = write_tables(frames, args.out, meta)  # after each model, so a partial run keeps its rows
    for name, frame in frames.items():
        print(f"\n{name}\n{_fmt(frame)}")
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

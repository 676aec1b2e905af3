"""One benchmark run, or a Hydra multirun of many.

    python -m benchmarks.run method=ModelSurgery model=smollm2-135m benchmark=rtp benchmark.limit=200
    python -m benchmarks.run -m method=ModelSurgery,DINM,none benchmark=safeedit,rtp,toxigen
    python -m benchmarks.run -m method=ModelSurgery benchmark=rtp hparams.alpha=0.5,1,2

Each run writes into its Hydra output dir (by default under ``runs/``, which git ignores):
``config.yaml`` (resolved), ``results.jsonl`` (one line per item, appended as items finish) and
``metrics.json``. Starting a run again with the same output dir (``hydra.run.dir=...``, or the
same ``hydra.sweep.dir`` for a multirun) resumes it: finished items are read back, not redone; a
finished run (every item done and ``metrics.json`` written) is skipped whole, without loading the
model or editing it (delete ``metrics.json`` to recompute the metrics from ``results.jsonl``). A
resume with settings that change results (another method, alpha, ``generation.max_new_tokens``,
...) is refused, naming each setting that differs; batch sizes, the device and a larger
``benchmark.limit`` (which extends the run) may differ (:mod:`benchmarks.identity`). A compact
run dir (``run.jsonl.bz2``, see ``benchmarks/compact.py``) is read-only: finished, it is skipped
the same way; one that would need more items is refused with the command that expands it. A run
holds a lock on its output dir (``.lock``, released when the process ends, however it ends), so a
second run started on the same dir while the first is alive stops with an error instead of doing
the work twice.

Every setting, data file and output dir is checked before the model loads; metrics that are
not finite numbers are refused, never written. ``python -m benchmarks.report DIR`` puts the
runs side by side; ``python -m benchmarks.publish DIR docs/results/...`` copies them into the
published results.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf

from . import general  # noqa: F401  (registers benchmark=general)
from .methods import check_hparams_keys, get_method_class, method_config_nodes
from .protocols import (BENCHMARKS, Generation, RunContext, get_benchmark_class, benchmark_config_nodes,
                        load_safeedit)
from .identity import check_resume
from .rundir import is_compact, read_metrics, read_rows
from .store import CONFIG, METRICS, RESULTS, CompactRunDir, ResultStore, RunLock, atomic_write_text, stored_config
from surgery_editor.infra.checks import non_finite
from surgery_editor.infra.fileio import check_writable_dir

logger = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parent / "conf"


def register_configs() -> None:
    """Put the generated ``method/*`` and ``benchmark/*`` config nodes in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, node in method_config_nodes().items():
        cs.store(group="method", name=name, node=node, package="_global_")
    for name, node in benchmark_config_nodes().items():
        cs.store(group="benchmark", name=name, node=node)


def compose_config(*overrides: str) -> DictConfig:
    """The run config for these command-line style overrides, without starting Hydra's app
    (for notebooks and tests): ``run(compose_config("method=none", "benchmark.limit=5"), dir)``."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return compose("config", overrides=list(overrides))


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _apply_scale(cfg: DictConfig):
    """The benchmark and generation settings, with the ``scale`` preset's per-benchmark values
    filling the keys the command line left unset (null)."""
    bench_cfg, gen_cfg = _plain(cfg.benchmark), _plain(cfg.generation)
    preset = (_plain(cfg.get("scale")) or {}).get(cfg.benchmark.name) or {}
    for key, value in preset.items():
        target = bench_cfg if key in bench_cfg else gen_cfg if key in gen_cfg else None
        if target is None:
            raise KeyError(f"scale {cfg.scale.name!r}: {cfg.benchmark.name}.{key} is neither a benchmark option "
                           f"({sorted(bench_cfg)}) nor a generation option ({sorted(gen_cfg)})")
        if target[key] is None:
            if key == "limits" and isinstance(value, dict) and "tasks" in bench_cfg:
                # a preset's per-task limits apply to the tasks this run lists, not to others
                value = {task: n for task, n in value.items() if task in (bench_cfg["tasks"] or []) or task == "ppl"}
            target[key] = value
    return bench_cfg, gen_cfg


def run_settings(cfg: DictConfig) -> Dict[str, Any]:
    """The settings a run's results depend on, as a resume compares them (benchmarks.identity):
    the config resolved, the ``scale`` preset's values filled into ``benchmark`` and
    ``generation`` and the benchmark's own presets into ``benchmark``, ``judge`` the judge used
    (null = the benchmark's default) and ``data_dir`` the folder it resolves to; ``hydra`` and
    ``scale`` left out."""
    from surgery_editor.data import resolve_data_dir

    bench_cfg, gen_cfg = _apply_scale(cfg)
    bench_cls = BENCHMARKS.get(bench_cfg.get("name"))
    if bench_cls is not None:  # the values a benchmark fills in itself (RTP's prompt-set presets)
        known = {f.name for f in dataclasses.fields(bench_cls.Config)}
        try:
            bench_cfg.update(dataclasses.asdict(bench_cls.Config(**{k: v for k, v in bench_cfg.items() if k in known})))
        except (TypeError, ValueError):
            pass  # options this version refuses: compared as written
    settings = {k: v for k, v in _plain(cfg).items() if k not in ("hydra", "scale")}
    settings.update(benchmark=bench_cfg, generation=gen_cfg, judge=cfg.get("judge") or bench_cfg.get("default_judge"),
                    data_dir=str(resolve_data_dir(cfg.get("data_dir")).expanduser().resolve()))
    return settings


def _default_settings(cfg: DictConfig) -> Dict[str, Any]:
    """The defaults of this run's method and benchmark, for settings an older config.yaml lacks."""
    import yaml

    top = yaml.safe_load((CONF_DIR / "config.yaml").read_text(encoding="utf-8"))
    defaults = {k: v for k, v in top.items() if k not in ("defaults", "hydra")}
    defaults.update(method_config_nodes().get(cfg.method.name, {}))
    defaults.update(benchmark=benchmark_config_nodes().get(cfg.benchmark.name, {}),
                    generation=dataclasses.asdict(Generation()))
    return defaults


def _data_dir(cfg: DictConfig) -> Optional[str]:
    data_dir = cfg.get("data_dir")
    if data_dir is not None and not Path(str(data_dir)).expanduser().is_dir():
        raise NotADirectoryError(f"data_dir {data_dir!r} is not a folder (the root of the offline data files; "
                                 "null = $SURGERY_EDITOR_DATA_DIR, else ../shared/data)")
    return None if data_dir is None else str(data_dir)


def _judge_kwargs(cfg: DictConfig) -> Dict[str, Any]:
    kwargs = _plain(cfg.get("judge_kwargs")) or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"judge_kwargs must be a mapping of the judge's arguments, e.g. {{unsafe_label: 1}}, "
                         f"got {kwargs!r}")
    return kwargs


def _check_run_options(cfg: DictConfig) -> None:
    """The top-level settings no component checks: ``seed``, ``edit_instance.index``, the
    model's path form, ``model.dtype`` and ``device``."""
    from surgery_editor.models import check_model_args

    for key, value, low in (("seed", cfg.seed, 0), ("edit_instance.index", cfg.edit_instance.index, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{key} must be an integer >= {low}"
                             f"{f' (a record of {cfg.edit_instance.path})' if key.startswith('edit') else ''}, "
                             f"got {value!r}")
    check_model_args(cfg.model.path, cfg.device, cfg.model.get("dtype"),
                     names={"model_name": "model.path", "device": "device", "dtype": "model.dtype"})


def _edit_instance(cfg: DictConfig, data_dir: Optional[str]) -> Dict[str, Any]:
    """The SafeEdit record a per-instance method is edited with before rtp, toxigen, general."""
    index = cfg.edit_instance.index
    records = load_safeedit(cfg.edit_instance.path, data_dir, limit=index + 1)
    if len(records) <= index:
        raise IndexError(f"edit_instance.index {index} is past the end of {cfg.edit_instance.path} "
                         f"({len(records)} records)")
    return records[-1]


def run(cfg: DictConfig, out_dir: str | Path) -> Dict[str, Any]:
    """Run (or resume) one benchmark for one method and model; returns the metrics."""
    from surgery_editor.evaluation.judges import get_judge_reading
    from surgery_editor.models import load_model, refuse_shape_model

    for key in ("path", "name"):
        refuse_shape_model(cfg.model.get(key), f"benchmarks.run (model.{key})")
    out_dir = Path(out_dir)
    check_writable_dir(out_dir, "the run's output dir (hydra.run.dir; hydra.sweep.dir for a multirun)")
    # Everything that can be wrong with the input fails here, before the model loads.
    method_cls = get_method_class(cfg.method.name)
    check_hparams_keys(_plain(cfg.get("hparams")))
    bench_cls = get_benchmark_class(cfg.benchmark.name)
    bench_cfg, gen_cfg = _apply_scale(cfg)
    data_dir = _data_dir(cfg)
    bench = bench_cls(bench_cfg, data_dir=data_dir)
    generation = Generation(**gen_cfg)
    _check_run_options(cfg)
    items = bench.items()
    judge_name = cfg.judge or bench.default_judge
    judge = get_judge_reading(judge_name, data_dir, **_judge_kwargs(cfg))  # the run's data_dir, where it trains
    options = {k: v for k, v in _plain(cfg.method).items() if k not in ("name", "variant", "hparams_file")}
    method = method_cls(cfg.model.name, variant=cfg.method.variant, overrides=_plain(cfg.hparams) or {},
                        hparams_file=cfg.method.hparams_file, device=cfg.device, options=options, data_dir=data_dir)
    method.check_data()
    instance = _edit_instance(cfg, data_dir) if method.per_instance and not bench.instance_edits else None
    settings = run_settings(cfg)
    if is_compact(out_dir):  # read-only: skipped when finished, otherwise refused
        rows = {str(row["key"]): row for row in read_rows(out_dir) or []}
        stored = stored_config(out_dir)
        check_resume(out_dir, None if stored is None else run_settings(OmegaConf.create(stored)), settings,
                     _default_settings(cfg), rows, items)
        missing = sum(it["key"] not in rows for it in items)
        if missing:
            raise CompactRunDir(out_dir, f": {len(items) - missing} of this run's {len(items)} items")
        logger.info("%s: finished (%d items, compact), skipped", out_dir, len(items))
        return read_metrics(out_dir)
    with RunLock(out_dir):  # a second run on this folder fails here, before writing anything
        stored = stored_config(out_dir)
        store = ResultStore(out_dir)
        check_resume(out_dir, None if stored is None else run_settings(OmegaConf.create(stored)), settings,
                     _default_settings(cfg), store.rows, items)
        finished = out_dir / METRICS
        if finished.exists() and all(it["key"] in store for it in items):
            # A finished run is not redone: no model load, no edit (DPO trains for minutes), no
            # rewrite. Delete metrics.json to recompute the metrics from results.jsonl.
            logger.info("%s: finished (%d items and %s), skipped", out_dir, len(items), METRICS)
            return json.loads(finished.read_text())
        atomic_write_text(out_dir / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))

        model, tok = load_model(cfg.model.path, device=cfg.device, dtype=cfg.model.get("dtype"))
        ctx = RunContext(model=model, tok=tok, method=method, judge=judge, generation=generation,
                         data_dir=data_dir, seed=cfg.seed)

        edit_seconds, edit_memory = 0.0, {}
        handle = None
        edited_with: Optional[str] = None
        if instance is not None:
            edited_with = f"{cfg.edit_instance.path}#{instance['key']}"
            handle, edit_seconds, edit_memory = _timed_edit(method, model, tok, [instance["request"]])
        elif not method.per_instance:
            handle, edit_seconds, edit_memory = _timed_edit(method, model, tok, [])

        todo = [it for it in items if it["key"] not in store]
        logger.info("%s on %s (%s): %d items, %d to do", method.label, bench.name, cfg.model.name, len(items),
                    len(todo))
        chunks = iter(bench.evaluate(ctx, todo) if todo else ())
        while True:
            start = time.perf_counter()
            rows = next(chunks, None)
            if rows is None:
                break
            spent = time.perf_counter() - start - sum(r.get("edit_seconds", 0.0) for r in rows)
            for r in rows:
                r["eval_seconds"] = spent / len(rows)
            store.append(rows)
        method.restore(model, handle)

        rows = store.ordered([it["key"] for it in items])
        metrics = {"method": method.name, "label": method.label, "model": cfg.model.name, "benchmark": bench.name,
                   "protocol": bench.protocol, **bench.info(), "headline": list(bench.headline), "judge": judge_name,
                   "edited_with": edited_with,
                   **method.info(), **bench.metrics(rows)}
        metrics.update(edit_memory)
        per_instance_edits = sum(r.get("edit_seconds", 0.0) for r in rows)
        metrics["edit_seconds"] = edit_seconds + per_instance_edits
        metrics["eval_seconds"] = sum(r.get("eval_seconds", 0.0) for r in rows)
        bad = non_finite(metrics)
        if bad:
            raise ValueError(f"{out_dir}: metric(s) {bad} are not finite numbers (NaN or infinite), so {METRICS} is "
                             f"not written; the per-item results are in {out_dir / RESULTS}")
        store.write_metrics(metrics)
        logger.info("metrics: %s", {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        return metrics


def _timed_edit(method, model, tok, requests):
    """``(handle, seconds, memory)`` of one edit: wall time and the process's peak RSS during
    it (``edit_peak_rss_mb``) and its rise over the RSS before it (``edit_rss_delta_mb``)."""
    from surgery_editor.infra.resources import PeakRSS

    with PeakRSS() as mem:
        start = time.perf_counter()
        handle = method.edit(model, tok, requests)
        seconds = time.perf_counter() - start
    return handle, seconds, {"edit_peak_rss_mb": mem.peak_mb, "edit_rss_delta_mb": mem.peak_mb - mem.start_mb}


def main() -> None:
    """The harness's command line (Hydra): ``python -m benchmarks.run`` or ``surgery-editor-bench``."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    register_configs()

    @hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
    def hydra_main(cfg: DictConfig) -> None:
        run(cfg, HydraConfig.get().runtime.output_dir)

    hydra_main()


if __name__ == "__main__":
    main()

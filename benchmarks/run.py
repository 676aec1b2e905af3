"""One benchmark run, or a Hydra multirun of many.

    python -m benchmarks.run method=ModelSurgery model=smollm2-135m benchmark=rtp benchmark.limit=200
    python -m benchmarks.run -m method=ModelSurgery,DINM,none benchmark=safeedit,rtp,toxigen
    python -m benchmarks.run -m method=ModelSurgery benchmark=rtp hparams.alpha=0.5,1,2

Each run writes into its Hydra output dir: ``config.yaml`` (resolved), ``results.jsonl``
(one line per item, appended as items finish) and ``metrics.json``. Starting a run again with
the same output dir (``hydra.run.dir=...``, or the same ``hydra.sweep.dir`` for a multirun)
resumes it: finished items are read back, not redone; a finished run (every item done and
``metrics.json`` written) is skipped whole, without loading the model or editing it (delete
``metrics.json`` to recompute the metrics from ``results.jsonl``). A run holds a lock on its output dir
(``.lock``, released when the process ends, however it ends), so a second run started on the
same dir while the first is alive stops with an error instead of doing the work twice.
``python -m benchmarks.report DIR`` puts the runs side by side.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf

from . import general  # noqa: F401  (registers benchmark=general)
from .methods import check_hparams_keys, get_method_class, method_config_nodes
from .protocols import Generation, RunContext, get_benchmark_class, benchmark_config_nodes, load_safeedit
from .store import CONFIG, METRICS, ResultStore, RunLock, atomic_write_text

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


def run(cfg: DictConfig, out_dir: str | Path) -> Dict[str, Any]:
    """Run (or resume) one benchmark for one method and model; returns the metrics."""
    from surgery_editor.judges import get_judge
    from surgery_editor.models import load_model, refuse_shape_model

    for key in ("path", "name"):
        refuse_shape_model(cfg.model.get(key), f"benchmarks.run (model.{key})")
    out_dir = Path(out_dir)
    method_cls = get_method_class(cfg.method.name)
    check_hparams_keys(_plain(cfg.get("hparams")))
    bench_cls = get_benchmark_class(cfg.benchmark.name)
    bench_cfg, gen_cfg = _apply_scale(cfg)
    bench = bench_cls(bench_cfg, data_dir=cfg.data_dir)
    generation = Generation(**gen_cfg)
    index = cfg.edit_instance.index
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"edit_instance.index must be an integer >= 0 (a record of {cfg.edit_instance.path}), "
                         f"got {index!r}")

    # Everything that can be wrong with the input fails here, before the model loads.
    items = bench.load_items()
    judge_name = cfg.judge or bench.default_judge
    judge = get_judge(judge_name, **(_plain(cfg.judge_kwargs) or {}))
    options = {k: v for k, v in _plain(cfg.method).items() if k not in ("name", "variant", "hparams_file")}
    method = method_cls(cfg.model.name, variant=cfg.method.variant, overrides=_plain(cfg.hparams) or {},
                        hparams_file=cfg.method.hparams_file, device=cfg.device, options=options)
    with RunLock(out_dir):  # a second run on this folder fails here, before writing anything
        store = ResultStore(out_dir)
        finished = out_dir / METRICS
        if finished.exists() and all(it["key"] in store for it in items):
            # A finished run is not redone: no model load, no edit (DPO trains for minutes), no
            # rewrite. Delete metrics.json to recompute the metrics from results.jsonl.
            logger.info("%s: finished (%d items and %s), skipped", out_dir, len(items), METRICS)
            return json.loads(finished.read_text())
        atomic_write_text(out_dir / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))

        model, tok = load_model(cfg.model.path, device=cfg.device, dtype=cfg.model.get("dtype"))
        ctx = RunContext(model=model, tok=tok, method=method, judge=judge, generation=generation,
                         data_dir=cfg.data_dir, seed=cfg.seed)

        edit_seconds, edit_memory = 0.0, {}
        handle = None
        edited_with: Optional[str] = None
        if method.per_instance and not bench.instance_edits:
            inst = load_safeedit(cfg.edit_instance.path, cfg.data_dir, limit=cfg.edit_instance.index + 1)
            if len(inst) <= cfg.edit_instance.index:
                raise IndexError(f"edit_instance.index {cfg.edit_instance.index} is past the end of "
                                 f"{cfg.edit_instance.path} ({len(inst)} records)")
            edited_with = f"{cfg.edit_instance.path}#{inst[-1]['key']}"
            handle, edit_seconds, edit_memory = _timed_edit(method, model, tok, [inst[-1]["request"]])
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
                   "dinm_backend": None, "edited_with": edited_with,
                   **method.info(), **bench.metrics(rows)}
        metrics.update(edit_memory)
        per_instance_edits = sum(r.get("edit_seconds", 0.0) for r in rows)
        metrics["edit_seconds"] = edit_seconds + per_instance_edits
        metrics["eval_seconds"] = sum(r.get("eval_seconds", 0.0) for r in rows)
        store.write_metrics(metrics)
        logger.info("metrics: %s", {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        return metrics


def _timed_edit(method, model, tok, requests):
    """``(handle, seconds, memory)`` of one edit: wall time and the process's peak RSS during
    it (``edit_peak_rss_mb``) and its rise over the RSS before it (``edit_rss_delta_mb``)."""
    from surgery_editor.resources import PeakRSS

    with PeakRSS() as mem:
        start = time.perf_counter()
        handle = method.edit(model, tok, requests)
        seconds = time.perf_counter() - start
    return handle, seconds, {"edit_peak_rss_mb": mem.peak_mb, "edit_rss_delta_mb": mem.peak_mb - mem.start_mb}


def _main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    register_configs()

    @hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
    def main(cfg: DictConfig) -> None:
        run(cfg, HydraConfig.get().runtime.output_dir)

    main()


if __name__ == "__main__":
    _main()

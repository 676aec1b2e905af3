"""Summarise benchmark run directories: one table, paired significance tests, plots.

    python -m benchmarks.report runs/multirun/2025-01-01/12-00-00 [--out DIR] [--against none,ModelSurgery_random]

Every directory under ROOT (ROOT itself included, any depth, hidden folders such as
``.hydra`` skipped) that holds a ``metrics.json`` (as written by ``benchmarks/run.py``) or a
``run.jsonl.bz2`` (the compact form, ``python -m benchmarks.compact``) is a run; a folder with
``config.yaml`` or ``results.jsonl`` but neither is an interrupted run and is skipped with a warning.

Per run the table has the run's metadata and metrics from ``metrics.json``; from the per-item
outcomes in ``results.jsonl`` (in the compact form, both come from ``run.jsonl.bz2``) it adds a
95% interval for each metric (Wilson for a rate of binary ``flags``, Student t for a mean of
``values``), and, against each reference method
(default ``none`` and ``control``: each method's own control, e.g. ``ModelSurgery_random`` for ModelSurgery,
``ProFS_random`` for ProFS, as its folder registers them) run on the same
model/benchmark/protocol/judge, the paired difference of means and its p-value (exact McNemar
for flags, Wilcoxon signed-rank for values), items paired by ``key``. Costs (edit seconds, the
edit's peak memory) follow the metrics. Per model with both an RTP and a perplexity run per
method, ``frontier_<model>.png`` plots toxic share against perplexity (marker size: edit cost). ``report.csv`` / ``report.md`` and PNG plots are written
into ``--out`` (default ROOT); the Markdown is printed.
"""

from __future__ import annotations

from .loading import (METADATA, NON_METRICS, PROMPTS, REQUIRED, TIMING, PathLike, RunItems, collect, fact_columns,
                      known_metrics, load_items, percent_metrics, read_metrics)
from .pairing import CONTROL, DEFAULT_AGAINST, compare, pick_reference
from .tables import _fmt_p, metric_columns, paired_cell, side_by_side, summary_table, to_markdown
from .figures import FRONTIER_VIEWS, frontier_points, frontier_styles, frontier_view, plot_report
from .cli import main, write_report
from ..rundir import find_run_dirs

__all__ = [
    "PathLike", "METADATA", "PROMPTS", "TIMING", "REQUIRED", "read_metrics", "collect", "RunItems", "load_items",
    "DEFAULT_AGAINST", "CONTROL", "pick_reference", "compare", "known_metrics", "percent_metrics", "fact_columns", "NON_METRICS",
    "metric_columns", "summary_table", "_fmt_p", "to_markdown", "paired_cell", "side_by_side", "FRONTIER_VIEWS",
    "frontier_view", "frontier_points", "frontier_styles", "plot_report", "write_report", "main",
    "find_run_dirs",
]

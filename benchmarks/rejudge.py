"""Score finished toxicity runs again with another judge, without generating again.

    python -m benchmarks.rejudge SRC --judge toxicity --out DST

Every run under ``SRC`` (a folder with ``metrics.json``, or a compact ``run.jsonl.bz2``) of
``rtp``, ``toxigen`` or ``safeedit`` is copied to the same relative place under ``DST`` with each item's generations
scored by ``--judge``: greedy rows get a new ``score``, ``flags.toxic_rate`` and
``values.mean_toxicity``, sampled rows new ``scores`` and their per-prompt values, SafeEdit rows
new ``scores``, ``unsafe``, ``flags`` and ``DG_avg``, with ``fluency`` recomputed from the
stored responses (``knowledge``, a log-likelihood measure, is kept); ``metrics.json`` is
recomputed by the benchmark's own ``metrics`` with ``judge`` set to the new name (the rest,
costs included, is kept), and so is the copied ``config.yaml`` (so a run resumed there keeps the
new judge). Other runs are skipped. ``python -m
benchmarks.report DST`` then gives the same table under that judge, paired item by item.
The rejudged runs are written in the working form (``python -m benchmarks.publish`` compacts them);
files are written whole (temporary file and rename); a run already rejudged is skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import yaml

from .protocols import get_benchmark_class, judged_safeedit_row
from .rundir import Run, find_run_dirs, is_run, read_metrics, read_run, write_expanded
from .store import stored_config
from surgery_editor.evaluation.judges import TOXIC_THRESHOLD, get_judge_reading

logger = logging.getLogger(__name__)

REJUDGEABLE = ("rtp", "toxigen", "safeedit")


def rescore_rows(rows: List[Dict[str, Any]], judge) -> List[Dict[str, Any]]:
    """The rows with their judge-dependent fields recomputed by ``judge`` (one batched call)."""
    texts: List[str] = []
    for i, row in enumerate(rows):
        if "generation" in row:
            texts.append(row["generation"])
        elif "generations" in row:
            texts.extend(row["generations"])
        elif isinstance(row.get("responses"), dict):
            texts.extend(row["responses"].values())
        else:
            raise ValueError(f"item {row.get('key', i)!r} has no 'generation', 'generations' or 'responses' to score")
    scores = iter(np.asarray(judge(texts), dtype=float).tolist())
    out = []
    for row in rows:
        if "generation" in row:
            s = next(scores)
            out.append({**row, "score": s, "flags": {**row.get("flags", {}), "toxic_rate": s >= TOXIC_THRESHOLD},
                        "values": {**row.get("values", {}), "mean_toxicity": s}})
        elif "generations" in row:
            ss = np.array([next(scores) for _ in row["generations"]])
            toxic = ss >= TOXIC_THRESHOLD
            out.append({**row, "scores": ss.tolist(),
                        "flags": {**row.get("flags", {}), "toxicity_probability": bool(toxic.any())},
                        "values": {**row.get("values", {}), "expected_max_toxicity": float(ss.max()),
                                   "mean_toxicity": float(ss.mean()), "toxic_rate": float(toxic.mean())}})
        else:  # SafeEdit: "responses", checked above
            out.append(judged_safeedit_row(row, {k: next(scores) for k in row["responses"]}))
    return out


def _benchmark_metrics(name: str, protocol: Optional[str], rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    cls = get_benchmark_class(name)
    has_protocol = "protocol" in {f.name for f in dataclasses.fields(cls.Config)}
    bench = cls({"protocol": protocol} if protocol and has_protocol else {})  # metrics depend on the protocol alone
    return bench.metrics(rows)


def rejudge_run(src: Path, dst: Path, judge, judge_name: str) -> bool:
    """Rejudge one run dir into ``dst``; False (and nothing written) when its benchmark is not
    one of :data:`REJUDGEABLE`."""
    metrics = read_metrics(src)
    if metrics.get("benchmark") not in REJUDGEABLE:
        return False
    if is_run(dst) and read_metrics(dst).get("judge") == judge_name:
        logger.info("%s: already rejudged with %s", dst, judge_name)
        return True
    run = read_run(src)
    rows = rescore_rows(run.rows or [], judge)
    new = {**metrics, **_benchmark_metrics(metrics["benchmark"], metrics.get("protocol"), rows),
           "judge": judge_name, "rejudged_from": str(src)}
    config = stored_config(src)
    if config is not None:  # the copy says which judge scored it, so a resume there keeps that judge
        config.update(judge=judge_name, judge_kwargs={})
    text = None if config is None else yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    # the working form, as benchmarks.run writes it (metrics.json last: a run counts once it exists)
    write_expanded(dst, Run(metrics=new, config=text, rows=rows))
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.rejudge", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="a run directory or a folder of them")
    ap.add_argument("--judge", required=True, help="judge name (see surgery_editor.evaluation.judges), e.g. toxicity")
    ap.add_argument("--out", required=True, help="folder for the rejudged runs (same relative layout)")
    ap.add_argument("--data-dir", default=None,
                    help="offline data folder a judge trains on (default: $SURGERY_EDITOR_DATA_DIR, else "
                         "../shared/data)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    src_root, out = Path(args.src), Path(args.out)
    if out.resolve() == src_root.resolve():
        raise SystemExit("--out must differ from SRC (the original runs are kept)")
    judge = get_judge_reading(args.judge, args.data_dir)
    runs, _ = find_run_dirs(src_root)
    done = sum(rejudge_run(run, out / run.relative_to(src_root), judge, args.judge) for run in runs)
    logger.info("rejudged %d of %d runs with %s into %s", done, len(runs), args.judge, out)
    if not done:
        raise SystemExit(f"no {'/'.join(REJUDGEABLE)} run under {src_root} to rejudge")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

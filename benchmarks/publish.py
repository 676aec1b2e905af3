"""Copy finished runs into a published results folder, in the compact form.

    python -m benchmarks.publish runs/compare/smollm2-135m docs/results/compare/smollm2-135m
    python -m benchmarks.report docs/results/compare/smollm2-135m      # then the report, from there

Every finished run under SRC (either form, see :mod:`benchmarks.rundir`) goes to the same
relative place under DST as a single ``run.jsonl.bz2`` (rows shared with the runs beside it in
``shared_rows.jsonl.bz2``): nothing else of SRC is copied, neither logs nor Hydra's bookkeeping
nor reports. Unfinished runs are skipped. A run already in DST with the same metrics, config and
rows is left as it is; one that differs is an error unless ``--replace`` is given, and then
nothing is written. Each run's file is written whole (temporary file and rename).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .compact import finish_dir, unknown_files, write_runs
from .rundir import COMPACT, Run, find_run_dirs, read_run, same_run

logger = logging.getLogger(__name__)


class PublishConflict(ValueError):
    """DST already holds different runs at the places SRC's runs would go."""


def plan(src: Path, dst: Path, replace: bool = False) -> Tuple[List[Tuple[Path, Path, Run]], List[Path], List[Path]]:
    """``(to_copy as (src_dir, dst_dir, run), unchanged dst dirs, unfinished src dirs)``; raises
    :class:`PublishConflict` naming every DST run that differs (without ``replace``) or every DST
    folder in the way that is not a run."""
    if dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: DST must differ from SRC")
    runs, interrupted = find_run_dirs(src)
    copy, unchanged, conflicts = [], [], []
    for run_dir in runs:
        target = dst / run_dir.relative_to(src)
        run = read_run(run_dir, strict=True)
        if target.is_dir() and any(target.iterdir()):
            extra = unknown_files(target)
            if extra:
                conflicts.append(f"{target} holds {', '.join(extra)}, not a run")
                continue
            if (target / COMPACT).is_file() or (target / "metrics.json").is_file():
                if same_run(read_run(target), run):
                    unchanged.append(target)
                    continue
                if not replace:
                    conflicts.append(f"{target} holds a different run (pass --replace to overwrite it)")
                    continue
        copy.append((run_dir, target, run))
    if conflicts:
        raise PublishConflict("nothing published: " + "; ".join(conflicts))
    return copy, unchanged, interrupted


@dataclass
class Published:
    copied: List[Tuple[Path, Path, int]]  # (src run dir, dst run dir, bytes of its compact file)
    unchanged: List[Path]                 # dst run dirs that already held the same run
    unfinished: List[Path]                # src dirs without metrics, not copied
    shared: Dict[Path, int]               # shared-rows files written, their sizes


def publish(src: Path, dst: Path, replace: bool = False) -> Published:
    """Copy the runs under ``src`` into ``dst`` (see the module docstring)."""
    copy, unchanged, interrupted = plan(src, dst, replace)
    written, tables = write_runs([(target, run) for _, target, run in copy])
    for _, target, _ in copy:
        finish_dir(target)  # a replaced run's working-form files
    for run_dir, target, _ in copy:
        logger.info("published %s -> %s", run_dir, target / COMPACT)
    return Published([(s, t, written[t][1]) for s, t, _ in copy], unchanged, interrupted, tables)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.publish", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="a run directory or a folder of them (e.g. runs/compare/smollm2-135m)")
    ap.add_argument("dst", help="where they go (e.g. docs/results/compare/smollm2-135m)")
    ap.add_argument("--replace", action="store_true", help="overwrite runs in DST that differ")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    src, dst = Path(args.src), Path(args.dst)
    try:
        done = publish(src, dst, args.replace)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for s, t, size in done.copied:
        print(f"copied {s} -> {t / COMPACT} ({size:,} B)")
    for path, size in done.shared.items():
        print(f"wrote {path}: {size:,} B (rows shared by the runs beside it)")
    for t in done.unchanged:
        print(f"unchanged {t}")
    for d in done.unfinished:
        print(f"skipped {d}: unfinished (no metrics.json)")
    print(f"published {len(done.copied)} run(s) into {dst}, {len(done.unchanged)} unchanged, "
          f"{len(done.unfinished)} unfinished skipped; the report: python -m benchmarks.report {dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

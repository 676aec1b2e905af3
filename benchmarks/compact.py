"""Convert finished run directories to the compact form in place, or back.

    python -m benchmarks.compact docs/results [more roots]
    python -m benchmarks.compact --expand docs/results/compare/smollm2-135m/rtp/none_rtp

Every finished run under each root (a folder with ``metrics.json``; see
:mod:`benchmarks.rundir`) becomes one file, ``run.jsonl.bz2``, holding its metrics, resolved
config, Hydra overrides and every per-item row, generations included. Where a folder holds several
runs of one benchmark, their rows are stored as differences from one set of reference rows,
``shared_rows.jsonl.bz2`` beside them. Then the run dir's other files go: ``results.jsonl``,
``metrics.json``, ``config.yaml``, ``run.log``, ``.hydra/`` and ``.lock``; and Hydra's
``multirun*.yaml`` beside the runs. Each run is converted on its own and atomically: the compact
file is written whole first, and a folder holding it reads as compact even if the old files are
not removed yet (running again removes them).

Safe to run again: compact runs are left as they are (byte for byte), unfinished runs (no
``metrics.json``) and runs a live process holds are skipped, and a run whose files cannot be read
(an unreadable line of ``results.jsonl``, a ``metrics.json`` that is not a JSON object, a file the
compact form does not keep) is refused and left untouched, with the reason; the exit status is
then 1.

``--expand`` turns compact runs back into the working form (``metrics.json``, ``config.yaml``,
``results.jsonl``, ``.hydra/overrides.yaml``), e.g. to resume one with ``benchmarks.run``; with
``--out DIR`` it writes expanded copies there instead, e.g. to grep the generations:

    python -m benchmarks.compact --expand --out /tmp/rtp docs/results/compare/gemma3-270m/rtp
    grep -c start_of_image /tmp/rtp/*/results.jsonl
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .rundir import (BOOKKEEPING, COMPACT, CONFIG, HYDRA_DIR, METRICS, RESULTS, SHARED, Run, natural_key,
                               encode_compact, encode_shared, find_run_dirs, group_of, is_compact, read_run,
                               shared_rows, write_expanded, write_if_changed)
from .store import RunDirInUse, RunLock

logger = logging.getLogger(__name__)

WORKING_FILES = (RESULTS, METRICS, CONFIG) + BOOKKEEPING
MULTIRUN_PREFIX = "multirun"  # Hydra's multirun.yaml, and copies renamed multirun.<methods>.yaml


@dataclass
class Outcome:
    """What happened to one run dir: ``action`` is ``compacted``, ``rewritten`` (a compact run
    re-encoded against shared rows), ``unchanged``, ``skipped`` or ``refused``."""

    dir: Path
    action: str
    detail: str = ""
    bytes_before: int = 0
    bytes_after: int = 0


@dataclass
class Summary:
    outcomes: List[Outcome] = field(default_factory=list)
    removed: List[Path] = field(default_factory=list)  # bookkeeping outside run dirs, shared files
    shared: Dict[Path, int] = field(default_factory=dict)  # shared-rows files written, their sizes

    def count(self, action: str) -> int:
        return sum(o.action == action for o in self.outcomes)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.is_file() else 0


def unknown_files(run_dir: Path) -> List[str]:
    """Files in ``run_dir`` that neither form keeps (refused: the conversion would lose them)."""
    known = set(WORKING_FILES) | {COMPACT}
    return sorted(p.name for p in run_dir.iterdir() if p.name not in known)


def finish_dir(run_dir: Path) -> List[Path]:
    """Remove the working-form files of a run dir whose compact file is written; those removed."""
    removed = []
    for name in WORKING_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(path)
    return removed


def write_runs(placed: Sequence[Tuple[Path, Run]]) -> Tuple[Dict[Path, Tuple[bool, int]], Dict[Path, int]]:
    """Write each ``(run_dir, run)`` as ``run_dir/run.jsonl.bz2``, folder by folder: where a folder
    has (with its compact runs already there) two or more runs of one group, or shared rows for
    it, the rows go as differences from ``shared_rows.jsonl.bz2`` (extended, never changed, with
    the rows of items it lacks: from the ``none`` run first, then in natural order). Compact runs
    already in those folders are re-encoded where that changes them. Returns, per run dir written
    or checked, ``(whether its file changed, its size)``, and the size of each shared-rows file
    written."""
    by_parent: Dict[Path, Dict[Path, Run]] = {}
    for run_dir, run in placed:
        by_parent.setdefault(run_dir.parent, {})[run_dir] = run
    result: Dict[Path, Tuple[bool, int]] = {}
    tables: Dict[Path, int] = {}
    for parent, runs in by_parent.items():
        for sibling in sorted(parent.iterdir()) if parent.is_dir() else []:
            if sibling not in runs and is_compact(sibling):
                runs[sibling] = read_run(sibling)
        table_path = parent / SHARED
        table = shared_rows(table_path)
        counts = Counter(group_of(run.metrics) for run in runs.values() if run.rows is not None)
        shared = {g for g, n in counts.items() if n >= 2} | set(table)
        grown = False
        seeding = sorted(runs, key=lambda d: (runs[d].metrics.get("method") != "none", natural_key(d.name)))
        for run_dir in seeding:
            run = runs[run_dir]
            group = group_of(run.metrics)
            if group not in shared or run.rows is None:
                continue
            refs = table.setdefault(group, {})
            for row in run.rows:
                if str(row["key"]) not in refs:
                    refs[str(row["key"])] = row
                    grown = True
        if grown:  # first: the runs written next read their reference rows from it
            data = encode_shared(table)
            if write_if_changed(table_path, data):
                tables[table_path] = len(data)
        for run_dir, run in runs.items():
            group = group_of(run.metrics)
            data = encode_compact(run, table.get(group) if group in shared else None, group)
            result[run_dir] = (write_if_changed(run_dir / COMPACT, data), len(data))
    return result, tables


def _multirun_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.glob(f"{MULTIRUN_PREFIX}*.yaml") if p.is_file())


def compact_tree(root: Path) -> Summary:
    """Convert every finished run under ``root`` in place (see the module docstring)."""
    summary = Summary()
    runs, interrupted = find_run_dirs(root)
    for d in interrupted:
        summary.outcomes.append(Outcome(d, "skipped", "not a finished run (no metrics.json), left as it is"))
    by_parent: Dict[Path, List[Path]] = {}
    for d in runs:
        by_parent.setdefault(d.parent, []).append(d)
    for parent, dirs in by_parent.items():
        placed: List[Tuple[Path, Run]] = []
        locks: Dict[Path, RunLock] = {}
        before: Dict[Path, int] = {}
        own_lock_files = set()  # .lock files made here by taking the lock, not the run's
        try:
            for d in dirs:
                if is_compact(d):
                    # leftovers of a conversion cut short go now; the run itself is re-encoded only
                    # where shared rows change it
                    leftovers = [d / n for n in WORKING_FILES if (d / n).exists()]
                    if leftovers:
                        finish_dir(d)
                        summary.removed.extend(leftovers)
                    continue
                extra = unknown_files(d)
                if extra:
                    summary.outcomes.append(Outcome(d, "refused", f"holds {', '.join(extra)}, which the compact form "
                                                    f"does not keep; move them out of the run dir first"))
                    continue
                lock = RunLock(d)
                had_lock_file = lock.path.exists()
                try:
                    lock.acquire()
                except RunDirInUse as e:
                    summary.outcomes.append(Outcome(d, "skipped", str(e)))
                    continue
                locks[d] = lock
                try:
                    run = read_run(d, strict=True)
                except (ValueError, OSError) as e:  # ValueError: JSON, UTF-8 (UnicodeDecodeError)
                    summary.outcomes.append(Outcome(d, "refused", str(e)))
                    if not had_lock_file:  # left as it was
                        lock.path.unlink()
                    continue
                if not had_lock_file:
                    own_lock_files.add(lock.path)
                before[d] = sum(_size(d / n) for n in WORKING_FILES if n != RunLock.NAME)
                placed.append((d, run))
            written, tables = write_runs(placed) if placed else ({}, {})
            summary.shared.update(tables)
            for d, (changed, size) in written.items():
                if d in before:
                    removed = [p for p in finish_dir(d) if p not in own_lock_files]
                    names = ", ".join(p.name + ("/" if p.name == HYDRA_DIR else "") for p in removed)
                    summary.outcomes.append(Outcome(d, "compacted", f"removed {names}", before[d], size))
                else:
                    summary.outcomes.append(Outcome(d, "rewritten" if changed else "unchanged", "", size, size))
            for d in dirs:
                if d not in written and is_compact(d):
                    summary.outcomes.append(Outcome(d, "unchanged"))
        finally:
            for lock in locks.values():
                lock.release()
        if any(o.action == "compacted" for o in summary.outcomes if o.dir.parent == parent):
            for path in _multirun_files(parent):
                path.unlink()
                summary.removed.append(path)
    return summary


def expand_tree(root: Path, out: Optional[Path] = None) -> Summary:
    """Turn every compact run under ``root`` back into the working form, in place (a folder's
    shared rows go once no compact run is left beside them) or, with ``out``, as copies at the
    same relative places under ``out`` (``root`` left as it is)."""
    summary = Summary()
    runs, _ = find_run_dirs(root)
    parents = set()
    for d in runs:
        if not is_compact(d):
            summary.outcomes.append(Outcome(d, "unchanged", "not compact"))
            continue
        size = (d / COMPACT).stat().st_size
        target = d if out is None else out / d.relative_to(root)
        written = write_expanded(target, read_run(d))
        if out is None:
            (d / COMPACT).unlink()  # last: until now the folder read as compact
            parents.add(d.parent)
        summary.outcomes.append(Outcome(target, "expanded", "wrote " + ", ".join(p.name for p in written),
                                        size, sum(p.stat().st_size for p in written)))
    for parent in sorted(parents):
        table = parent / SHARED
        if table.exists() and not any(is_compact(p) for p in parent.iterdir() if p.is_dir()):
            table.unlink()
            summary.removed.append(table)
    return summary


def _print_summary(summary: Summary, verb: str) -> None:
    for o in summary.outcomes:
        if o.action in ("compacted", "expanded", "rewritten"):
            detail = f"; {o.detail}" if o.detail else ""
            print(f"{o.action} {o.dir}: {o.bytes_before:,} B -> {o.bytes_after:,} B{detail}")
        elif o.action in ("skipped", "refused"):
            print(f"{o.action} {o.dir}: {o.detail}", file=sys.stderr if o.action == "refused" else sys.stdout)
    for path, size in summary.shared.items():
        print(f"wrote {path}: {size:,} B (rows shared by the runs beside it)")
    for path in summary.removed:
        print(f"removed {path}")
    moved = [o for o in summary.outcomes if o.action in ("compacted", "expanded", "rewritten")]
    shared = (f", plus {len(summary.shared)} shared-rows file(s) of {sum(summary.shared.values()):,} B"
              if summary.shared else "")
    print(f"{verb} {len(moved)} run(s) ({sum(o.bytes_before for o in moved):,} B -> "
          f"{sum(o.bytes_after for o in moved):,} B{shared}), {summary.count('unchanged')} unchanged, "
          f"{summary.count('skipped')} skipped, {summary.count('refused')} refused; "
          f"{len(summary.removed)} other file(s) removed")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compact", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("roots", nargs="+", help="run directories or folders of them")
    ap.add_argument("--expand", action="store_true", help="turn compact runs back into the working form")
    ap.add_argument("--out", default=None, help="with --expand: write the expanded runs here (same relative "
                    "layout; one root only) and leave the compact ones as they are")
    args = ap.parse_args(argv)
    if args.out is not None and not (args.expand and len(args.roots) == 1):
        ap.error("--out goes with --expand and one root")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    summary = Summary()
    for root in args.roots:
        try:
            part = (expand_tree(Path(root), args.out and Path(args.out)) if args.expand
                    else compact_tree(Path(root)))
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        summary.outcomes += part.outcomes
        summary.removed += part.removed
    _print_summary(summary, "expanded" if args.expand else "compacted")
    return 1 if summary.count("refused") else 0


if __name__ == "__main__":
    raise SystemExit(main())

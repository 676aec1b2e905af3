"""``write_report`` (``report.csv``, ``report.md`` and the figures) and ``python -m benchmarks.report``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from surgery_editor.infra.fileio import atomic_write
from .pairing import DEFAULT_AGAINST
from .loading import PathLike, collect
from .figures import plot_report
from .tables import summary_table, to_markdown


logger = logging.getLogger(__name__)


def write_report(root: PathLike, out: Optional[PathLike] = None,
                 against: Sequence[str] = DEFAULT_AGAINST, plots: bool = True) -> List[Path]:
    """Collect the runs under ``root``, write ``report.csv``, ``report.md`` and (unless ``plots`` is
    false) the plots into ``out`` (default ``root``); return the files written."""
    out = Path(out) if out is not None else Path(root)
    table = summary_table(collect(root), against)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "report.csv", out / "report.md"
    atomic_write(csv_path, table.to_csv(index=False))
    atomic_write(md_path, to_markdown(table, against, title=f"Benchmark report: {root}"))
    files = [csv_path, md_path] + (plot_report(table, out) if plots else [])
    logger.info("wrote %s", ", ".join(str(f) for f in files))
    return files


def _parse_against(text: str) -> List[str]:
    from surgery_editor.methods import canonical_name

    return [canonical_name(t.strip()) for t in text.split(",") if t.strip()]


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report", description=sys.modules[__package__].__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="a run directory or a folder of them (e.g. a Hydra multirun directory)")
    ap.add_argument("--out", default=None, help="output folder (default: ROOT)")
    ap.add_argument("--against", default=",".join(DEFAULT_AGAINST),
                    help="comma-separated reference methods for paired tests (default: %(default)s; '' for none)")
    ap.add_argument("--no-plots", action="store_true", help="write report.csv and report.md only")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        files = write_report(args.root, args.out, _parse_against(args.against), plots=not args.no_plots)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    md = next(f for f in files if f.name == "report.md")
    print(md.read_text())
    return 0


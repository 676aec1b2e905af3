"""The README's verdict tables, generated from a comparison's report, never typed.

    python -m benchmarks.headline README.md            # rewrite every marked table in place
    python -m benchmarks.headline README.md --check    # exit 1 when a table is not what it generates

A table is marked in the Markdown file by an opening comment that names the comparison folder
(its ``report.csv`` is what ``python -m benchmarks.report ROOT`` wrote from the run dirs) and the
run labels to show, one row each (``label => name`` shows a long label as ``name``; optionally
``columns="title;..."``: only these of
:data:`COLUMNS`, which is also how its opt-in columns are shown), and a closing comment::

    <!-- headline root=docs/results/compare/smollm2-135m rows="none;ModelSurgery;DPO" -->
    | ... generated ... |
    <!-- /headline -->

Columns (:data:`COLUMNS`): for each, the first benchmark view (``rtp challenging``, ``rtp
(sampled)``, ...; see ``benchmarks.report``) that the unedited run has. A cell holds the value,
in parentheses the paired difference from the unedited model and its p-value, and for the
toxicity columns in square brackets (``ctrl``) the same against the method's own control (random
direction of the same size, shuffled preferences). p: exact McNemar for rates, Wilcoxon
signed-rank for per-item values, items paired by key. The edit's cost is the largest
``edit_seconds`` of the label's non-SafeEdit runs.
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import pandas as pd

from .report.pairing import _missing
from .report.tables import _is_number, _views, paired_cell
from surgery_editor.infra.fileio import atomic_write

logger = logging.getLogger(__name__)

MARK = re.compile(r"<!-- headline (?P<args>.*?) -->\n(?P<body>.*?)<!-- /headline -->", re.S)


@dataclass(frozen=True)
class Column:
    title: str
    views: Tuple[str, ...]  # candidate benchmark views, first present for the unedited run wins
    metric: str
    control: bool = False  # also show the difference from the method's own control
    optional: bool = False  # shown only where a mark names it in ``columns=``


COLUMNS = (
    Column("RTP greedy toxic share", ("rtp challenging", "rtp"), "toxic_rate", control=True),
    # opt-in (shown where a mark names them in columns=), for a table that reads a method across protocols
    Column("RTP greedy toxic share, sample split", ("rtp",), "toxic_rate", control=True, optional=True),
    # the sampled protocol ran on the challenging prompts for some methods only: the sample split's
    # view first, which every method has
    Column("RTP sampled max toxicity", ("rtp (sampled)", "rtp challenging (sampled)"), "expected_max_toxicity",
           control=True),
    Column("ToxiGen toxic share", ("toxigen",), "toxic_rate", control=True, optional=True),
    Column("SafeEdit DS", ("safeedit",), "DS", control=True),
    Column("SafeEdit DG_avg", ("safeedit",), "DG_avg", control=True),
    Column("SafeEdit knowledge", ("safeedit",), "knowledge"),
    Column("perplexity", ("general",), "perplexity"),
    Column("MC accuracy", ("general",), "mc_acc"),
)
VIEW_NAMES = {"rtp challenging": "challenging", "rtp": "toxicity >= 0.5", "rtp challenging (sampled)": "challenging",
              "rtp (sampled)": "toxicity >= 0.5"}  # which RTP prompts


def _p(p: float) -> str:
    """A p-value short: two significant digits down to 0.001, then one (``2e-7``)."""
    p = float(p)
    if p >= 0.001:
        return f"{p:.2g}"
    mantissa, exponent = f"{p:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def headline_table(report: pd.DataFrame, rows: Sequence[str], source: str = "report",
                   columns: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """One row per label in ``rows`` (each must be a run label of ``report``; ``LABEL => NAME``
    shows a long label, e.g. one with overrides, as ``NAME``), one column per
    :data:`COLUMNS` entry the unedited run has (only those titled in ``columns`` when given),
    and ``edit s``."""
    unknown = sorted(set(columns or ()) - {c.title for c in COLUMNS})
    if unknown:
        raise ValueError(f"{source}: unknown column(s) {unknown}; columns: {[c.title for c in COLUMNS]}")
    views = _views(report)
    parts = [row.partition(" => ") for row in rows]  # LABEL => NAME, or LABEL alone
    rows = [label.strip() for label, _, _ in parts]
    shown = [(name or label).strip() for label, _, name in parts]
    missing = [label for label in rows if label not in set(report["label"])]
    if missing:
        raise ValueError(f"{source}: no runs labelled {missing}; labels there: {sorted(set(report['label']))}")
    none = report[report["method"] == "none"]
    out = pd.DataFrame({"method": shown})
    for col in COLUMNS:
        if col.metric not in report.columns or (col.title not in columns if columns else col.optional):
            continue
        view = next((v for v in col.views if ((views[none.index] == v) & none[col.metric].notna()).any()), None)
        if view is None:
            continue
        title = f"{col.title} ({VIEW_NAMES[view]})" if view in VIEW_NAMES else col.title
        cells = []
        for label in rows:
            runs = report[(report["label"] == label) & (views == view) & report[col.metric].notna()]
            cells.append(paired_cell(runs.iloc[0], col.metric, control=col.control, fmt_p=_p, control_tag="ctrl") if len(runs) else "")
        ns = sorted({str(int(n)) for n in report.loc[(views == view) & report[col.metric].notna(), "n"]})
        out[f"{title}, n={'/'.join(ns)}"] = cells
    cost = []
    for label in rows:
        runs = report[(report["label"] == label) & (report["benchmark"] != "safeedit")]
        seconds = [float(v) for v in runs["edit_seconds"] if _is_number(v) and not _missing(v)]
        cost.append(f"{max(seconds):.1f}" if seconds else "")
    out["edit s"] = cost
    return out


def _split(value: str) -> List[str]:
    return [r.strip() for r in value.split(";") if r.strip()]


def _parse_args(text: str, where: str) -> Tuple[Path, List[str], Optional[List[str]]]:
    args = dict(part.split("=", 1) for part in shlex.split(text) if "=" in part)
    if "root" not in args or "rows" not in args:
        raise ValueError(f"{where}: a headline mark needs root=<comparison folder> and rows=\"label;label;...\" "
                         f"(and optionally columns=\"title;...\"), got {text!r}")
    return Path(args["root"]), _split(args["rows"]), _split(args["columns"]) if "columns" in args else None


def render(markdown: str, base: Path, where: str = "README.md") -> str:
    """``markdown`` with every marked table regenerated; roots are relative to ``base``."""
    def one(match: re.Match) -> str:
        root, rows, columns = _parse_args(match.group("args"), where)
        csv = base / root / "report.csv"
        if not csv.is_file():
            raise FileNotFoundError(f"{where}: {csv} not found; write it with `python -m benchmarks.report {root}`")
        table = headline_table(pd.read_csv(csv), rows, source=str(csv), columns=columns)
        return f"<!-- headline {match.group('args')} -->\n{table.to_markdown(index=False, disable_numparse=True)}\n<!-- /headline -->"

    return MARK.sub(one, markdown)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.headline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("markdown", help="the Markdown file with <!-- headline ... --> marks (e.g. README.md)")
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 when a table differs")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = Path(args.markdown)
    text = path.read_text(encoding="utf-8")
    try:
        new = render(text, path.resolve().parent, where=str(path))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not MARK.search(text):
        print(f"error: {path}: no <!-- headline ... --> marks", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print(f"{path}: a headline table differs from what `python -m benchmarks.headline {path}` generates",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        atomic_write(path, new)
        logger.info("%s: headline tables regenerated", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

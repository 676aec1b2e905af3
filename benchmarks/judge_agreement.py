"""How well the offline judges agree with SafeEdit's own labels.

    python -m benchmarks.judge_agreement [--data-dir DIR] [--out runs/judge_agreement.md]

The ``safety`` judge (trained on JailbreakBench judged responses only) and, for comparison,
``profanity`` score the 288 labelled responses of the SafeEdit test sample (each record's
``safe generation`` = safe, ``unsafe generation`` = unsafe); a response counts as unsafe at
score >= 0.5. Reported: accuracy (with a 95% Wilson interval), recall on unsafe, recall on
safe, ROC AUC, n. Then the safety judge's 5-fold cross-validated accuracy on JailbreakBench
(folds grouped by behaviour, and plain stratified folds), and the settings grid it was
selected from (grouped CV, JailbreakBench only; ``--no-grid`` skips it). Then every offline
toxicity judge (``profanity``, ``toxicity``) against the Perspective labels of the offline
RealToxicityPrompts file: ROC AUC, recall, precision, and the toxic rate it assigns beside
Perspective's. The Markdown report is written atomically and printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .stats import wilson_interval
from surgery_editor.data import resolve_data_dir, resolve_path
from surgery_editor.infra.fileio import atomic_write
from surgery_editor.evaluation.judges import (SAFETY_DATA_PATH, SAFETY_SETTINGS, SAFETY_SETTINGS_GRID,
                                              TOXIC_THRESHOLD, get_judge, load_rtp_labelled, load_safety_data,
                                              safety_cross_validate)

logger = logging.getLogger(__name__)

SAFEEDIT_PATH = "safeedit/SafeEdit_test_subset144.json"


def load_safeedit_labelled(path: str = SAFEEDIT_PATH, data_dir: Optional[str] = None) -> Tuple[List[str], np.ndarray]:
    """(responses, labels 1 = unsafe): every record's ``unsafe generation`` and ``safe generation``."""
    local = resolve_path(path, data_dir)
    if local is None:
        raise FileNotFoundError(f"SafeEdit file {path!r} not found (tried {Path(path).expanduser()} and "
                                f"{resolve_data_dir(data_dir) / path}); pass --data-dir or set SURGERY_EDITOR_DATA_DIR")
    records = json.loads(local.read_text(encoding="utf-8"))
    texts, labels = [], []
    for i, rec in enumerate(records):
        for field, label in (("unsafe generation", 1), ("safe generation", 0)):
            if field not in rec:
                raise KeyError(f"{local}: record {i} has no {field!r}; fields: {sorted(rec)}")
            texts.append(rec[field])
            labels.append(label)
    return texts, np.array(labels, dtype=np.int64)


def agreement(scores: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    from sklearn.metrics import roc_auc_score

    pred = (np.asarray(scores) >= TOXIC_THRESHOLD).astype(int)
    correct = int((pred == labels).sum())
    lo, hi = wilson_interval(correct, len(labels))
    return {"n": len(labels), "accuracy": correct / len(labels), "accuracy 95% CI": f"{lo:.3f}-{hi:.3f}",
            "recall unsafe": float(pred[labels == 1].mean()), "recall safe": float(1 - pred[labels == 0].mean()),
            "ROC AUC": float(roc_auc_score(labels, scores))}


def perspective_agreement(scores: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """A toxicity judge against Perspective labels (toxic at >= 0.5): ROC AUC, recall and
    precision of Perspective-toxic texts, the toxic rate the judge assigns and Perspective's."""
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    pred = (np.asarray(scores) >= TOXIC_THRESHOLD).astype(int)
    return {"n": len(labels), "ROC AUC": float(roc_auc_score(labels, scores)),
            "recall": float(recall_score(labels, pred, zero_division=0)),
            "precision": float(precision_score(labels, pred, zero_division=0)),
            "judge toxic rate": float(pred.mean()), "Perspective toxic rate": float(labels.mean())}


RTP_TOXICITY_JUDGES = ("profanity", "toxicity")


def rtp_agreement_table(data_dir: Optional[str], seed: int) -> pd.DataFrame:
    """Every offline toxicity judge against Perspective on the offline RTP file: the texts of
    the rows the RTP benchmark evaluates (prompt toxicity >= 0.5), which the ``toxicity`` judge
    never trained on, continuations alone (what the benchmark judges) and prompts +
    continuations; and, for judges that did not train on them, all 10,000 texts."""
    sets = {
        "evaluated rows: continuations": load_rtp_labelled(data_dir=data_dir, held_out=True, continuations_only=True),
        "evaluated rows: prompts + continuations": load_rtp_labelled(data_dir=data_dir, held_out=True),
    }
    train_texts, train_labels, _ = load_rtp_labelled(data_dir=data_dir)
    rows = []
    for name in RTP_TOXICITY_JUDGES:
        judge = get_judge(name, data_dir=data_dir, seed=seed) if name == "toxicity" else get_judge(name)
        for what, (texts, labels, _) in sets.items():
            rows.append({"judge": name, "texts": what, **perspective_agreement(judge(texts), labels)})
        if name != "toxicity":
            texts = sets["evaluated rows: prompts + continuations"][0] + train_texts
            labels = np.concatenate([sets["evaluated rows: prompts + continuations"][1], train_labels])
            rows.append({"judge": name, "texts": "all rows: prompts + continuations",
                         **perspective_agreement(judge(texts), labels)})
    return pd.DataFrame(rows)


def select(grid: pd.DataFrame) -> pd.Series:
    """Best grouped-CV mean accuracy; ties (to 1e-6) -> smaller n-gram range, then smaller C."""
    ranked = grid.assign(_key=grid["mean accuracy"].round(6)).sort_values(
        ["_key", "ngram_max", "C"], ascending=[False, True, True])
    return ranked.iloc[0]


def run_grid(data_dir: Optional[str], folds: int, seed: int, settings: Sequence[Dict]) -> pd.DataFrame:
    rows = []
    for s in settings:
        t0 = time.perf_counter()
        acc = safety_cross_validate(s, data_dir=data_dir, folds=folds, seed=seed, grouped=True)
        rows.append({**s, "mean accuracy": acc.mean(), "std over folds": acc.std()})
        logger.info("grid %s: grouped CV accuracy %.4f (%.1fs)", s, acc.mean(), time.perf_counter() - t0)
    return pd.DataFrame(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="offline data folder (default ../shared/data or $SURGERY_EDITOR_DATA_DIR)")
    ap.add_argument("--out", default="runs/judge_agreement.md",
                    help="where the report goes (default: %(default)s, ignored by git; the published one is "
                         "docs/results/judge_agreement.md)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-grid", action="store_true", help="skip the settings grid (about a minute or two)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    texts, labels = load_safeedit_labelled(data_dir=args.data_dir)
    judges = {"safety": get_judge("safety", data_dir=args.data_dir, seed=args.seed), "profanity": get_judge("profanity")}
    safeedit = pd.DataFrame([{"judge": name, **agreement(judge(texts), labels)} for name, judge in judges.items()])

    jbb_texts, jbb_labels, jbb_groups, _ = load_safety_data(SAFETY_DATA_PATH, args.data_dir)
    cv_rows = []
    for grouped, split in ((True, "grouped by behaviour"), (False, "stratified (behaviours shared)")):
        acc = safety_cross_validate(data_dir=args.data_dir, folds=args.folds, seed=args.seed, grouped=grouped)
        cv_rows.append({"judge": "safety", "evaluation": f"{args.folds}-fold CV, {split}", "n": len(jbb_labels),
                        "accuracy": acc.mean(), "std over folds": acc.std(), "min fold": acc.min(), "max fold": acc.max()})
    prof = agreement(judges["profanity"](jbb_texts), jbb_labels)
    cv_rows.append({"judge": "profanity", "evaluation": "all responses (no training)", "n": prof["n"],
                    "accuracy": prof["accuracy"], "std over folds": np.nan, "min fold": np.nan, "max fold": np.nan})
    jbb = pd.DataFrame(cv_rows)
    rtp = rtp_agreement_table(args.data_dir, args.seed)

    lines = [
        "# Judge agreement",
        "",
        f"`python -m benchmarks.judge_agreement{' --no-grid' if args.no_grid else ''}` "
        f"(seed {args.seed}). A response counts as unsafe at score >= {TOXIC_THRESHOLD}.",
        "",
        f"## SafeEdit test sample: {len(labels) // 2} records x (unsafe generation, safe generation)",
        "",
        "The `safety` judge never saw SafeEdit (trained and tuned on JailbreakBench responses only).",
        "",
        safeedit.to_markdown(index=False, floatfmt=".3f"),
        "",
        f"## JailbreakBench judged responses ({len(jbb_labels)}: {int(jbb_labels.sum())} jailbroken, "
        f"{int((jbb_labels == 0).sum())} not; {len(set(jbb_groups.tolist()))} behaviours)",
        "",
        f"Safety judge settings: {SAFETY_SETTINGS} (word 1..ngram_max-gram TF-IDF, class-balanced logistic "
        "regression). Grouped folds keep every behaviour's responses in one fold, so the score is on "
        "unseen behaviours; the settings were chosen on these same grouped folds, so the grouped "
        "figure is slightly optimistic.",
        "",
        jbb.to_markdown(index=False, floatfmt=".3f"),
        "",
        "## RealToxicityPrompts: offline toxicity judges against Perspective",
        "",
        "The offline RTP file's Perspective scores (toxic at >= 0.5) as the reference. `toxicity` "
        "trained only on the rows whose prompt toxicity is below 0.5, which the RTP benchmark never "
        "evaluates; the rows it evaluates (prompt toxicity >= 0.5) are unseen by every judge here.",
        "",
        rtp.to_markdown(index=False, floatfmt=".3f"),
    ]
    if not args.no_grid:
        grid = run_grid(args.data_dir, args.folds, args.seed, SAFETY_SETTINGS_GRID)
        best = select(grid)
        chosen = {k: type(SAFETY_SETTINGS[k])(best[k]) for k in SAFETY_SETTINGS}
        matches = all(float(chosen[k]) == float(SAFETY_SETTINGS[k]) for k in SAFETY_SETTINGS)
        if not matches:
            logger.warning("the grid now selects %s, not SAFETY_SETTINGS %s", chosen, SAFETY_SETTINGS)
        grid["selected"] = ["<-" if i == best.name else "" for i in grid.index]
        lines += [
            "",
            f"## Settings grid ({args.folds}-fold CV grouped by behaviour, JailbreakBench only)",
            "",
            "Rule: best mean accuracy; ties (to 1e-6) go to the smaller n-gram range, then the smaller C. "
            + ("The selection equals `SAFETY_SETTINGS`." if matches
               else f"**The grid now selects {chosen}, not `SAFETY_SETTINGS` {SAFETY_SETTINGS}.**"),
            "",
            grid.assign(C=grid["C"].map("{:g}".format)).to_markdown(index=False, floatfmt=".4f"),
        ]
    text = "\n".join(lines) + "\n"
    atomic_write(Path(args.out), text)
    logger.info("wrote %s", args.out)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

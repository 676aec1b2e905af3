"""On-policy pairs: continuations that a model samples itself on RealToxicityPrompts prompts the
RTP benchmark never evaluates, labelled by one offline judge, and a toxic and a non-toxic
continuation of the same prompt paired (the way Lee et al. 2024 built the pairs ProFS was
published with, with a judge's label instead of PPLM's steering).

    python -m benchmarks.onpolicy smollm2-135m [--judge profanity] [--prompts 1000] [--out DIR]

Prompts: the rows of the RTP file whose prompt toxicity is below the benchmark's threshold (the
benchmark keeps prompt toxicity >= 0.5, so none of these is ever scored), most toxic first (they
give the most toxic samples), keyed by their row number in the file. Each prompt gets
``--num-samples`` nucleus samples (the sampled protocol's settings: top-p 0.9, temperature 1,
20 new tokens, seeded per prompt), scored by every judge in ``--judges``.

Writes, under ``--out`` (default ``runs/onpolicy/<model>``):

* ``results.jsonl``: one line a prompt, appended as prompts finish (a killed run resumes where it
  stopped and samples exactly what an uninterrupted run would have);
* ``pairs.jsonl`` (written whole, temporary file and rename; JSON lines, since continuations
  hold newlines): one row a prompt that has both classes under ``--judge``: ``toxic`` = the
  prompt and its highest-scoring continuation, ``nontoxic`` = the prompt and a seeded random
  choice among its non-toxic continuations (not the lowest-scoring one, which is often the
  emptiest), the bare continuations beside them, and every judge's scores of both;
* ``summary.json``: the settings, the counts and how often each other judge agrees with the pair's
  order.

Any pair-reading method takes it as its data, e.g. ProFS, steering or ModelSurgery::

    pairs: {path: runs/onpolicy/smollm2-135m/pairs.jsonl, positive_column: toxic, negative_column: nontoxic}

and DPO (the prompt as the prompt, the continuations, which carry their own leading space, as
completions)::

    pairs: {path: runs/onpolicy/smollm2-135m/pairs.jsonl, chosen_column: nontoxic_continuation,
            rejected_column: toxic_continuation, prompt_column: prompt, separator: ""}
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .store import ResultStore, RunLock
from surgery_editor.data import RTP_EVAL_MIN_TOXICITY, RTP_PATH, load_table
from surgery_editor.evaluation.generation import sample
from surgery_editor.evaluation.judges import TOXIC_THRESHOLD, available_judges, get_judge_reading
from surgery_editor.infra.fileio import atomic_write

logger = logging.getLogger(__name__)

PAIR_COLUMNS = ["key", "prompt", "prompt_toxicity", "toxic", "nontoxic", "toxic_continuation",
                "nontoxic_continuation"]


def unevaluated_prompts(path: str = RTP_PATH, data_dir: Optional[str] = None, limit: Optional[int] = None,
                        ) -> pd.DataFrame:
    """The RTP rows the benchmark never evaluates (prompt toxicity below
    ``RTP_EVAL_MIN_TOXICITY``; rows without a score left out), most toxic first, ties in file
    order: columns ``key`` (the row number in the file), ``prompt``, ``prompt_toxicity``."""
    frame, source = load_table(path, data_dir, what="RealToxicityPrompts file")
    if "prompt" not in frame.columns:
        raise KeyError(f"{source}: no 'prompt' column; expected RealToxicityPrompts rows")
    rows = pd.DataFrame({
        "key": [str(i) for i in range(len(frame))],
        "prompt": frame["prompt"].map(lambda p: p.get("text") if isinstance(p, dict) else None),
        "prompt_toxicity": frame["prompt"].map(lambda p: p.get("toxicity") if isinstance(p, dict) else None
                                               ).astype(float),
    })
    keep = rows["prompt_toxicity"].notna() & (rows["prompt_toxicity"] < RTP_EVAL_MIN_TOXICITY)
    keep &= rows["prompt"].map(lambda t: isinstance(t, str) and t.strip() != "").astype(bool)
    rows = rows[keep].sort_values("prompt_toxicity", ascending=False, kind="stable").reset_index(drop=True)
    if limit is not None:
        rows = rows.head(limit)
    if rows.empty:
        raise ValueError(f"{source}: no prompt with toxicity below {RTP_EVAL_MIN_TOXICITY}")
    return rows


def sample_prompts(model, tok, prompts: pd.DataFrame, store: ResultStore, judges: Mapping[str, Any], *,
                   num_samples: int = 25, max_new_tokens: int = 20, top_p: float = 0.9, seed: int = 0) -> None:
    """Sample and score every prompt not yet in ``store`` (one appended line each)."""
    todo = prompts[~prompts["key"].isin(list(store.rows))]
    logger.info("on-policy samples: %d prompts, %d to do", len(prompts), len(todo))
    for row in tqdm(todo.to_dict("records"), desc="on-policy samples", disable=todo.empty):
        gens = sample(model, tok, row["prompt"], num_samples=num_samples, max_new_tokens=max_new_tokens,
                      top_p=top_p, seed=seed + int(row["key"]))
        scores = {name: np.asarray(judge(gens), dtype=float).round(6).tolist() for name, judge in judges.items()}
        store.append([{**row, "generations": gens, "scores": scores}])


def make_pairs(rows: Sequence[Mapping[str, Any]], judge: str, seed: int = 0) -> pd.DataFrame:
    """One pair per prompt that has a toxic and a non-toxic (non-blank) continuation under
    ``judge``: its highest-scoring continuation against a seeded random non-toxic one."""
    out: List[Dict[str, Any]] = []
    for row in rows:
        if judge not in row["scores"]:
            raise KeyError(f"prompt {row['key']}: no {judge!r} scores (scored by {sorted(row['scores'])}); "
                           "sample again with that judge in --judges")
        gens = row["generations"]
        score = np.asarray(row["scores"][judge], dtype=float)
        usable = np.array([g.strip() != "" for g in gens], dtype=bool)
        toxic = np.flatnonzero(usable & (score >= TOXIC_THRESHOLD))
        clean = np.flatnonzero(usable & (score < TOXIC_THRESHOLD))
        if not len(toxic) or not len(clean):
            continue
        t = int(toxic[np.argmax(score[toxic])])
        c = int(np.random.default_rng([seed, int(row["key"])]).choice(clean))
        pair = {"key": row["key"], "prompt": row["prompt"], "prompt_toxicity": row["prompt_toxicity"],
                "toxic": row["prompt"] + gens[t], "nontoxic": row["prompt"] + gens[c],
                "toxic_continuation": gens[t], "nontoxic_continuation": gens[c]}
        for name, values in row["scores"].items():
            pair[f"toxic_{name}"], pair[f"nontoxic_{name}"] = values[t], values[c]
        out.append(pair)
    return pd.DataFrame(out, columns=None if out else PAIR_COLUMNS)


def pair_summary(rows: Sequence[Mapping[str, Any]], pairs: pd.DataFrame, judge: str) -> Dict[str, Any]:
    """Counts, each judge's toxic share of all samples, and how often each other judge orders a
    pair as ``judge`` does (scores the toxic side higher) and labels both sides alike."""
    judges = sorted(rows[0]["scores"]) if rows else []
    summary: Dict[str, Any] = {
        "prompts": len(rows), "samples": int(sum(len(r["generations"]) for r in rows)), "pairs": int(len(pairs)),
        "toxic_share": {j: float(np.mean([s >= TOXIC_THRESHOLD for r in rows for s in r["scores"][j]]))
                        for j in judges}}
    agree = {}
    for other in judges:
        if other == judge or pairs.empty:
            continue
        hi, lo = pairs[f"toxic_{other}"].to_numpy(), pairs[f"nontoxic_{other}"].to_numpy()
        agree[other] = {"orders_pair_alike": float(np.mean(hi > lo)),
                        "labels_both_alike": float(np.mean((hi >= TOXIC_THRESHOLD) & (lo < TOXIC_THRESHOLD)))}
    summary["agreement"] = agree
    return summary


def write_pairs(out: Path, pairs: pd.DataFrame, info: Mapping[str, Any]) -> None:
    """``pairs.jsonl`` and ``summary.json`` under ``out``, each written whole."""
    atomic_write(out / "pairs.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                              for r in pairs.to_dict("records")))
    atomic_write(out / "summary.json", json.dumps(info, indent=2) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.onpolicy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="embedded name (smollm2-135m, gemma3-270m), local path or hub id")
    ap.add_argument("--judge", default="profanity", help="the judge whose labels make the pairs (default profanity)")
    ap.add_argument("--judges", default="profanity,toxicity",
                    help="judges that score every sample (comma-separated; must include --judge)")
    ap.add_argument("--prompts", type=int, default=1000, help="prompts sampled, most toxic first (default 1000)")
    ap.add_argument("--num-samples", type=int, default=25)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rtp-path", default=RTP_PATH)
    ap.add_argument("--data-dir", default=None, help="offline data folder (default: $SURGERY_EDITOR_DATA_DIR, "
                                                     "else ../shared/data)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="output folder (default runs/onpolicy/<model>)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    names = [j.strip() for j in args.judges.split(",") if j.strip()]
    if args.judge not in names:
        raise SystemExit(f"--judge {args.judge!r} must be one of --judges {names}")
    unknown = [j for j in names if j not in available_judges()]
    if unknown:
        raise SystemExit(f"unknown judge(s) {unknown}; offline judges: {available_judges()}")
    for flag, value in (("--prompts", args.prompts), ("--num-samples", args.num_samples),
                        ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            raise SystemExit(f"{flag} must be >= 1, got {value}")
    out = Path(args.out or f"runs/onpolicy/{Path(str(args.model)).name}")
    settings = {"model": str(args.model), "judge": args.judge, "judges": names, "rtp_path": args.rtp_path,
                "num_samples": args.num_samples, "max_new_tokens": args.max_new_tokens, "top_p": args.top_p,
                "seed": args.seed, "prompt_toxicity_below": RTP_EVAL_MIN_TOXICITY}
    out.mkdir(parents=True, exist_ok=True)
    recorded = out / "settings.json"
    if recorded.exists():
        before = json.loads(recorded.read_text())
        changed = {k: (before.get(k), v) for k, v in settings.items() if k != "judge" and before.get(k) != v}
        if changed:
            raise SystemExit(f"{out} holds samples made with other settings {changed} (recorded, given); "
                             "use another --out")
    else:
        atomic_write(recorded, json.dumps(settings, indent=2) + "\n")
    prompts = unevaluated_prompts(args.rtp_path, args.data_dir, args.prompts)
    with RunLock(out):
        store = ResultStore(out)
        if not prompts["key"].isin(list(store.rows)).all():  # judges and model only when there is sampling to do
            from surgery_editor.models import load_model

            judges = {name: get_judge_reading(name, args.data_dir) for name in names}
            model, tok = load_model(args.model, device=args.device)
            sample_prompts(model, tok, prompts, store, judges, num_samples=args.num_samples,
                           max_new_tokens=args.max_new_tokens, top_p=args.top_p, seed=args.seed)
        rows = store.ordered(prompts["key"])
        pairs = make_pairs(rows, args.judge, args.seed)
        write_pairs(out, pairs, {**settings, **pair_summary(rows, pairs, args.judge)})
    logger.info("%d pairs from %d prompts in %s", len(pairs), len(rows), out / "pairs.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

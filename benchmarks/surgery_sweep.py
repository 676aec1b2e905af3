"""Model Surgery on RealToxicityPrompts: paper recipe, controls and variants, side by side.

    python -m benchmarks.surgery_sweep --model smollm2-135m --rtp-limit 1000 --set core

For each condition (an hparams override set, or the unedited model) the model is edited,
the same RealToxicityPrompts prompts (prompt toxicity >= 0.5) are continued greedily for 20
tokens and judged offline, a fluency check runs (chat answers to fixed instructions:
distinct-2, repeated 4-grams; perplexity on BoolQ passages), and the edit is reverted.
Each finished condition is appended to ``results.jsonl`` (per-prompt flags included), so a
rerun resumes where it stopped; a record made with another model, judge, number of prompts or
condition settings is neither reused nor summarised (the condition runs again). The summary
table (toxic share with a 95% Wilson interval, exact McNemar p against the unedited model and
against the condition's random-direction and reversed-sign controls) is written as CSV and
Markdown, with a plot of toxic share against fluency.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from surgery_editor import ModelSurgeryHyperParams, load_model
from surgery_editor.evaluation.metrics import fluency_check, load_ppl_texts
from surgery_editor.evaluation.rtp import load_rtp_prompts, rtp_toxicity
from surgery_editor.infra.fileio import atomic_write, jsonl_lines
from surgery_editor.evaluation.judges import get_judge_reading
from surgery_editor.methods.ModelSurgery.surgery import compute_patch
from surgery_editor.models import refuse_shape_model

from .stats import mcnemar_exact
from .stats import wilson_interval as wilson

logger = logging.getLogger(__name__)

# The norm-aware variant: probe on a middle layer's token-mean of h/rms(h), score and move
# gate rows through their RMSNorm gains, step relative to the row norm, edit layers <= probe.
def _variant(layer: int, layers: int, k: int = 1000, alpha: float = 1.0) -> Dict:
    return {"probe_layer": layer, "probe_pooling": "rms_mean", "scoring": "norm_aware", "step": "row_norm",
            "top_k": k, "top_k_fraction": None, "alpha": alpha, "edit_layers": list(range(layers))}


def _with_controls(name: str, overrides: Dict) -> Dict[str, Optional[Dict]]:
    return {name: overrides, f"{name}+random": {**overrides, "edit_direction": "random"},
            f"{name}+reversed": {**overrides, "alpha": -overrides.get("alpha", 1.08)}}


CONDITION_SETS = {
    "smollm2-135m": {
        "core": {"unedited": None, **_with_controls("paper", {}), **_with_controls("paper a=2", {"alpha": 2.0}),
                 **_with_controls("norm-aware L15", _variant(15, 16))},
        "alpha": {**_with_controls("norm-aware L15 a=0.5", _variant(15, 16, alpha=0.5)),
                  **_with_controls("norm-aware L15 a=0.75", _variant(15, 16, alpha=0.75))},
    },
    "gemma3-270m": {
        "core": {"unedited": None, **_with_controls("paper", {}), **_with_controls("norm-aware L9", _variant(9, 10))},
        "alpha": {**_with_controls("norm-aware L9 a=0.5", _variant(9, 10, alpha=0.5))},
    },
}


def _append(path: Path, record: Dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _drop_partial_line(path: Path) -> None:
    """A line cut by a crash is removed, so later appends start on a fresh line."""
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)


def _read(path: Path) -> List[Dict]:
    if not path.is_file():
        return []
    out = []
    for line in jsonl_lines(path):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash is redone
            break
    return out


def summarise(records: List[Dict]) -> pd.DataFrame:
    by_name = {r["condition"]: r for r in records}
    base = by_name.get("unedited")
    rows = []
    for r in records:
        flags = np.asarray(r["toxic"], bool)
        lo, hi = wilson(int(flags.sum()), len(flags))
        row = {"condition": r["condition"], "n": len(flags), "toxic_share": flags.mean(), "ci95_low": lo,
               "ci95_high": hi, "mean_toxicity": r["mean_toxicity"], **{k: r["fluency"][k] for k in
               ("distinct_2", "repetition_4gram", "perplexity")}, "rows_edited": r.get("rows_edited"),
               "probe_val_accuracy": r.get("probe_val_accuracy"), "edit_seconds": r.get("edit_seconds")}
        if base is not None and r is not base:
            row["p_vs_unedited"] = mcnemar_exact(base["toxic"], r["toxic"])["p_value"]
        for kind in ("random", "reversed"):
            control = by_name.get(f"{r['condition']}+{kind}")
            if control is not None:
                row[f"p_vs_{kind}"] = mcnemar_exact(control["toxic"], r["toxic"])["p_value"]
        rows.append(row)
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for _, r in table.iterrows():
        kind = "random" if r["condition"].endswith("+random") else "reversed" if r["condition"].endswith(
            "+reversed") else "unedited" if r["condition"] == "unedited" else "method"
        style = {"method": ("o", "C0"), "random": ("x", "C1"), "reversed": ("v", "C3"), "unedited": ("s", "k")}[kind]
        ax.errorbar(r["distinct_2"], 100 * r["toxic_share"],
                    yerr=[[100 * (r["toxic_share"] - r["ci95_low"])], [100 * (r["ci95_high"] - r["toxic_share"])]],
                    fmt=style[0], color=style[1], capsize=2)
        ax.annotate(r["condition"], (r["distinct_2"], 100 * r["toxic_share"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel("fluency: distinct-2 of chat answers (higher = less repetitive)")
    ax.set_ylabel("toxic continuations, % (judge >= 0.5), 95% CI")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", choices=sorted(CONDITION_SETS))
    ap.add_argument("--hparams", default=None, help="base YAML (default hparams/ModelSurgery/<model>.yaml)")
    ap.add_argument("--set", dest="sets", nargs="+", default=["core"])
    ap.add_argument("--rtp-limit", type=int, default=1000)
    ap.add_argument("--judge", default="profanity")
    ap.add_argument("--out", default=None, help="output folder (default runs/sweep/<model>)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    out = Path(args.out or f"runs/sweep/{args.model}")
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    _drop_partial_line(results)
    base_hp = ModelSurgeryHyperParams.from_hparams(args.hparams or f"hparams/ModelSurgery/{args.model}.yaml")
    refuse_shape_model(base_hp.model_name, "python -m benchmarks.surgery_sweep")
    judge = get_judge_reading(args.judge, base_hp.data_dir)
    prompts = load_rtp_prompts(None, base_hp.data_dir, limit=args.rtp_limit)["text"].tolist()
    ppl_texts = load_ppl_texts(base_hp.data_dir)
    model, tok = load_model(base_hp.model_name, device=base_hp.device)
    conditions = {}
    for name in args.sets:
        conditions.update(CONDITION_SETS[args.model][name])


    def current(r: Dict) -> bool:  # a record made with this run's model, judge, prompts and condition settings
        return (r.get("model") == args.model and r.get("judge") == args.judge and r.get("n") == len(prompts)
                and r.get("overrides") == conditions.get(r["condition"], r.get("overrides")))

    done = {r["condition"] for r in _read(results) if current(r)}
    for name, overrides in conditions.items():
        if name in done:
            logger.info("%s: already in %s", name, results)
            continue
        record = {"condition": name, "overrides": overrides, "model": args.model, "judge": args.judge}
        patch = None
        if overrides is not None:
            hp = ModelSurgeryHyperParams.from_dict({**base_hp.to_dict(), **overrides}, source=name)
            t0 = time.perf_counter()
            patch = compute_patch(model, tok, hp)
            record["edit_seconds"] = time.perf_counter() - t0
            record["rows_edited"] = patch.num_rows
            record["probe_val_accuracy"] = patch.metadata["probe"]["val_accuracy"]
            patch.apply(model)
        try:
            tox = rtp_toxicity(model, tok, prompts, judge)
            record["fluency"] = fluency_check(model, tok, ppl_texts=ppl_texts)
        finally:
            if patch is not None:
                patch.revert(model)
        record.update(n=len(prompts), toxic=tox.toxic.astype(int).tolist(), mean_toxicity=float(tox.scores.mean()),
                      samples=tox.continuations[:5])
        _append(results, record)
        logger.info("%s: toxic %.1f%%, distinct-2 %.3f", name, 100 * tox.toxic_rate, record["fluency"]["distinct_2"])
    table = summarise([r for r in _read(results) if current(r) and r["condition"] in {*conditions, "unedited"}])
    atomic_write(out / "summary.csv", table.to_csv(index=False))
    atomic_write(out / "summary.md", table.to_markdown(index=False, floatfmt=".3g"))
    plot(table, out / "toxic_vs_fluency.png", f"{args.model}: RealToxicityPrompts (n={len(prompts)}, "
                                               f"prompt toxicity >= 0.5), judge {args.judge}")
    print(table.to_markdown(index=False, floatfmt=".3g"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
